package health

import (
	"bufio"
	"context"
	"net"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// TestProxyHeader: with ProxyHeader the probe opens with a PROXY v2 LOCAL
// header, then speaks its protocol.
func TestProxyHeader(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan *proxyproto.Header, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		h, err := proxyproto.Read(br)
		if err != nil {
			got <- nil
			return
		}
		got <- h
		c.Write([]byte("+OK ready\r\n"))
		br.ReadString('\n') // QUIT
		c.Write([]byte("+OK bye\r\n"))
	}()
	p := Probe{Kind: KindPOP3, Timeout: 2 * time.Second, ProxyHeader: true}
	if _, err := p.Check(context.Background(), ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	h := <-got
	if h == nil || h.Version != 2 || h.Command != proxyproto.LOCAL {
		t.Fatalf("header %+v, want a v2 LOCAL header", h)
	}
}
