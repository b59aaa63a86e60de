package pop3

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab/peer"
	"github.com/atoll-lb/atoll/userspace/directory"
	"github.com/atoll-lb/atoll/userspace/proxy"
)

// ---- the Dovecot nodes, shared by every test of the package ----

// Users on both nodes. spacey's password has spaces and both quotes.
var labUsers = map[string]string{
	"alice":  "alice-secret",
	"bob":    "bob-secret",
	"carol":  "carol-secret",
	"dave":   "dave-secret",
	"erin":   "erin-secret",
	"frank":  "frank-secret",
	"grace":  "grace-secret",
	"heidi":  "heidi-secret",
	"ivan":   "ivan-secret",
	"judy":   "judy-secret",
	"spacey": `pa ss "dq" 'sq' end`,
}

type lab struct {
	nodes map[string]*peer.Dovecot // node-a, node-b
	roots *x509.CertPool           // trusts both nodes
}

var (
	labOnce sync.Once
	theLab  *lab
	labErr  error
	labDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	stopLab()
	os.Exit(code)
}

func stopLab() {
	if theLab != nil {
		for _, d := range theLab.nodes {
			if err := d.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, "stop dovecot:", err)
			}
		}
	}
	if labDir != "" {
		os.RemoveAll(labDir)
	}
}

// getLab starts the two Dovecot nodes once.
func getLab(t *testing.T) *lab {
	t.Helper()
	peer.Require(t, "dovecot")
	labOnce.Do(func() {
		labDir, labErr = os.MkdirTemp("", "atoll-pop3-")
		if labErr != nil {
			return
		}
		l := &lab{nodes: map[string]*peer.Dovecot{}, roots: x509.NewCertPool()}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for _, name := range []string{"node-a", "node-b"} {
			var haproxy int
			if haproxy, labErr = freePort(); labErr != nil {
				break
			}
			d, err := peer.StartDovecot(ctx, peer.DovecotOptions{
				Dir: filepath.Join(labDir, name), Name: name, Users: labUsers, TLS: true,
				Ports:   peer.DovecotPorts{IMAP: -1, IMAPS: -1, LMTPS: -1},
				HAProxy: peer.DovecotHAProxy{POP3: haproxy, Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
			})
			if err != nil {
				labErr = err
				break
			}
			l.nodes[name] = d
			l.roots.AppendCertsFromPEM(d.CertPEM)
		}
		theLab = l
	})
	if labErr != nil {
		t.Fatalf("start the Dovecot nodes: %v", labErr)
	}
	return theLab
}

// freePort picks a loopback port that is free now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// addrHAProxy is node name's POP3 listener that expects a PROXY header.
func (l *lab) addrHAProxy(name string) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(l.nodes[name].Opts.HAProxy.POP3))
}

func (l *lab) addr(name string) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(l.nodes[name].Ports.POP3))
}

func (l *lab) addrTLS(name string) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(l.nodes[name].Ports.POP3S))
}

// ---- fakes for the core ----

type fakeDir struct {
	mu    sync.Mutex
	users map[string]string // user → island
	err   error
}

func (d *fakeDir) Lookup(ctx context.Context, user string) (directory.Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return directory.Result{}, d.err
	}
	island, ok := d.users[user]
	if !ok {
		return directory.Result{}, fmt.Errorf("%w: %s", directory.ErrUnknownUser, user)
	}
	return directory.Result{Island: island}, nil
}

func (d *fakeDir) set(user, island string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.users[user] = island
}

func (d *fakeDir) setErr(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.err = err
}

type fakeNodes struct {
	mu      sync.Mutex
	islands map[string]proxy.IslandSettings
	nodes   map[string][]proxy.NodeInfo
}

func (f *fakeNodes) Nodes(service, island string) []proxy.NodeInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.nodes[island])
}

func (f *fakeNodes) Island(island string) (proxy.IslandSettings, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.islands[island]
	return s, ok
}

func (f *fakeNodes) setIsland(name string, s proxy.IslandSettings, nodes ...proxy.NodeInfo) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.islands[name] = s
	f.nodes[name] = nodes
}

func (f *fakeNodes) setHealthy(island, node string, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.nodes[island] {
		if f.nodes[island][i].Name == node {
			f.nodes[island][i].Healthy = ok
		}
	}
}

// recObserver records login results and throttled answers.
type recObserver struct {
	mu        sync.Mutex
	logins    []string
	throttled int
	relayed   int
}

func (o *recObserver) Login(protocol, result string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.logins = append(o.logins, protocol+":"+result)
}
func (o *recObserver) Lookup(time.Duration, directory.Result, error) {}
func (o *recObserver) Session(string, int)                           {}
func (o *recObserver) Relayed(string, int64, int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.relayed++
}
func (o *recObserver) DialFailed(string) {}
func (o *recObserver) Throttled(netip.Addr) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.throttled++
}

func (o *recObserver) results() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.logins)
}

func (o *recObserver) throttledCount() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.throttled
}

// waitResults waits until the observer saw want (in order, as the last
// results): the core records a result just before the client sees it.
func (o *recObserver) waitResults(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		got := o.results()
		if len(got) >= len(want) && slices.Equal(got[len(got)-len(want):], want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("login results %q, want them to end with %q", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ---- the proxy under test ----

type envOpts struct {
	limits     proxy.Limits
	throttle   proxy.ThrottleSettings
	requireTLS bool
	noTLS      bool
}

type env struct {
	t       *testing.T
	core    *proxy.Core
	dir     *fakeDir
	nodes   *fakeNodes
	obs     *recObserver
	addr    string      // plain listener (STLS)
	tlsAddr string      // implicit-TLS listener ("" with noTLS)
	client  *tls.Config // trusts the proxy's certificate
	caFile  string      // the proxy's certificate as a PEM file
	stop    func()      // stops the server and waits for its sessions
}

// newEnv serves a core on loopback with a plain and an implicit-TLS
// listener. Islands are added by the tests (or withLab).
func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	if o.throttle.Threshold == 0 {
		o.throttle.Threshold = -1 // most tests fail logins on purpose
	}
	e := &env{t: t, dir: &fakeDir{users: map[string]string{}}, obs: &recObserver{},
		nodes: &fakeNodes{islands: map[string]proxy.IslandSettings{}, nodes: map[string][]proxy.NodeInfo{}}}
	certPEM, cert := proxyCert(t)
	var serverTLS *tls.Config
	if !o.noTLS {
		serverTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	e.client = &tls.Config{RootCAs: pool, ServerName: "atoll.test"}
	e.caFile = filepath.Join(t.TempDir(), "proxy-ca.pem")
	if err := os.WriteFile(e.caFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.core = proxy.NewCore(proxy.Options{
		Directory: e.dir, Nodes: e.nodes, ServerTLS: serverTLS, RequireTLS: o.requireTLS,
		Limits: o.limits, Throttle: o.throttle, Hostname: "proxy.test", Observer: e.obs, Log: log,
		DialTimeout: 2 * time.Second,
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	serve := func(implicit bool) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := e.core.Serve(ctx, ln, proxy.Listener{Service: "pop3", Handler: NewHandler(), TLS: implicit, Protocol: "pop3", Refuse: "-ERR [SYS/TEMP] Too many connections.\r\n"})
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		}()
		return ln.Addr().String()
	}
	e.addr = serve(false)
	if !o.noTLS {
		e.tlsAddr = serve(true)
	}
	var once sync.Once
	e.stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
		})
	}
	t.Cleanup(e.stop)
	return e
}

// testWriter sends the core's log to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// withLab adds the Dovecot islands: "plain" (POP3, no TLS), "stls" (POP3
// with STLS toward the nodes), "implicit" (POP3S) and "haproxy" (POP3
// with a PROXY v2 header first), each with both nodes healthy.
func (e *env) withLab(l *lab) *env {
	nodes := func(addr func(string) netip.AddrPort) []proxy.NodeInfo {
		var out []proxy.NodeInfo
		for _, name := range []string{"node-a", "node-b"} {
			out = append(out, proxy.NodeInfo{Name: name, Addr: addr(name), Healthy: true})
		}
		return out
	}
	conf := &tls.Config{RootCAs: l.roots, MinVersion: tls.VersionTLS12}
	e.nodes.setIsland("plain", proxy.IslandSettings{ClientAddr: proxy.ClientAddrNone, NodeTLS: proxy.NodeTLSNone}, nodes(l.addr)...)
	// ClientAddrID has no POP3 form: it must behave as none.
	e.nodes.setIsland("stls", proxy.IslandSettings{ClientAddr: proxy.ClientAddrID, NodeTLS: proxy.NodeTLSStartTLS, TLSConfig: conf}, nodes(l.addr)...)
	e.nodes.setIsland("implicit", proxy.IslandSettings{ClientAddr: proxy.ClientAddrNone, NodeTLS: proxy.NodeTLSImplicit, TLSConfig: conf}, nodes(l.addrTLS)...)
	e.nodes.setIsland("haproxy", proxy.IslandSettings{ClientAddr: proxy.ClientAddrProxy, NodeTLS: proxy.NodeTLSStartTLS, TLSConfig: conf}, nodes(l.addrHAProxy)...)
	return e
}

// home is the node the core routes user to first.
func (e *env) home(user string) string {
	e.t.Helper()
	r, err := e.core.Route(context.Background(), "pop3", user)
	if err != nil {
		e.t.Fatalf("route %s: %v", user, err)
	}
	return r.Nodes[0].Name
}

// proxyCert is a self-signed certificate for atoll.test and 127.0.0.1.
func proxyCert(t *testing.T) ([]byte, tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "atoll.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
		DNSNames: []string{"atoll.test"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	cert, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, cert
}

// ---- a line client ----

type client struct {
	t   *testing.T
	raw net.Conn
	c   net.Conn
	r   *bufio.Reader
}

// dial connects to addr (from local when valid), with implicit TLS when
// conf is not nil, and reads the greeting.
func dial(t *testing.T, addr string, conf *tls.Config, local netip.Addr) (*client, string) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if local.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
	}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	raw.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { raw.Close() })
	c := &client{t: t, raw: raw, c: raw}
	if conf != nil {
		c.c = tls.Client(raw, conf)
	}
	c.r = bufio.NewReader(c.c)
	return c, c.line()
}

func (c *client) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	if !strings.HasSuffix(l, "\r\n") {
		c.t.Fatalf("line %q does not end with CRLF", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

func (c *client) write(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// cmd sends one command and returns the first line of its answer.
func (c *client) cmd(s string) string {
	c.t.Helper()
	c.write(s + "\r\n")
	return c.line()
}

// ok sends a command whose answer must be +OK.
func (c *client) ok(s string) string {
	c.t.Helper()
	l := c.cmd(s)
	if !strings.HasPrefix(l, "+OK") {
		c.t.Fatalf("%s: %q", s, l)
	}
	return l
}

// multi reads a multi-line body up to the terminating ".", raw (CRLFs and
// dot-stuffing included).
func (c *client) multi() string {
	c.t.Helper()
	var b strings.Builder
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("read: %v", err)
		}
		b.WriteString(l)
		if l == ".\r\n" {
			return b.String()
		}
	}
}

// starttls upgrades after STLS; nothing may be buffered.
func (c *client) starttls(conf *tls.Config) {
	c.t.Helper()
	if n := c.r.Buffered(); n > 0 {
		c.t.Fatalf("%d bytes buffered before the handshake", n)
	}
	tc := tls.Client(c.raw, conf)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("handshake: %v", err)
	}
	c.c, c.r = tc, bufio.NewReader(tc)
}

// expectEOF checks that the server closes the connection within d,
// sending nothing more.
func (c *client) expectEOF(d time.Duration) {
	c.t.Helper()
	c.raw.SetReadDeadline(time.Now().Add(d))
	l, err := c.r.ReadString('\n')
	if l != "" || err == nil {
		c.t.Fatalf("want the connection closed, read %q (%v)", l, err)
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		c.t.Fatalf("connection still open after %v", d)
	}
}

// expectSilence checks that nothing arrives within d.
func (c *client) expectSilence(d time.Duration) {
	c.t.Helper()
	c.raw.SetReadDeadline(time.Now().Add(d))
	l, err := c.r.ReadString('\n')
	ne, ok := errors.AsType[net.Error](err)
	if !ok || !ne.Timeout() || l != "" {
		c.t.Fatalf("want silence, read %q (%v)", l, err)
	}
	c.raw.SetReadDeadline(time.Now().Add(20 * time.Second))
}

func plainIR(user, pass string) string { return encodePlain("", user, pass) }

// ---- mail on the nodes ----

// deliver sends one message over LMTP to rcpt on node d; body lines are
// given unstuffed.
func deliver(t *testing.T, d *peer.Dovecot, rcpt, subject string, body ...string) {
	t.Helper()
	c, g := dial(t, d.Addr(netip.MustParseAddr("127.0.0.1"), d.Ports.LMTP), nil, netip.Addr{})
	defer c.raw.Close()
	if !strings.HasPrefix(g, "220 ") {
		t.Fatalf("LMTP greeting %q", g)
	}
	reply := func(code string) {
		t.Helper()
		for {
			l := c.line()
			if !strings.HasPrefix(l, code) {
				t.Fatalf("LMTP: want %s, got %q", code, l)
			}
			if len(l) == 3 || l[3] == ' ' {
				return
			}
		}
	}
	c.write("LHLO tester\r\n")
	reply("250")
	c.write("MAIL FROM:<sender@example.org>\r\n")
	reply("250")
	c.write("RCPT TO:<" + rcpt + ">\r\n")
	reply("250")
	c.write("DATA\r\n")
	reply("354")
	var b strings.Builder
	fmt.Fprintf(&b, "From: sender@example.org\r\nTo: %s\r\nSubject: %s\r\n\r\n", rcpt, subject)
	for _, l := range body {
		if strings.HasPrefix(l, ".") {
			l = "." + l
		}
		b.WriteString(l + "\r\n")
	}
	b.WriteString(".\r\n")
	c.write(b.String())
	reply("250")
	c.write("QUIT\r\n")
	reply("221")
}

// direct logs in to node d's POP3 port itself and returns STAT's answer
// and RETR 1's raw answer: what the proxy must relay byte for byte.
func direct(t *testing.T, d *peer.Dovecot, user, pass string) (stat, retr string) {
	t.Helper()
	c, g := dial(t, d.Addr(netip.MustParseAddr("127.0.0.1"), d.Ports.POP3), nil, netip.Addr{})
	defer c.raw.Close()
	if !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting %q", g)
	}
	c.ok("USER " + user)
	c.ok("PASS " + pass)
	stat = c.ok("STAT")
	retr = c.ok("RETR 1") + "\r\n" + c.multi()
	c.ok("QUIT")
	return stat, retr
}

// ---- fake nodes (behaviours Dovecot will not show) ----

// fakeNode is a scripted POP3 node on loopback.
type fakeNode struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	seen []string // lines received, in order, per connection joined by "|"
	hdrs []netip.AddrPort
}

// newFakeNode serves handle on each connection; handle gets the reader
// and a function that records a received line.
func newFakeNode(t *testing.T, handle func(c net.Conn, r *bufio.Reader, f *fakeNode)) *fakeNode {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeNode{ln: ln}
	var conns sync.Map
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true)
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				handle(c, bufio.NewReader(c), f)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		f.wg.Wait()
	})
	return f
}

func (f *fakeNode) addr() netip.AddrPort { return f.ln.Addr().(*net.TCPAddr).AddrPort() }

// read returns the next line from the proxy and records it.
func (f *fakeNode) read(r *bufio.Reader) (string, bool) {
	l, err := r.ReadString('\n')
	if err != nil {
		return "", false
	}
	l = strings.TrimRight(l, "\r\n")
	f.mu.Lock()
	f.seen = append(f.seen, l)
	f.mu.Unlock()
	return l, true
}

func (f *fakeNode) lines() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.seen)
}

func (f *fakeNode) proxyHeaders() []netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.hdrs)
}

// readProxyV2 reads a PROXY v2 header (IPv4 or IPv6 TCP) and records the
// source address it carries.
func (f *fakeNode) readProxyV2(r *bufio.Reader) bool {
	var hdr [16]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return false
	}
	if string(hdr[:12]) != "\r\n\r\n\x00\r\nQUIT\n" || hdr[12] != 0x21 {
		return false
	}
	body := make([]byte, binary.BigEndian.Uint16(hdr[14:16]))
	if _, err := io.ReadFull(r, body); err != nil {
		return false
	}
	var src netip.AddrPort
	switch hdr[13] {
	case 0x11: // TCP over IPv4
		a, _ := netip.AddrFromSlice(body[0:4])
		src = netip.AddrPortFrom(a, binary.BigEndian.Uint16(body[8:10]))
	case 0x21: // TCP over IPv6
		a, _ := netip.AddrFromSlice(body[0:16])
		src = netip.AddrPortFrom(a, binary.BigEndian.Uint16(body[32:34]))
	default:
		return false
	}
	f.mu.Lock()
	f.hdrs = append(f.hdrs, src)
	f.mu.Unlock()
	return true
}

// serveFakePOP3 is a small POP3 login server: password pw for every
// user; sasl decides whether CAPA offers SASL PLAIN. After login it
// answers STAT with "+OK 0 0" and QUIT.
func serveFakePOP3(sasl bool, pw string) func(c net.Conn, r *bufio.Reader, f *fakeNode) {
	return func(c net.Conn, r *bufio.Reader, f *fakeNode) {
		io.WriteString(c, "+OK fake node ready\r\n")
		loggedIn := false
		for {
			l, ok := f.read(r)
			if !ok {
				return
			}
			verb, arg, _ := strings.Cut(l, " ")
			switch strings.ToUpper(verb) {
			case "CAPA":
				if sasl {
					io.WriteString(c, "+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n")
				} else {
					io.WriteString(c, "+OK\r\nUSER\r\n.\r\n")
				}
			case "USER":
				io.WriteString(c, "+OK\r\n")
			case "PASS":
				if arg == pw {
					loggedIn = true
					io.WriteString(c, "+OK fake logged in\r\n")
				} else {
					io.WriteString(c, "-ERR [AUTH] fake says no\r\n")
				}
			case "AUTH":
				_, ir, _ := strings.Cut(arg, " ")
				if _, _, p, err := decodePlain(ir); err == nil && p == pw {
					loggedIn = true
					io.WriteString(c, "+OK fake logged in\r\n")
				} else {
					io.WriteString(c, "-ERR [AUTH] fake says no\r\n")
				}
			case "STAT":
				if loggedIn {
					io.WriteString(c, "+OK 0 0\r\n")
				} else {
					io.WriteString(c, "-ERR not logged in\r\n")
				}
			case "QUIT":
				io.WriteString(c, "+OK bye\r\n")
				return
			default:
				io.WriteString(c, "-ERR what\r\n")
			}
		}
	}
}
