package imap

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
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
	"sync/atomic"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab/peer"
	"github.com/atoll-lb/atoll/userspace/directory"
	"github.com/atoll-lb/atoll/userspace/proxy"
)

// ---- fake directory and node source ----

// fakeDir maps users to islands; errs override per user, def is the
// island of everyone else ("" = unknown).
type fakeDir struct {
	mu      sync.Mutex
	users   map[string]string
	errs    map[string]error
	def     string
	lookups atomic.Int64
}

func (d *fakeDir) Lookup(ctx context.Context, user string) (directory.Result, error) {
	d.lookups.Add(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err, ok := d.errs[user]; ok {
		return directory.Result{}, err
	}
	if is, ok := d.users[user]; ok {
		return directory.Result{Island: is}, nil
	}
	if d.def != "" {
		return directory.Result{Island: d.def}, nil
	}
	return directory.Result{}, fmt.Errorf("lookup %q: %w", user, directory.ErrUnknownUser)
}

func (d *fakeDir) set(user, island string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.users[user] = island
}

func (d *fakeDir) setDef(island string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.def = island
}

func (d *fakeDir) fail(user string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.errs[user] = err
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

func (f *fakeNodes) setHealthy(island, node string, healthy bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.nodes[island] {
		if f.nodes[island][i].Name == node {
			f.nodes[island][i].Healthy = healthy
		}
	}
}

// testObs counts what the core reports.
type testObs struct {
	mu         sync.Mutex
	logins     map[string]int
	dialFailed map[string]int
	throttled  int
	sessions   int
}

func (o *testObs) Login(protocol, result string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.logins[protocol+"/"+result]++
}
func (o *testObs) Lookup(time.Duration, directory.Result, error) {}
func (o *testObs) Session(_ string, delta int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sessions += delta
}
func (o *testObs) Relayed(string, int64, int64) {}
func (o *testObs) DialFailed(node string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.dialFailed[node]++
}
func (o *testObs) Throttled(netip.Addr) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.throttled++
}

func (o *testObs) sessionCount() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.sessions
}

func (o *testObs) login(result string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.logins["imap/"+result]
}

func (o *testObs) dials(node string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.dialFailed[node]
}

func (o *testObs) throttles() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.throttled
}

// ---- the proxy under test ----

type env struct {
	t       *testing.T
	core    *proxy.Core
	addr    string // plaintext listener (STARTTLS)
	tlsAddr string // implicit-TLS listener
	dir     *fakeDir
	nodes   *fakeNodes
	obs     *testObs
	// shutdown stops the listeners and waits for every session to end
	// (also run at cleanup).
	shutdown func()
}

// newEnv serves a core built from o (directory, nodes, observer, log and
// the server certificate filled in unless noTLS) on two loopback
// listeners, plaintext and implicit TLS.
func newEnv(t *testing.T, o proxy.Options, noTLS bool) *env {
	t.Helper()
	return newEnvOn(t, o, noTLS, "127.0.0.1")
}

// newEnvOn is newEnv with the listeners on another loopback address.
func newEnvOn(t *testing.T, o proxy.Options, noTLS bool, listen string) *env {
	t.Helper()
	e := &env{
		t:     t,
		dir:   &fakeDir{users: map[string]string{}, errs: map[string]error{}},
		nodes: &fakeNodes{islands: map[string]proxy.IslandSettings{}, nodes: map[string][]proxy.NodeInfo{}},
		obs:   &testObs{logins: map[string]int{}, dialFailed: map[string]int{}},
	}
	o.Directory, o.Nodes, o.Observer = e.dir, e.nodes, e.obs
	if !noTLS {
		o.ServerTLS = &tls.Config{Certificates: []tls.Certificate{testCert(t).cert}, MinVersion: tls.VersionTLS12}
	}
	o.Log = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	if o.Hostname == "" {
		o.Hostname = "proxy.test"
	}
	e.core = proxy.NewCore(o)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	serve := func(tlsL bool) string {
		ln, err := net.Listen("tcp", net.JoinHostPort(listen, "0"))
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			err := e.core.Serve(ctx, ln, proxy.Listener{Service: "imap", Handler: NewHandler(), TLS: tlsL, Protocol: "imap", Refuse: "* BYE Too many connections.\r\n"})
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
		return ln.Addr().String()
	}
	e.addr = serve(false)
	if !noTLS {
		e.tlsAddr = serve(true)
	}
	var once sync.Once
	e.shutdown = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(e.shutdown)
	return e
}

// island declares an island with its nodes (all healthy).
func (e *env) island(name string, s proxy.IslandSettings, nodes ...proxy.NodeInfo) {
	e.nodes.mu.Lock()
	defer e.nodes.mu.Unlock()
	if s.ClientAddr == "" {
		s.ClientAddr = proxy.ClientAddrNone
	}
	if s.NodeTLS == "" {
		s.NodeTLS = proxy.NodeTLSNone
	}
	e.nodes.islands[name] = s
	for i := range nodes {
		nodes[i].Healthy = true
	}
	e.nodes.nodes[name] = nodes
}

func nodeAt(name string, addr string) proxy.NodeInfo {
	return proxy.NodeInfo{Name: name, Addr: netip.MustParseAddrPort(addr)}
}

// firstNode is the node the core routes user to first.
func (e *env) firstNode(user string) string {
	e.t.Helper()
	r, err := e.core.Route(context.Background(), "imap", user)
	if err != nil {
		e.t.Fatalf("Route(%s): %v", user, err)
	}
	return r.Nodes[0].Name
}

// ---- a test certificate for the proxy ----

type certs struct {
	cert   tls.Certificate
	pool   *x509.CertPool
	caFile string
}

var (
	certOnce sync.Once
	certVal  certs
	certErr  error
	certDir  string
)

func testCert(t *testing.T) certs {
	t.Helper()
	certOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			certErr = err
			return
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "atoll imap test"},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
			DNSNames:              []string{"localhost", "proxy.test"},
			IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			certErr = err
			return
		}
		leaf, _ := x509.ParseCertificate(der)
		certVal.cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
		certVal.pool = x509.NewCertPool()
		certVal.pool.AddCert(leaf)
		certDir, certErr = os.MkdirTemp("", "atoll-imap-test-")
		if certErr != nil {
			return
		}
		certVal.caFile = filepath.Join(certDir, "ca.pem")
		certErr = os.WriteFile(certVal.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	})
	if certErr != nil {
		t.Fatal(certErr)
	}
	return certVal
}

func clientTLS(t *testing.T) *tls.Config {
	return &tls.Config{RootCAs: testCert(t).pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// ---- an IMAP client for tests ----

type iconn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialIMAP(t *testing.T, addr string, local netip.Addr) *iconn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if local.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &iconn{t: t, c: c, r: bufio.NewReader(c)}
}

// client connects to the plaintext listener and reads the greeting.
func (e *env) client(t *testing.T) *iconn {
	t.Helper()
	c := dialIMAP(t, e.addr, netip.Addr{})
	if g := c.line(); !strings.HasPrefix(g, "* OK [CAPABILITY IMAP4rev1 ") || !strings.HasSuffix(g, "] proxy.test atoll ready.") {
		t.Fatalf("greeting %q", g)
	}
	return c
}

func (c *iconn) write(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *iconn) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

// resp reads one whole response, literals included, raw.
func (c *iconn) resp() string {
	c.t.Helper()
	var b strings.Builder
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("read: %v (got %q)", err, b.String()+l)
		}
		b.WriteString(l)
		n, _, ok := trailingLiteral([]byte(strings.TrimRight(l, "\r\n")))
		if !ok {
			return b.String()
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(c.r, buf); err != nil {
			c.t.Fatalf("read literal: %v", err)
		}
		b.Write(buf)
	}
}

// until reads responses up to the one tagged tag; it returns them raw.
func (c *iconn) until(tag string) []string {
	c.t.Helper()
	var out []string
	for {
		r := c.resp()
		out = append(out, r)
		if strings.HasPrefix(r, tag+" ") {
			return out
		}
	}
}

// cmd sends a tagged command and returns its responses, the tagged one
// last (without CRLF).
func (c *iconn) cmd(tag, cmd string) []string {
	c.t.Helper()
	c.write(tag + " " + cmd + "\r\n")
	out := c.until(tag)
	out[len(out)-1] = strings.TrimRight(out[len(out)-1], "\r\n")
	return out
}

// ok runs a command that must succeed.
func (c *iconn) ok(tag, cmd string) []string {
	c.t.Helper()
	out := c.cmd(tag, cmd)
	if !strings.HasPrefix(out[len(out)-1], tag+" OK") {
		c.t.Fatalf("%s %s: %q", tag, cmd, out)
	}
	return out
}

func last(lines []string) string { return lines[len(lines)-1] }

// closed waits for the server to close the connection (EOF) within d.
func (c *iconn) closed(d time.Duration) {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(d))
	rest, err := io.ReadAll(c.r)
	if err != nil {
		c.t.Fatalf("want EOF within %v: %v (read %q)", d, err, rest)
	}
	if len(rest) > 0 {
		c.t.Fatalf("want EOF, got %q", rest)
	}
}

// silent checks that nothing arrives for d.
func (c *iconn) silent(d time.Duration) {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(d))
	l, err := c.r.ReadString('\n')
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		c.t.Fatalf("want silence, got %q (%v)", l, err)
	}
	c.c.SetReadDeadline(time.Now().Add(20 * time.Second))
}

func (c *iconn) startTLS(conf *tls.Config) {
	c.t.Helper()
	if c.r.Buffered() > 0 {
		c.t.Fatalf("%d bytes buffered before the TLS handshake", c.r.Buffered())
	}
	tc := tls.Client(c.c, conf)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.c, c.r = tc, bufio.NewReader(tc)
}

func plain(authz, user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(authz + "\x00" + user + "\x00" + pass))
}

// ---- Dovecot ----

// Users of every test Dovecot. Passwords exercise the string forms.
var dovecotUsers = map[string]string{
	"alice": "alice-pw",
	"bob":   `p a"s\s w`,
	"carol": `wörd "x" \y z`,
	"dave":  "dave pw with spaces",
	"erin":  "erin-pw",
	"frank": "frank-pw",
	"gina":  "gina-pw",
	"hank":  `h"a\nk`,
	"ivy":   "ivy-pw",
	"jack":  "jack-pw",
	"kim":   "kim-pw",
	"liz":   "liz-pw",
	"zed":   "zed-pw",
	"pyq":   `p y"t\h on`,
	"pyu":   `pÿthön "u" \ 8`,
}

func startDovecot(t *testing.T, dir, name string) *peer.Dovecot {
	t.Helper()
	peer.Require(t, "dovecot")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := peer.StartDovecot(ctx, peer.DovecotOptions{Dir: dir, Name: name, Users: dovecotUsers, TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

var (
	sharedMu sync.Mutex
	shared   *peer.Dovecot
	sharedT  string
)

// sharedDovecot is one Dovecot for the whole package (stopped by
// TestMain). Tests use distinct users where mailbox contents matter.
func sharedDovecot(t *testing.T) *peer.Dovecot {
	t.Helper()
	peer.Require(t, "dovecot")
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil {
		dir, err := os.MkdirTemp("", "atoll-imap-dc-")
		if err != nil {
			t.Fatal(err)
		}
		sharedT = dir
		shared = startDovecot(t, dir, "dc1")
	}
	return shared
}

func TestMain(m *testing.M) {
	code := m.Run()
	sharedMu.Lock()
	if shared != nil {
		if err := shared.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop dovecot:", err)
			code = 1
		}
		os.RemoveAll(sharedT)
	}
	sharedMu.Unlock()
	if certDir != "" {
		os.RemoveAll(certDir)
	}
	os.Exit(code)
}

func imapAddr(d *peer.Dovecot) string  { return d.Addr(d.Opts.Listen[0], d.Ports.IMAP) }
func imapsAddr(d *peer.Dovecot) string { return d.Addr(d.Opts.Listen[0], d.Ports.IMAPS) }

// dovecotIsland declares island with d as its one node (named after d,
// which is the name in its certificate).
func (e *env) dovecotIsland(island string, d *peer.Dovecot, s proxy.IslandSettings) {
	addr := imapAddr(d)
	if s.NodeTLS == proxy.NodeTLSImplicit {
		addr = imapsAddr(d)
	}
	if s.NodeTLS != "" && s.NodeTLS != proxy.NodeTLSNone {
		s.TLSConfig = &tls.Config{RootCAs: d.CertPool(), MinVersion: tls.VersionTLS12}
	}
	e.island(island, s, nodeAt(d.Opts.Name, addr))
}

var msgSeq atomic.Int64

// deliver sends one message to user over LMTP and returns its subject.
func deliver(t *testing.T, d *peer.Dovecot, user, tag string) string {
	t.Helper()
	subject := fmt.Sprintf("%s %d %s", tag, msgSeq.Add(1), hex.EncodeToString(randBytes(4)))
	c := dialIMAP(t, d.Addr(d.Opts.Listen[0], d.Ports.LMTP), netip.Addr{})
	defer c.c.Close()
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
	reply("220")
	c.write("LHLO tester\r\n")
	reply("250")
	c.write("MAIL FROM:<sender@example.org>\r\n")
	reply("250")
	c.write("RCPT TO:<" + user + ">\r\n")
	reply("250")
	c.write("DATA\r\n")
	reply("354")
	c.write("From: sender@example.org\r\nTo: " + user + "\r\nSubject: " + subject + "\r\n\r\nbody of " + subject + "\r\nwith a second line.\r\n.\r\n")
	reply("250")
	c.write("QUIT\r\n")
	reply("221")
	return subject
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// directFetch logs in to the node itself and returns the raw FETCH
// response for message seq ("*": the newest).
func directFetch(t *testing.T, addr, user, pass, seq string) string {
	t.Helper()
	c := dialIMAP(t, addr, netip.Addr{})
	defer c.c.Close()
	if g := c.line(); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("node greeting %q", g)
	}
	c.ok("a", "AUTHENTICATE PLAIN "+plain("", user, pass))
	c.ok("b", "EXAMINE INBOX")
	out := c.ok("c", "FETCH "+seq+" BODY.PEEK[]")
	c.ok("z", "LOGOUT")
	return fetchResp(t, out)
}

// fetchResp picks the untagged FETCH response out of a command's
// responses.
func fetchResp(t *testing.T, out []string) string {
	t.Helper()
	for _, r := range out {
		if strings.HasPrefix(r, "* ") && strings.Contains(r, " FETCH ") {
			return r
		}
	}
	t.Fatalf("no FETCH response in %q", out)
	return ""
}

// fetchBody is the literal of a FETCH BODY[] response.
func fetchBody(t *testing.T, resp string) []byte {
	t.Helper()
	first, rest, _ := strings.Cut(resp, "\r\n")
	n, _, ok := trailingLiteral([]byte(first))
	if !ok || len(rest) < n {
		t.Fatalf("no literal in %q", resp)
	}
	return []byte(rest[:n])
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
