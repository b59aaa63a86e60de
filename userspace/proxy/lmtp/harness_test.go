package lmtp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
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
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab/peer"
	"github.com/atoll-lb/atoll/userspace/directory"
	"github.com/atoll-lb/atoll/userspace/proxy"
)

// ---- the Dovecot nodes: one per island, each knowing only its users ----

// Island a's users live on node-a, island b's on node-b.
var (
	usersA = map[string]string{"alice@a.test": "alice-pw", "carol@a.test": "carol-pw", "erin@a.test": "erin-pw", "grace@a.test": "grace-pw", "ivan@a.test": "ivan-pw"}
	usersB = map[string]string{"bob@b.test": "bob-pw", "dave@b.test": "dave-pw", "frank@b.test": "frank-pw"}
)

func password(user string) string {
	if p, ok := usersA[user]; ok {
		return p
	}
	return usersB[user]
}

type lab struct {
	nodes map[string]*peer.Dovecot // node-a, node-b
}

var (
	labOnce sync.Once
	theLab  *lab
	labErr  error
	labDir  string
	// extra are Dovecot instances tests started themselves; stopped at
	// the end too, in case a test died before its own cleanup.
	extraMu sync.Mutex
	extra   []*peer.Dovecot
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
	extraMu.Lock()
	for _, d := range extra {
		d.Stop()
	}
	extraMu.Unlock()
	if labDir != "" {
		os.RemoveAll(labDir)
	}
}

// dovecotOpts are the options of every node here: LMTP (with XCLIENT for
// loopback clients, i.e. atoll), IMAP to read the mail back, TLS for
// STARTTLS toward the node.
func dovecotOpts(dir, name string, users map[string]string) peer.DovecotOptions {
	return peer.DovecotOptions{
		Dir: dir, Name: name, Users: users, TLS: true,
		Ports:        peer.DovecotPorts{IMAPS: -1, POP3: -1, POP3S: -1, LMTPS: -1},
		LoginTrusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	}
}

func startDovecot(t *testing.T, o peer.DovecotOptions) *peer.Dovecot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := peer.StartDovecot(ctx, o)
	if err != nil {
		t.Fatalf("start dovecot %s: %v", o.Name, err)
	}
	extraMu.Lock()
	extra = append(extra, d)
	extraMu.Unlock()
	return d
}

// getLab starts node-a and node-b once.
func getLab(t *testing.T) *lab {
	t.Helper()
	peer.Require(t, "dovecot")
	labOnce.Do(func() {
		labDir, labErr = os.MkdirTemp("", "atoll-lmtp-")
		if labErr != nil {
			return
		}
		l := &lab{nodes: map[string]*peer.Dovecot{}}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for name, users := range map[string]map[string]string{"node-a": usersA, "node-b": usersB} {
			d, err := peer.StartDovecot(ctx, dovecotOpts(filepath.Join(labDir, name), name, users))
			if err != nil {
				labErr = err
				break
			}
			l.nodes[name] = d
		}
		theLab = l
	})
	if labErr != nil {
		t.Fatalf("start the Dovecot nodes: %v", labErr)
	}
	return theLab
}

var loopback = netip.MustParseAddr("127.0.0.1")

func lmtpAddr(d *peer.Dovecot) netip.AddrPort {
	return netip.AddrPortFrom(loopback, uint16(d.Ports.LMTP))
}

// ---- fakes for the core ----

type fakeDir struct {
	mu    sync.Mutex
	users map[string]string // address → island
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

// recObserver records the core's login results and the LMTP extension's
// deliveries.
type recObserver struct {
	mu         sync.Mutex
	logins     []string
	deliveries []string // island:result
	recipients []int
	bytes      []int64
}

func (o *recObserver) Login(protocol, result string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.logins = append(o.logins, protocol+":"+result)
}
func (o *recObserver) Lookup(time.Duration, directory.Result, error) {}
func (o *recObserver) Session(string, int)                           {}
func (o *recObserver) Relayed(string, int64, int64)                  {}
func (o *recObserver) DialFailed(string)                             {}
func (o *recObserver) Throttled(netip.Addr)                          {}

func (o *recObserver) Delivery(island, result string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.deliveries = append(o.deliveries, island+":"+result)
}

func (o *recObserver) Recipients(n int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.recipients = append(o.recipients, n)
}

func (o *recObserver) Bytes(n int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.bytes = append(o.bytes, n)
}

var _ Observer = (*recObserver)(nil)

func (o *recObserver) snapshot() (logins, deliveries []string, recipients []int, bytes []int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.logins), slices.Clone(o.deliveries), slices.Clone(o.recipients), slices.Clone(o.bytes)
}

// ---- the router under test ----

type envOpts struct {
	opts   Options
	limits proxy.Limits
	noTLS  bool
}

type env struct {
	t      *testing.T
	core   *proxy.Core
	h      *Handler // the listener's handler
	dir    *fakeDir
	nodes  *fakeNodes
	obs    *recObserver
	addr   string      // the LMTP listener
	host   string      // its IP, port
	port   int         //
	client *tls.Config // trusts the router's certificate
	caFile string      // the router's certificate as a PEM file
}

// newEnv serves a core with an LMTP listener on loopback. Islands are
// added by the tests (or withLab).
func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	e := &env{t: t, dir: &fakeDir{users: map[string]string{}}, obs: &recObserver{},
		nodes: &fakeNodes{islands: map[string]proxy.IslandSettings{}, nodes: map[string][]proxy.NodeInfo{}}}
	certPEM, cert := routerCert(t)
	var serverTLS *tls.Config
	if !o.noTLS {
		serverTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	e.client = &tls.Config{RootCAs: pool, ServerName: "atoll.test"}
	e.caFile = filepath.Join(t.TempDir(), "router-ca.pem")
	if err := os.WriteFile(e.caFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.core = proxy.NewCore(proxy.Options{
		Directory: e.dir, Nodes: e.nodes, ServerTLS: serverTLS, Limits: o.limits,
		Throttle: proxy.ThrottleSettings{Threshold: -1}, Hostname: "router.test", Observer: e.obs, Log: log,
		DialTimeout: 2 * time.Second,
	})
	ctx, cancel := context.WithCancel(context.Background())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	e.port = ln.Addr().(*net.TCPAddr).Port
	e.host = "127.0.0.1"
	done := make(chan struct{})
	e.h = NewHandler(o.opts)
	go func() {
		defer close(done)
		err := e.core.Serve(ctx, ln, proxy.Listener{Service: "lmtp", Handler: e.h, Protocol: "lmtp", Refuse: "421 4.7.0 Too many connections\r\n"})
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return e
}

// withLab adds island a (node-a, plain LMTP) and island b (node-b, with
// STARTTLS toward the node) and their users.
func (e *env) withLab(l *lab) *env {
	a, b := l.nodes["node-a"], l.nodes["node-b"]
	e.nodes.setIsland("a", proxy.IslandSettings{ClientAddr: proxy.ClientAddrNone, NodeTLS: proxy.NodeTLSNone},
		proxy.NodeInfo{Name: "node-a", Addr: lmtpAddr(a), Healthy: true})
	e.nodes.setIsland("b", proxy.IslandSettings{ClientAddr: proxy.ClientAddrNone, NodeTLS: proxy.NodeTLSStartTLS,
		TLSConfig: &tls.Config{RootCAs: b.CertPool(), MinVersion: tls.VersionTLS12}},
		proxy.NodeInfo{Name: "node-b", Addr: lmtpAddr(b), Healthy: true})
	for u := range usersA {
		e.dir.set(u, "a")
	}
	for u := range usersB {
		e.dir.set(u, "b")
	}
	return e
}

// testWriter sends the core's log to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// routerCert is a self-signed certificate for atoll.test and 127.0.0.1.
func routerCert(t *testing.T) ([]byte, tls.Certificate) {
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

// ---- an LMTP line client ----

type client struct {
	t   *testing.T
	raw net.Conn
	c   net.Conn
	r   *bufio.Reader
}

// dial connects to addr from local (when valid) and reads the greeting.
func dial(t *testing.T, addr string, local netip.Addr) (*client, rep) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if local.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
	}
	raw, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	raw.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { raw.Close() })
	c := &client{t: t, raw: raw, c: raw, r: bufio.NewReader(raw)}
	return c, c.reply()
}

// rep is one reply: its code and lines (text after "ddd-"/"ddd ").
type rep struct {
	code  int
	lines []string
}

func (r rep) String() string { return fmt.Sprintf("%d %q", r.code, r.lines) }

// text is the reply's lines joined by " / ".
func (r rep) text() string { return strings.Join(r.lines, " / ") }

func (c *client) reply() rep {
	c.t.Helper()
	var r rep
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("read reply: %v (got %q)", err, l)
		}
		if !strings.HasSuffix(l, "\r\n") {
			c.t.Fatalf("reply line %q does not end with CRLF", l)
		}
		l = strings.TrimSuffix(l, "\r\n")
		if len(l) < 3 {
			c.t.Fatalf("short reply line %q", l)
		}
		code, err := strconv.Atoi(l[:3])
		if err != nil {
			c.t.Fatalf("reply line %q", l)
		}
		r.code = code
		if len(l) > 4 {
			r.lines = append(r.lines, l[4:])
		} else {
			r.lines = append(r.lines, "")
		}
		if len(l) == 3 || l[3] == ' ' {
			return r
		}
	}
}

func (c *client) write(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// cmd sends one command and returns its reply.
func (c *client) cmd(s string) rep {
	c.t.Helper()
	c.write(s + "\r\n")
	return c.reply()
}

// expect sends a command whose reply must have code and start with
// prefix (after the code).
func (c *client) expect(s string, code int, prefix string) rep {
	c.t.Helper()
	r := c.cmd(s)
	if r.code != code || !strings.HasPrefix(r.lines[len(r.lines)-1], prefix) {
		c.t.Fatalf("%s: got %v, want %d %q…", s, r, code, prefix)
	}
	return r
}

// sendData sends a message (CRLF lines) dot-stuffed, with the final dot.
func (c *client) sendData(msg string) {
	c.t.Helper()
	c.write(stuff(msg) + ".\r\n")
}

func stuff(msg string) string {
	var b strings.Builder
	for l := range strings.SplitAfterSeq(msg, "\n") {
		if strings.HasPrefix(l, ".") {
			b.WriteByte('.')
		}
		b.WriteString(l)
	}
	s := b.String()
	if !strings.HasSuffix(s, "\r\n") {
		s += "\r\n"
	}
	return s
}

// starttls upgrades after STARTTLS's 220.
func (c *client) starttls(conf *tls.Config) {
	c.t.Helper()
	tc := tls.Client(c.raw, conf)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("handshake: %v", err)
	}
	c.c, c.r = tc, bufio.NewReader(tc)
}

// expectEOF checks that the router closes the connection within d.
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

// ---- messages ----

// testMessage is a message worth checking byte for byte: 8-bit text, a
// line that is only a dot, lines starting with dots, a 3000-byte line
// (more than go-smtp's and RFC 5321's line limits), CRLF throughout.
func testMessage(marker string, rcpts ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "From: Sender <sender@example.org>\r\n")
	fmt.Fprintf(&b, "To: %s\r\n", strings.Join(rcpts, ", "))
	fmt.Fprintf(&b, "Subject: atoll lmtp %s\r\n", marker)
	fmt.Fprintf(&b, "Message-ID: <%s@atoll.test>\r\n", marker)
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
	b.WriteString("Grüße aus dem Atoll: ein 8-bit Text.\r\n")
	b.WriteString(".\r\n")
	b.WriteString(".leading dot\r\n")
	b.WriteString("..two leading dots\r\n")
	b.WriteString(strings.Repeat("0123456789", 300) + "\r\n")
	b.WriteString("\r\n")
	b.WriteString("last line " + marker + "\r\n")
	return b.String()
}

// ---- reading the mail back from a node (IMAP) ----

var literalRe = regexp.MustCompile(`\{(\d+)\}\r\n$`)

// mailbox returns every message of user's INBOX on node d, read with
// IMAP FETCH BODY.PEEK[] (CRLF line endings, as stored plus the headers
// the node added).
func mailbox(t *testing.T, d *peer.Dovecot, user string) [][]byte {
	t.Helper()
	conn, err := net.DialTimeout("tcp", netip.AddrPortFrom(loopback, uint16(d.Ports.IMAP)).String(), 5*time.Second)
	if err != nil {
		t.Fatalf("IMAP dial: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(conn)
	line := func() string {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("IMAP read: %v (%q)", err, l)
		}
		return l
	}
	if g := line(); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("IMAP greeting %q", g)
	}
	var msgs [][]byte
	exists := 0
	run := func(tag, cmd string) {
		fmt.Fprintf(conn, "%s %s\r\n", tag, cmd)
		for {
			l := line()
			if strings.HasPrefix(l, tag+" ") {
				if !strings.HasPrefix(l, tag+" OK") {
					t.Fatalf("IMAP %s: %q", cmd, l)
				}
				return
			}
			if m := regexp.MustCompile(`^\* (\d+) EXISTS`).FindStringSubmatch(l); m != nil {
				exists, _ = strconv.Atoi(m[1])
			}
			if m := literalRe.FindStringSubmatch(l); m != nil {
				n, _ := strconv.Atoi(m[1])
				buf := make([]byte, n)
				if _, err := io.ReadFull(r, buf); err != nil {
					t.Fatalf("IMAP literal: %v", err)
				}
				msgs = append(msgs, buf)
			}
		}
	}
	run("a", fmt.Sprintf("LOGIN %s %s", user, password(user)))
	run("b", "SELECT INBOX")
	if exists > 0 {
		run("c", "FETCH 1:* (BODY.PEEK[])")
	}
	run("d", "LOGOUT")
	return msgs
}

// copies returns the messages of user's mailbox on d holding marker.
func copies(t *testing.T, d *peer.Dovecot, user, marker string) [][]byte {
	t.Helper()
	var out [][]byte
	for _, m := range mailbox(t, d, user) {
		if bytes.Contains(m, []byte(marker)) {
			out = append(out, m)
		}
	}
	return out
}

// addedHeaders checks that stored is msg with only header lines the
// node adds (Return-Path, Delivered-To, Received, with continuation
// lines) before it, and returns those lines.
func addedHeaders(t *testing.T, stored []byte, msg string) string {
	t.Helper()
	if !bytes.HasSuffix(stored, []byte(msg)) {
		t.Fatalf("stored message does not end with the message sent:\n--- stored ---\n%s\n--- sent ---\n%s", clip(string(stored)), clip(msg))
	}
	prefix := string(stored[:len(stored)-len(msg)])
	for l := range strings.SplitAfterSeq(prefix, "\r\n") {
		if l == "" {
			continue
		}
		ok := strings.HasPrefix(l, "Return-Path: ") || strings.HasPrefix(l, "Delivered-To: ") ||
			strings.HasPrefix(l, "Received: ") || strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")
		if !ok {
			t.Fatalf("unexpected line %q before the message: the node added more than trace headers, or the message changed:\n%s", l, prefix)
		}
	}
	return prefix
}

func clip(s string) string {
	if len(s) > 2000 {
		return s[:1000] + "\n[…]\n" + s[len(s)-1000:]
	}
	return s
}

// ---- scripted fake LMTP nodes (behaviours Dovecot will not show) ----

type fakeNode struct {
	ln   net.Listener
	wg   sync.WaitGroup
	mu   sync.Mutex
	seen []string
}

// newFakeNode serves handle on each connection.
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
				c.SetDeadline(time.Now().Add(20 * time.Second))
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

// fakeLMTP is a small LMTP server: it accepts every recipient and, after
// the message, calls after (which may answer, stall or hang up).
func fakeLMTP(after func(c net.Conn, rcpts []string)) func(c net.Conn, r *bufio.Reader, f *fakeNode) {
	return fakeLMTPWith(fakeReplies{}, after)
}

// fakeReplies replace the fake node's answers to MAIL and DATA ("" for
// the usual 250 / 354), and to RCPT until the first RSET ("" for 250; a
// refused recipient is not kept). quit, when set, takes the connection
// over at QUIT instead of the 221 answer.
type fakeReplies struct {
	mail, data, rcpt string
	quit             func(c net.Conn, r *bufio.Reader)
}

func fakeLMTPWith(fr fakeReplies, after func(c net.Conn, rcpts []string)) func(c net.Conn, r *bufio.Reader, f *fakeNode) {
	if fr.mail == "" {
		fr.mail = "250 2.1.0 OK"
	}
	if fr.data == "" {
		fr.data = "354 go"
	}
	return func(c net.Conn, r *bufio.Reader, f *fakeNode) {
		io.WriteString(c, "220 fake LMTP\r\n")
		var rcpts []string
		refuse := fr.rcpt != ""
		for {
			l, ok := f.read(r)
			if !ok {
				return
			}
			verb, arg, _ := strings.Cut(l, " ")
			switch strings.ToUpper(verb) {
			case "LHLO":
				io.WriteString(c, "250-fake\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 PIPELINING\r\n")
			case "MAIL":
				rcpts = nil
				io.WriteString(c, fr.mail+"\r\n")
			case "RCPT":
				if refuse {
					io.WriteString(c, fr.rcpt+"\r\n")
					continue
				}
				rcpts = append(rcpts, strings.Trim(strings.TrimPrefix(arg, "TO:"), "<>"))
				io.WriteString(c, "250 2.1.5 OK\r\n")
			case "DATA":
				io.WriteString(c, fr.data+"\r\n")
				if !strings.HasPrefix(fr.data, "354") {
					continue
				}
				for {
					dl, ok := f.read(r)
					if !ok {
						return
					}
					if dl == "." {
						break
					}
				}
				after(c, rcpts)
			case "RSET":
				refuse, rcpts = false, nil
				io.WriteString(c, "250 2.0.0 OK\r\n")
			case "QUIT":
				if fr.quit != nil {
					fr.quit(c, r)
					return
				}
				io.WriteString(c, "221 2.0.0 bye\r\n")
				return
			default:
				io.WriteString(c, "500 5.5.2 what\r\n")
			}
		}
	}
}
