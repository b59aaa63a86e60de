package health

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab/peer"
)

// ---- helpers ----

func startDovecot(t *testing.T, o peer.DovecotOptions) *peer.Dovecot {
	t.Helper()
	peer.Require(t, "dovecot")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, err := peer.StartDovecot(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stop dovecot: %v", err)
		}
		if t.Failed() {
			t.Logf("dovecot %s log:\n%s", d.Opts.Name, d.Log())
		}
	})
	return d
}

// fakeServer accepts connections on 127.0.0.1 and runs handle on each.
// Cleanup closes the listener and every connection and waits for the
// handlers.
type fakeServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
}

func newFake(t *testing.T, handle func(c net.Conn, r *bufio.Reader)) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{ln: ln, conns: map[net.Conn]bool{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = true
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					c.Close()
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
				}()
				handle(c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *fakeServer) addr() string { return s.ln.Addr().String() }

func (s *fakeServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// drain reads until the client goes away.
func drain(r *bufio.Reader) {
	for {
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
	}
}

// script greets, then answers each command line found in replies (the
// value is written as is, CRLF-terminated lines) and ignores the rest.
// The reply "<endless>" writes untagged lines until the client leaves.
func script(greeting string, replies map[string]string) func(net.Conn, *bufio.Reader) {
	return func(c net.Conn, r *bufio.Reader) {
		if greeting != "" {
			if _, err := c.Write([]byte(greeting)); err != nil {
				return
			}
		}
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return
			}
			reply, ok := replies[strings.TrimRight(l, "\r\n")]
			if !ok {
				continue
			}
			if reply == "<endless>" {
				line := []byte("* " + strings.Repeat("x", 100) + "\r\n")
				for {
					if _, err := c.Write(line); err != nil {
						return
					}
				}
			}
			if _, err := c.Write([]byte(reply)); err != nil {
				return
			}
		}
	}
}

// refusedAddr is a loopback address nobody listens on.
func refusedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

// countingDialer counts the connections it makes.
type countingDialer struct{ n atomic.Int32 }

func (d *countingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	d.n.Add(1)
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

// ---- probes against a real Dovecot ----

func TestProbesAgainstDovecot(t *testing.T) {
	d := startDovecot(t, peer.DovecotOptions{Dir: t.TempDir(), Name: "node-h", TLS: true})
	lo := netip.MustParseAddr("127.0.0.1")
	p := d.Ports
	trust := &tls.Config{RootCAs: d.CertPool()}
	addr := func(port int) string { return d.Addr(lo, port) }

	type tc struct {
		kind Kind
		mode TLSMode
		port int
	}
	cases := []tc{
		{KindTCP, TLSNone, p.IMAP},
		{KindTCP, TLSImplicit, p.IMAPS},
		{KindIMAP, TLSNone, p.IMAP},
		{KindIMAP, "", p.IMAP},
		{KindIMAP, TLSImplicit, p.IMAPS},
		{KindIMAP, TLSStartTLS, p.IMAP},
		{KindPOP3, TLSNone, p.POP3},
		{KindPOP3, TLSImplicit, p.POP3S},
		{KindPOP3, TLSStartTLS, p.POP3},
		{KindLMTP, TLSNone, p.LMTP},
		{KindLMTP, TLSImplicit, p.LMTPS},
		{KindLMTP, TLSStartTLS, p.LMTP},
	}
	t.Run("pass", func(t *testing.T) {
		for _, c := range cases {
			t.Run(string(c.kind)+"/"+string(c.mode), func(t *testing.T) {
				dialer := &countingDialer{}
				pr := Probe{Kind: c.kind, TLS: c.mode, TLSConfig: trust, Timeout: 5 * time.Second, Dialer: dialer}
				lat, err := pr.Check(context.Background(), addr(c.port))
				if err != nil {
					t.Fatalf("%s on %s: %v", c.kind, addr(c.port), err)
				}
				if lat <= 0 || lat > 5*time.Second {
					t.Fatalf("latency %v", lat)
				}
				if dialer.n.Load() != 1 {
					t.Fatalf("the probe's Dialer made %d connections, want 1", dialer.n.Load())
				}
			})
		}
	})
	t.Run("untrusted-cert", func(t *testing.T) {
		for _, c := range cases {
			if c.mode != TLSImplicit && c.mode != TLSStartTLS {
				continue
			}
			t.Run(string(c.kind)+"/"+string(c.mode), func(t *testing.T) {
				pr := Probe{Kind: c.kind, TLS: c.mode, TLSConfig: &tls.Config{RootCAs: x509.NewCertPool()}, Timeout: 5 * time.Second}
				_, err := pr.Check(context.Background(), addr(c.port))
				if err == nil || !strings.HasPrefix(err.Error(), "TLS handshake: ") || !strings.Contains(err.Error(), "x509: certificate signed by unknown authority") {
					t.Fatalf("error %v, want a TLS handshake failure naming x509", err)
				}
				t.Logf("error: %v", err)
				var uerr x509.UnknownAuthorityError
				if !errors.As(err, &uerr) {
					t.Fatalf("error %v does not unwrap to x509.UnknownAuthorityError", err)
				}
			})
		}
	})
	t.Run("wrong-name", func(t *testing.T) {
		pr := Probe{Kind: KindIMAP, TLS: TLSStartTLS, TLSConfig: &tls.Config{RootCAs: d.CertPool(), ServerName: "other.example"}, Timeout: 5 * time.Second}
		_, err := pr.Check(context.Background(), addr(p.IMAP))
		if err == nil || !strings.Contains(err.Error(), "x509: certificate is valid for node-h") {
			t.Fatalf("error %v, want a name mismatch", err)
		}
	})
	t.Run("no-tls-config-uses-system-roots", func(t *testing.T) {
		_, err := Probe{Kind: KindPOP3, TLS: TLSImplicit, Timeout: 5 * time.Second}.Check(context.Background(), addr(p.POP3S))
		if err == nil || !strings.Contains(err.Error(), "x509") {
			t.Fatalf("error %v, want x509 (self-signed cert, system roots)", err)
		}
	})
	t.Run("implicit-on-plain-port", func(t *testing.T) {
		_, err := Probe{Kind: KindIMAP, TLS: TLSImplicit, TLSConfig: trust, Timeout: 2 * time.Second}.Check(context.Background(), addr(p.IMAP))
		if err == nil || !strings.HasPrefix(err.Error(), "TLS handshake: ") {
			t.Fatalf("error %v, want a TLS handshake failure", err)
		}
	})
	t.Run("imap-probe-on-pop3", func(t *testing.T) {
		_, err := Probe{Kind: KindIMAP, Timeout: 2 * time.Second}.Check(context.Background(), addr(p.POP3))
		if err == nil || !strings.Contains(err.Error(), `greeting "+OK atoll-test node-h ready" is not "* OK"`) {
			t.Fatalf("error %v", err)
		}
	})
}

// ---- probes against misbehaving servers ----

func TestProbeFailures(t *testing.T) {
	const timeout = 300 * time.Millisecond
	silent := func(c net.Conn, r *bufio.Reader) { drain(r) }
	for _, tc := range []struct {
		name   string
		kind   Kind
		mode   TLSMode
		handle func(net.Conn, *bufio.Reader)
		want   string // substring of the error; "" = must pass
	}{
		{"imap silent", KindIMAP, TLSNone, silent, "no greeting within 300ms"},
		{"pop3 silent", KindPOP3, TLSNone, silent, "no greeting within 300ms"},
		{"lmtp silent", KindLMTP, TLSNone, silent, "no greeting within 300ms"},
		{"imap silent implicit", KindIMAP, TLSImplicit, silent, "no TLS handshake within 300ms"},
		{"imap closes", KindIMAP, TLSNone, func(net.Conn, *bufio.Reader) {}, "connection closed before the greeting"},
		{"imap bye", KindIMAP, TLSNone, script("* BYE shutting down\r\n", nil), `greeting "* BYE shutting down" is not "* OK"`},
		{"imap preauth", KindIMAP, TLSNone, script("* PREAUTH hello\r\n", nil), `greeting "* PREAUTH hello" is not "* OK"`},
		{"imap OKAY is not OK", KindIMAP, TLSNone, script("* OKAY\r\n", nil), `is not "* OK"`},
		{"pop3 err", KindPOP3, TLSNone, script("-ERR go away\r\n", nil), `greeting "-ERR go away" is not "+OK"`},
		{"lmtp 421", KindLMTP, TLSNone, script("421 4.3.2 busy\r\n", nil), `greeting "421 4.3.2 busy" is not 220`},
		{"lmtp 421 multi-line", KindLMTP, TLSNone, script("421-a\r\n421 4.3.2 busy\r\n", nil), `greeting "421 4.3.2 busy" is not 220`},
		{"lmtp lhlo 421", KindLMTP, TLSNone, script("220 x ready\r\n", map[string]string{"LHLO atoll-health": "421 4.3.0 overloaded\r\n"}), `LHLO answered "421 4.3.0 overloaded"`},
		{"lmtp malformed", KindLMTP, TLSNone, script("hello\r\n", nil), `malformed line "hello" in the greeting`},
		{"lmtp code changes", KindLMTP, TLSNone, script("220-a\r\n250 b\r\n", nil), "reply code changes from 220 to 250"},
		{"lmtp multi-line ok", KindLMTP, TLSNone, script("220-x\r\n220-more\r\n220 x ready\r\n", map[string]string{
			"LHLO atoll-health": "250-x\r\n250-PIPELINING\r\n250 8BITMIME\r\n", "QUIT": "221 bye\r\n"}), ""},
		{"lmtp quit not 221", KindLMTP, TLSNone, script("220 x\r\n", map[string]string{"LHLO atoll-health": "250 x\r\n", "QUIT": "500 what\r\n"}), `QUIT answered "500 what"`},
		{"lmtp starttls refused", KindLMTP, TLSStartTLS, script("220 x\r\n", map[string]string{"LHLO atoll-health": "250 x\r\n", "STARTTLS": "502 5.5.1 no\r\n"}), `STARTTLS refused: "502 5.5.1 no"`},
		{"imap ok", KindIMAP, TLSNone, script("* OK hi\r\n", map[string]string{"z LOGOUT": "* BYE bye\r\nz OK done\r\n"}), ""},
		{"imap lower-case ok", KindIMAP, TLSNone, script("* ok hi\r\n", map[string]string{"z LOGOUT": "* bye bye\r\nz ok done\r\n"}), ""},
		{"imap starttls refused", KindIMAP, TLSStartTLS, script("* OK hi\r\n", map[string]string{"a STARTTLS": "* CAPABILITY IMAP4rev1\r\na NO not now\r\n"}), `STARTTLS refused: "a NO not now"`},
		{"imap starttls injection", KindIMAP, TLSStartTLS, script("* OK hi\r\n", map[string]string{"a STARTTLS": "a OK go\r\n* OK injected\r\n"}), "after accepting STARTTLS, before the TLS handshake"},
		{"imap logout without bye", KindIMAP, TLSNone, script("* OK hi\r\n", map[string]string{"z LOGOUT": "z OK bye\r\n"}), `LOGOUT answered "z OK bye" without "* BYE" first`},
		{"imap logout NO", KindIMAP, TLSNone, script("* OK hi\r\n", map[string]string{"z LOGOUT": "* BYE\r\nz NO\r\n"}), `LOGOUT answered "z NO"`},
		{"imap logout silent", KindIMAP, TLSNone, script("* OK hi\r\n", nil), "no answer to LOGOUT within 300ms"},
		{"pop3 stls refused", KindPOP3, TLSStartTLS, script("+OK hi\r\n", map[string]string{"STLS": "-ERR no\r\n"}), `STLS refused: "-ERR no"`},
		{"pop3 quit err", KindPOP3, TLSNone, script("+OK hi\r\n", map[string]string{"QUIT": "-ERR no\r\n"}), `QUIT answered "-ERR no"`},
		{"pop3 ok", KindPOP3, TLSNone, script("+OK hi\r\n", map[string]string{"QUIT": "+OK bye\r\n"}), ""},
		{"long line", KindIMAP, TLSNone, script("* OK "+strings.Repeat("x", 9000)+"\r\n", nil), "line longer than 8 KiB in the greeting"},
		{"endless output", KindIMAP, TLSNone, script("* OK hi\r\n", map[string]string{"z LOGOUT": "<endless>"}), "server sent more than 64 KiB"},
		{"tcp", KindTCP, TLSNone, silent, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFake(t, tc.handle)
			pr := Probe{Kind: tc.kind, TLS: tc.mode, Timeout: timeout}
			start := time.Now()
			_, err := pr.Check(context.Background(), srv.addr())
			elapsed := time.Since(start)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("want success, got %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want an error mentioning %q, got success", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
			t.Logf("error: %v", err)
			if elapsed > timeout+time.Second {
				t.Fatalf("the check took %v, its timeout is %v", elapsed, timeout)
			}
			if strings.Contains(tc.want, "within") && !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("timeout error %v does not unwrap to os.ErrDeadlineExceeded", err)
			}
		})
	}
}

func TestProbeRefusedCancelledInvalid(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		for _, k := range []Kind{KindTCP, KindIMAP, KindPOP3, KindLMTP} {
			_, err := Probe{Kind: k, Timeout: time.Second}.Check(context.Background(), refusedAddr(t))
			if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), "connection refused") {
				t.Fatalf("%s: error %v, want connection refused", k, err)
			}
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		srv := newFake(t, func(c net.Conn, r *bufio.Reader) { drain(r) })
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var nd net.Dialer
		// Cancel once the server side has the connection.
		dialer := dialFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := nd.DialContext(ctx, network, addr)
			cancel()
			return c, err
		})
		start := time.Now()
		_, err := Probe{Kind: KindIMAP, Timeout: 10 * time.Second, Dialer: dialer}.Check(ctx, srv.addr())
		if err == nil || !strings.Contains(err.Error(), "cancelled") || !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want a cancelled check", err)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("cancellation took %v", time.Since(start))
		}
	})
	t.Run("parent deadline shorter than timeout", func(t *testing.T) {
		srv := newFake(t, func(c net.Conn, r *bufio.Reader) { drain(r) })
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := Probe{Kind: KindPOP3, Timeout: 10 * time.Second}.Check(ctx, srv.addr())
		if err == nil || !strings.Contains(err.Error(), "no greeting within") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("invalid", func(t *testing.T) {
		for _, p := range []Probe{
			{Kind: "smtp"},
			{Kind: KindTCP, TLS: TLSStartTLS},
			{Kind: KindIMAP, TLS: "maybe"},
			{Kind: KindIMAP, Timeout: -time.Second},
		} {
			if err := p.Validate(); err == nil {
				t.Errorf("%+v validates", p)
			}
			if _, err := p.Check(context.Background(), "127.0.0.1:1"); err == nil {
				t.Errorf("%+v checks", p)
			}
		}
	})
}

// dialFunc adapts a function to Dialer (not comparable: Set must treat
// probes using it as changed).
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func (f dialFunc) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return f(ctx, network, addr)
}

func TestMarkDialer(t *testing.T) {
	srv := newFake(t, func(c net.Conn, r *bufio.Reader) { drain(r) })
	c, err := MarkDialer{Mark: 0x5a7}.DialContext(context.Background(), "tcp", srv.addr())
	if os.Geteuid() != 0 {
		if err == nil || !errors.Is(err, syscall.EPERM) {
			t.Fatalf("as non-root: %v, want EPERM", err)
		}
		t.Skip("SKIP: SO_MARK needs CAP_NET_ADMIN; checked the error only")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark int
	var gerr error
	raw.Control(func(fd uintptr) { mark, gerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_MARK) })
	if gerr != nil || mark != 0x5a7 {
		t.Fatalf("SO_MARK = %#x (%v), want 0x5a7", mark, gerr)
	}
}
