//go:build linux

package peer

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/userspace/netns"
)

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func startDovecot(t *testing.T, o DovecotOptions) *Dovecot {
	t.Helper()
	Require(t, "dovecot")
	d, err := StartDovecot(testCtx(t, 20*time.Second), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if t.Failed() {
			t.Logf("dovecot %s log:\n%s", d.Opts.Name, tail(d.Log(), 60))
		}
	})
	return d
}

// textConn is a minimal line-oriented client for IMAP, POP3 and LMTP.
type textConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func dialText(t *testing.T, dial dialFunc, addr string, tlsConf *tls.Config) *textConn {
	t.Helper()
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	c, err := dial(testCtx(t, 5*time.Second), "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	tc := &textConn{t: t, c: c}
	if tlsConf != nil {
		tc.startTLS(tlsConf)
	} else {
		tc.r = bufio.NewReader(c)
	}
	return tc
}

func (c *textConn) startTLS(conf *tls.Config) {
	c.t.Helper()
	if c.r != nil && c.r.Buffered() > 0 {
		c.t.Fatalf("%d bytes buffered before the TLS handshake", c.r.Buffered())
	}
	tc := tls.Client(c.c, conf)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.c, c.r = tc, bufio.NewReader(tc)
}

func (c *textConn) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

func (c *textConn) send(format string, a ...any) {
	c.t.Helper()
	if _, err := fmt.Fprintf(c.c, format+"\r\n", a...); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// imap sends a tagged command and returns every line up to and including
// the tagged completion, which must be OK unless wantOK is false.
func (c *textConn) imap(tag, cmd string, wantOK bool) []string {
	c.t.Helper()
	c.send("%s %s", tag, cmd)
	var lines []string
	for {
		l := c.line()
		lines = append(lines, l)
		if strings.HasPrefix(l, tag+" ") {
			if ok := strings.HasPrefix(l, tag+" OK"); ok != wantOK {
				c.t.Fatalf("%s %s: %q", tag, cmd, lines)
			}
			return lines
		}
	}
}

// reply reads an SMTP/LMTP reply and checks its code.
func (c *textConn) reply(code string) []string {
	c.t.Helper()
	var lines []string
	for {
		l := c.line()
		lines = append(lines, l)
		if !strings.HasPrefix(l, code) {
			c.t.Fatalf("want %s, got %q", code, lines)
		}
		if len(l) == 3 || l[3] == ' ' {
			return lines
		}
	}
}

// pop3 sends a command and expects "+OK" (or "-ERR" unless wantOK).
func (c *textConn) pop3(cmd string, wantOK bool) string {
	c.t.Helper()
	c.send("%s", cmd)
	l := c.line()
	if strings.HasPrefix(l, "+OK") != wantOK {
		c.t.Fatalf("%s: %q", cmd, l)
	}
	return l
}

func (c *textConn) close() { c.c.Close() }

// descendants maps pid and every process below it to its start time.
func descendants(pid int) map[int]uint64 {
	children := map[int][]int{}
	start := map[int]uint64{}
	allProcs(func(p int, s ProcStat) {
		children[s.PPID] = append(children[s.PPID], p)
		start[p] = s.StartTime
	})
	out := map[int]uint64{}
	var walk func(int)
	walk = func(p int) {
		if _, ok := start[p]; !ok {
			return
		}
		out[p] = start[p]
		for _, c := range children[p] {
			walk(c)
		}
	}
	walk(pid)
	return out
}

// requireGone fails if any of procs is still alive (zombies and reused PIDs
// do not count).
func requireGone(t *testing.T, procs map[int]uint64) {
	t.Helper()
	for pid, st := range procs {
		s, err := ReadStat(pid)
		if err == nil && s.StartTime == st && s.State != 'Z' && s.State != 'X' {
			t.Errorf("process %d (started %d) survives, state %c", pid, st, s.State)
		}
	}
}

func requireRefused(t *testing.T, dial dialFunc, addr string) {
	t.Helper()
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	c, err := dial(testCtx(t, 2*time.Second), "tcp", addr)
	if err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections", addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s: %v, want connection refused", addr, err)
	}
}

func token() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// deliver sends one message to rcpt over LMTP (STARTTLS when conf != nil).
func deliver(t *testing.T, dial dialFunc, addr string, conf *tls.Config, name, rcpt, subject string) {
	t.Helper()
	c := dialText(t, dial, addr, nil)
	defer c.close()
	if g := c.reply("220"); !strings.Contains(strings.Join(g, "\n"), "atoll-test "+name+" ready") {
		t.Fatalf("LMTP greeting %q lacks the name %s", g, name)
	}
	c.send("LHLO tester")
	caps := c.reply("250")
	if conf != nil {
		if !strings.Contains(strings.Join(caps, "\n"), "STARTTLS") {
			t.Fatalf("LMTP does not offer STARTTLS: %q", caps)
		}
		c.send("STARTTLS")
		c.reply("220")
		c.startTLS(conf)
		c.send("LHLO tester")
		c.reply("250")
	}
	c.send("MAIL FROM:<sender@example.org>")
	c.reply("250")
	c.send("RCPT TO:<%s>", rcpt)
	c.reply("250")
	c.send("DATA")
	c.reply("354")
	c.send("From: sender@example.org\r\nTo: %s\r\nSubject: %s\r\n\r\nbody of %s\r\n.", rcpt, subject, subject)
	if r := c.reply("250"); !strings.Contains(r[0], rcpt) {
		t.Fatalf("DATA: %q", r)
	}
	c.send("QUIT")
	c.reply("221")
}

// fetchSubjects logs in over IMAP and returns the INBOX's raw messages.
func fetchAll(t *testing.T, dial dialFunc, addr string, conf *tls.Config, user, pass string) string {
	t.Helper()
	c := dialText(t, dial, addr, conf)
	defer c.close()
	if g := c.line(); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("IMAP greeting %q", g)
	}
	c.imap("a", fmt.Sprintf("LOGIN %s %s", user, pass), true)
	c.imap("b", "SELECT INBOX", true)
	out := c.imap("c", "FETCH 1:* BODY[]", true)
	c.imap("z", "LOGOUT", true)
	return strings.Join(out, "\n")
}

func TestDovecotServesIMAPPOP3LMTP(t *testing.T) {
	d := startDovecot(t, DovecotOptions{
		Dir:   t.TempDir(),
		Name:  "node-a1",
		TLS:   true,
		Users: map[string]string{"alice": "alice-pw", "bob": "bob pw"},
	})
	lo := d.Opts.Listen[0]
	for _, p := range []int{d.Ports.IMAP, d.Ports.IMAPS, d.Ports.POP3, d.Ports.POP3S, d.Ports.LMTP, d.Ports.LMTPS} {
		if p <= 0 {
			t.Fatalf("ports %+v: every listener should be enabled", d.Ports)
		}
	}
	conf := &tls.Config{RootCAs: d.CertPool(), ServerName: "node-a1"}
	confIP := &tls.Config{RootCAs: d.CertPool(), ServerName: lo.String()} // the IP SAN
	name := d.Greeting()
	if name != "atoll-test node-a1 ready" {
		t.Fatalf("Greeting() = %q", name)
	}

	t.Run("greetings", func(t *testing.T) {
		for _, tc := range []struct {
			proto string
			port  int
			conf  *tls.Config
			want  string
		}{
			{"imap", d.Ports.IMAP, nil, "* OK"},
			{"imaps", d.Ports.IMAPS, conf, "* OK"},
			{"pop3", d.Ports.POP3, nil, "+OK"},
			{"pop3s", d.Ports.POP3S, confIP, "+OK"},
			{"lmtp", d.Ports.LMTP, nil, "220 "},
			{"lmtps", d.Ports.LMTPS, conf, "220 "},
		} {
			t.Run(tc.proto, func(t *testing.T) {
				c := dialText(t, nil, d.Addr(lo, tc.port), tc.conf)
				g := c.line()
				if !strings.HasPrefix(g, tc.want) || !strings.Contains(g, name) {
					t.Fatalf("greeting %q: want %q... carrying %q", g, tc.want, name)
				}
			})
		}
	})

	t.Run("imap-starttls-login", func(t *testing.T) {
		c := dialText(t, nil, d.Addr(lo, d.Ports.IMAP), nil)
		c.line()
		caps := strings.Join(c.imap("a", "CAPABILITY", true), " ")
		if !strings.Contains(caps, "STARTTLS") {
			t.Fatalf("no STARTTLS in %q", caps)
		}
		c.imap("b", "STARTTLS", true)
		c.startTLS(confIP)
		c.imap("d", "LOGIN alice alice-pw", true)
		c.imap("z", "LOGOUT", true)
	})

	t.Run("imap-wrong-password", func(t *testing.T) {
		// Its own connection: imap-login delays every further attempt on a
		// connection that failed one (5 s × attempts, not configurable).
		c := dialText(t, nil, d.Addr(lo, d.Ports.IMAP), nil)
		c.line()
		c.imap("a", "LOGIN alice wrong", false)
	})

	t.Run("pop3-stls-login", func(t *testing.T) {
		c := dialText(t, nil, d.Addr(lo, d.Ports.POP3), nil)
		c.line()
		c.pop3("STLS", true)
		c.startTLS(conf)
		c.pop3("USER bob", true)
		c.pop3("PASS bob pw", true)
		c.pop3("STAT", true)
		c.pop3("QUIT", true)
	})

	t.Run("lmtp-deliver-imap-fetch", func(t *testing.T) {
		subj := "atoll-" + token()
		deliver(t, nil, d.Addr(lo, d.Ports.LMTP), conf, "node-a1", "bob", subj)
		got := fetchAll(t, nil, d.Addr(lo, d.Ports.IMAPS), conf, "bob", `"bob pw"`)
		if !strings.Contains(got, "Subject: "+subj) || !strings.Contains(got, "body of "+subj) {
			t.Fatalf("bob's INBOX lacks the message %s:\n%s", subj, got)
		}
		// alice got nothing.
		c := dialText(t, nil, d.Addr(lo, d.Ports.IMAP), nil)
		c.line()
		c.imap("a", "LOGIN alice alice-pw", true)
		if sel := strings.Join(c.imap("b", "SELECT INBOX", true), "\n"); !strings.Contains(sel, "* 0 EXISTS") {
			t.Fatalf("alice's INBOX is not empty:\n%s", sel)
		}
	})

	t.Run("lmtp-unknown-user", func(t *testing.T) {
		c := dialText(t, nil, d.Addr(lo, d.Ports.LMTP), nil)
		c.reply("220")
		c.send("LHLO tester")
		c.reply("250")
		c.send("MAIL FROM:<>")
		c.reply("250")
		c.send("RCPT TO:<nobody-here>")
		c.reply("550")
	})

	// Stop: the master and everything it forked are gone.
	procs := descendants(d.PID)
	if len(procs) < 3 {
		t.Fatalf("expected the master and its children, found %v", procs)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, procs)
	if err := d.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if d.Running() {
		t.Fatal("Running() after Stop")
	}
	requireRefused(t, nil, d.Addr(lo, d.Ports.IMAP))
	if !strings.Contains(d.Log(), "starting up") {
		t.Fatalf("log lacks the start line:\n%s", d.Log())
	}
}

func TestDovecotKillAndRestart(t *testing.T) {
	dir := t.TempDir()
	o := DovecotOptions{Dir: dir, Name: "node-k", TLS: true, Users: map[string]string{"carol": "pw"},
		Ports: DovecotPorts{POP3: -1, POP3S: -1, LMTPS: -1, IMAPS: -1}}
	d := startDovecot(t, o)
	if d.Ports.POP3 != -1 || d.Ports.POP3S != -1 || d.Ports.LMTPS != -1 || d.Ports.IMAPS != -1 {
		t.Fatalf("disabled listeners resolved to %+v", d.Ports)
	}
	lo := d.Opts.Listen[0]
	subj := "kept-" + token()
	deliver(t, nil, d.Addr(lo, d.Ports.LMTP), nil, "node-k", "carol", subj)

	procs := descendants(d.PID)
	if err := d.Kill(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, procs)
	requireRefused(t, nil, d.Addr(lo, d.Ports.IMAP))
	requireRefused(t, nil, d.Addr(lo, d.Ports.LMTP))
	if err := d.Stop(); err != nil {
		t.Fatalf("Stop after Kill: %v", err)
	}

	// Same Dir, same ports: the mail and the certificate survive.
	o.Ports = d.Ports
	d2 := startDovecot(t, o)
	if d2.Ports != d.Ports {
		t.Fatalf("ports %+v after restart, want %+v", d2.Ports, d.Ports)
	}
	if string(d2.CertPEM) != string(d.CertPEM) {
		t.Fatal("the restarted instance has a new certificate")
	}
	conf := &tls.Config{RootCAs: d.CertPool(), ServerName: "node-k"}
	c := dialText(t, nil, d2.Addr(lo, d2.Ports.IMAP), nil)
	c.line()
	c.imap("a", "STARTTLS", true)
	c.startTLS(conf)
	c.imap("b", "LOGIN carol pw", true)
	c.imap("c", "SELECT INBOX", true)
	if got := strings.Join(c.imap("d", "FETCH 1 BODY[HEADER.FIELDS (SUBJECT)]", true), "\n"); !strings.Contains(got, subj) {
		t.Fatalf("message lost across the restart:\n%s", got)
	}
}

func TestDovecotLongDirAndIPv6(t *testing.T) {
	Require(t, "dovecot")
	if _, err := net.Listen("tcp", "[::1]:0"); err != nil {
		t.Fatalf("no IPv6 loopback (::1): %v", err)
	}
	// A Dir too long for base_dir's unix sockets.
	long := t.TempDir() + "/" + strings.Repeat("d", 90)
	if err := os.Mkdir(long, 0o700); err != nil {
		t.Fatal(err)
	}
	d := startDovecot(t, DovecotOptions{
		Dir:    long,
		Name:   "node-6",
		Listen: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")},
		Ports:  DovecotPorts{LMTP: -1},
	})
	if !d.ownsBase || len(d.baseDir) > maxBaseDirLen {
		t.Fatalf("base_dir %s not moved out of the long Dir", d.baseDir)
	}
	base := d.baseDir
	for _, a := range d.Opts.Listen {
		c := dialText(t, nil, d.Addr(a, d.Ports.POP3), nil)
		if g := c.line(); !strings.Contains(g, d.Greeting()) {
			t.Fatalf("%v: greeting %q", a, g)
		}
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(base); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("private base_dir %s left behind (%v)", base, err)
	}
}

func TestDovecotOptionErrors(t *testing.T) {
	dir := t.TempDir()
	ns := netip.MustParseAddr("198.51.100.11")
	for _, tc := range []struct {
		name string
		o    DovecotOptions
		want string
	}{
		{"no dir", DovecotOptions{}, "Dir is required"},
		{"dir with space", DovecotOptions{Dir: dir + "/a b"}, "interpret"},
		{"dir with percent", DovecotOptions{Dir: dir + "/a%u"}, "interpret"},
		{"bad name", DovecotOptions{Dir: dir, Name: "a b"}, "Name"},
		{"bad user", DovecotOptions{Dir: dir, Users: map[string]string{"a:b": "x"}}, "user name"},
		{"bad password", DovecotOptions{Dir: dir, Users: map[string]string{"a": "x:y"}}, "password"},
		{"zone", DovecotOptions{Dir: dir, Listen: []netip.Addr{netip.MustParseAddr("fe80::1%lo")}}, "zone"},
		{"port 0 off loopback", DovecotOptions{Dir: dir, Listen: []netip.Addr{ns}}, "loopback"},
		{"all disabled", DovecotOptions{Dir: dir, Ports: DovecotPorts{-1, -1, -1, -1, -1, -1}}, "disabled"},
		{"port out of range", DovecotOptions{Dir: dir, Ports: DovecotPorts{IMAP: 70000}}, "out of range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if strings.Contains(tc.name, "disabled") || strings.Contains(tc.name, "range") || strings.Contains(tc.name, "loopback") {
				Require(t, "dovecot")
			}
			d, err := StartDovecot(testCtx(t, 10*time.Second), tc.o)
			if err == nil {
				d.Stop()
				t.Fatal("started")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestDovecotInNamespace(t *testing.T) {
	Require(t, "dovecot")
	if os.Geteuid() != 0 {
		t.Skip("SKIP: network namespaces need root")
	}
	ns, err := netns.New("atl-peer")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Error(err)
		}
	})
	addr := netip.MustParsePrefix("198.51.100.11/32")
	if err := ns.AddAddr("lo", addr); err != nil {
		t.Fatal(err)
	}
	d := startDovecot(t, DovecotOptions{
		Dir:    t.TempDir(),
		Name:   "node-ns",
		Listen: []netip.Addr{addr.Addr()},
		Ports:  DovecotPorts{IMAP: 143, POP3: 110, LMTP: 24, IMAPS: 993, POP3S: 995, LMTPS: 1024},
		TLS:    true,
		Users:  map[string]string{"dave": "pw"},
		Command: func(name string, args ...string) *exec.Cmd {
			return ns.Command(context.Background(), name, args...)
		},
		Dial: ns.DialContext,
	})
	// Reached from inside the namespace, on the well-known ports.
	conf := &tls.Config{RootCAs: d.CertPool(), ServerName: addr.Addr().String()}
	c := dialText(t, ns.DialContext, d.Addr(addr.Addr(), 993), conf)
	if g := c.line(); !strings.Contains(g, "atoll-test node-ns ready") {
		t.Fatalf("greeting %q", g)
	}
	c.imap("a", "LOGIN dave pw", true)
	c.imap("z", "LOGOUT", true)
	subj := "ns-" + token()
	deliver(t, ns.DialContext, d.Addr(addr.Addr(), 24), conf, "node-ns", "dave", subj)
	if got := fetchAll(t, ns.DialContext, d.Addr(addr.Addr(), 143), nil, "dave", "pw"); !strings.Contains(got, subj) {
		t.Fatalf("message not delivered:\n%s", got)
	}

	procs := descendants(d.PID)
	if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", d.PID)); !strings.Contains(string(cmdline), "dovecot") {
		t.Fatalf("PID %d is %q, not dovecot: ip netns exec should exec", d.PID, cmdline)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, procs)
	requireRefused(t, ns.DialContext, d.Addr(addr.Addr(), 143))
}
