//go:build linux

package peer

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

// TestDovecotHAProxy: a PROXY v2 listener takes the client's address from
// the header, and Dovecot logs it as the remote IP of the login.
func TestDovecotHAProxy(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	port, err := freePort([]netip.Addr{lo}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := startDovecot(t, DovecotOptions{
		Dir: t.TempDir(), Name: "haproxy", Users: map[string]string{"alice": "pw"},
		HAProxy: DovecotHAProxy{IMAP: port, Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
	})
	c, err := net.DialTimeout("tcp", d.Addr(lo, port), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	hdr := proxyproto.HeaderProxyFromAddrs(2,
		&net.TCPAddr{IP: net.ParseIP("192.0.2.77"), Port: 40000}, &net.TCPAddr{IP: net.ParseIP("203.0.113.10"), Port: 143})
	if _, err := hdr.WriteTo(c); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	greet, _ := r.ReadString('\n')
	if !strings.HasPrefix(greet, "* OK") {
		t.Fatalf("greeting %q", greet)
	}
	fmt.Fprintf(c, "a LOGIN alice pw\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(line, "a ") {
			if !strings.HasPrefix(line, "a OK") {
				t.Fatalf("login: %q", line)
			}
			break
		}
	}
	fmt.Fprintf(c, "b LOGOUT\r\n")
	r.ReadString('\n')
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(d.Log(), "rip=192.0.2.77") {
		if time.Now().After(deadline) {
			t.Fatalf("Dovecot never logged the PROXY header's client address:\n%s", tail(d.Log(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
