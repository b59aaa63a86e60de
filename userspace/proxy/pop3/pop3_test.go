package pop3

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab/peer"
	"github.com/atoll-lb/atoll/userspace/directory"
	"github.com/atoll-lb/atoll/userspace/proxy"
)

var none netip.Addr

// capaLines reads CAPA's answer after its +OK line.
func capaLines(c *client) []string {
	c.t.Helper()
	var out []string
	for {
		l := c.line()
		if l == "." {
			return out
		}
		out = append(out, l)
	}
}

// TestPreLogin: the greeting, CAPA in every TLS situation, AUTH's
// mechanism list and the refusals that need no node.
func TestPreLogin(t *testing.T) {
	all := []string{"USER", "SASL PLAIN", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "TOP", "UIDL"}
	for _, tc := range []struct {
		name       string
		opts       envOpts
		implicit   bool
		want       []string
		wantAfterS []string // CAPA after STLS (nil: do not STLS)
	}{
		{"plain-with-tls", envOpts{}, false, append(slices.Clone(all), "STLS"), all},
		{"implicit-tls", envOpts{}, true, all, nil},
		{"no-tls", envOpts{noTLS: true}, false, all, nil},
		{"require-tls", envOpts{requireTLS: true}, false, []string{"RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "TOP", "UIDL", "STLS"}, all},
		{"require-tls-implicit", envOpts{requireTLS: true}, true, all, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.opts)
			addr, conf := e.addr, (*tls.Config)(nil)
			if tc.implicit {
				addr, conf = e.tlsAddr, e.client
			}
			c, g := dial(t, addr, conf, none)
			if g != "+OK proxy.test atoll ready." {
				t.Fatalf("greeting %q", g)
			}
			if first := c.cmd("capa"); first != "+OK Capability list follows" {
				t.Fatalf("CAPA: %q", first)
			}
			if got := capaLines(c); !slices.Equal(got, tc.want) {
				t.Fatalf("CAPA %q, want %q", got, tc.want)
			}
			if tc.wantAfterS == nil {
				return
			}
			if l := c.cmd("STLS"); l != "+OK Begin TLS negotiation" {
				t.Fatalf("STLS: %q", l)
			}
			c.starttls(e.client)
			c.ok("CAPA")
			if got := capaLines(c); !slices.Equal(got, tc.wantAfterS) {
				t.Fatalf("CAPA after STLS %q, want %q", got, tc.wantAfterS)
			}
			if l := c.cmd("STLS"); l != msgAlreadyTLS {
				t.Fatalf("second STLS: %q", l)
			}
		})
	}

	t.Run("commands", func(t *testing.T) {
		e := newEnv(t, envOpts{limits: proxy.Limits{MaxBadCommands: 100}})
		c, _ := dial(t, e.addr, nil, none)
		for _, step := range []struct{ send, want string }{
			{"AUTH", "+OK"},
			{"", "PLAIN"},
			{"", "."},
			{"auth cram-md5", msgBadMech},
			{"AUTH LOGIN", msgBadMech},
			{"AUTH PLAIN a b c", msgAuthSyntax},
			{"AUTH PLAIN !!!", msgBadPlain},
			{"AUTH PLAIN =", msgBadPlain},
			{"AUTH PLAIN " + encodePlain("", "", "pw"), msgBadPlain},
			{"AUTH PLAIN " + encodePlain("", "a", "p\r\nDELE 1"), msgBadPlain},
			{"AUTH PLAIN " + encodePlain("admin", "alice", "pw"), msgNoAuthz},
			{"AUTH PLAIN", "+ "},
			{"*", msgAuthAborted},
			{"AUTH PLAIN", "+ "},
			{"not base64", msgBadPlain},
			{"PASS secret", msgUserFirst},
			{"USER", msgNoUser},
			{"USER alice", "+OK"},
			{"PASS", msgNoPass},
			{"APOP alice 0123456789abcdef0123456789abcdef", msgUnknown},
			{"NOOP", msgUnknown},
			{"STAT", msgUnknown},
			{"", msgUnknown},
			{"US\x00ER x", msgUnknown},
			{"USER\tx", msgUnknown},
		} {
			if step.send != "" || step.want == msgUnknown {
				c.write(step.send + "\r\n")
			}
			if l := c.line(); l != step.want {
				t.Fatalf("%q: got %q, want %q", step.send, l, step.want)
			}
		}
		if l := c.cmd("quit"); l != msgLogout {
			t.Fatalf("QUIT: %q", l)
		}
		c.expectEOF(time.Second)
	})

	t.Run("no-apop-timestamp", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		_, g := dial(t, e.addr, nil, none)
		if strings.ContainsAny(g, "<>") {
			t.Fatalf("greeting %q offers an APOP timestamp", g)
		}
	})

	t.Run("stls-without-tls", func(t *testing.T) {
		e := newEnv(t, envOpts{noTLS: true})
		c, _ := dial(t, e.addr, nil, none)
		if l := c.cmd("STLS"); l != msgNoTLS {
			t.Fatalf("STLS: %q", l)
		}
	})

	t.Run("require-tls-refuses-plaintext", func(t *testing.T) {
		e := newEnv(t, envOpts{requireTLS: true})
		e.dir.set("alice", "plain")
		c, _ := dial(t, e.addr, nil, none)
		for _, cmd := range []string{"USER alice", "AUTH PLAIN " + plainIR("alice", "x"), "AUTH PLAIN"} {
			if l := c.cmd(cmd); l != msgPlainDisabled {
				t.Fatalf("%s: %q", cmd, l)
			}
		}
		if l := c.cmd("AUTH"); l != "+OK" || c.line() != "." {
			t.Fatalf("AUTH lists mechanisms before TLS: %q", l)
		}
		if got := e.obs.results(); len(got) != 0 {
			t.Fatalf("logins attempted: %q", got)
		}
	})
}

// loginMethod logs c in as user with one of the client-side methods.
type loginMethod string

const (
	userPass   loginMethod = "user-pass"
	userPassLC loginMethod = "user-pass-lowercase"
	authIR     loginMethod = "auth-plain-initial"
	authCont   loginMethod = "auth-plain-continuation"
)

func (c *client) login(m loginMethod, user, pass string) string {
	c.t.Helper()
	switch m {
	case userPass:
		c.ok("USER " + user)
		return c.cmd("PASS " + pass)
	case userPassLC:
		c.ok("user " + user)
		return c.cmd("pass " + pass)
	case authIR:
		return c.cmd("AUTH PLAIN " + plainIR(user, pass))
	case authCont:
		if l := c.cmd("AUTH PLAIN"); l != "+ " {
			c.t.Fatalf("AUTH PLAIN: %q, want a continuation", l)
		}
		return c.cmd(plainIR(user, pass))
	}
	panic(m)
}

// TestLoginRelay (1): every client-side login method, every way to reach
// the nodes (plain, STLS toward the node, implicit TLS) and every client
// transport (plain, STLS, implicit TLS); then STAT and RETR of a message
// delivered by LMTP match what the node itself answers, byte for byte.
func TestLoginRelay(t *testing.T) {
	l := getLab(t)
	e := newEnv(t, envOpts{}).withLab(l)
	users := map[string]string{"alice": "plain", "spacey": "plain", "bob": "stls", "carol": "implicit"}
	type want struct{ stat, retr string }
	expect := map[string]want{}
	for u, island := range users {
		e.dir.set(u, island)
		node := l.nodes[e.home(u)]
		deliver(t, node, u, "relay test for "+u,
			"plain line", ".a line that starts with a dot", "..two dots", "tab\there, trailing space ",
			"8-bit: caf\xc3\xa9", strings.Repeat("long ", 300), ".")
		stat, retr := direct(t, node, u, labUsers[u])
		if !strings.Contains(retr, "\r\n..a line that starts with a dot\r\n") {
			t.Fatalf("the node did not dot-stuff: %q", retr)
		}
		expect[u] = want{stat, retr}
	}
	for _, tc := range []struct {
		user      string
		transport string // plain, stls, implicit
		method    loginMethod
	}{
		{"alice", "plain", userPass},
		{"alice", "plain", userPassLC},
		{"alice", "plain", authIR},
		{"alice", "plain", authCont},
		{"spacey", "plain", userPass},
		{"spacey", "plain", authIR},
		{"spacey", "stls", authCont},
		{"bob", "stls", userPass},
		{"bob", "implicit", authIR},
		{"carol", "implicit", userPass},
		{"carol", "plain", authCont},
	} {
		t.Run(fmt.Sprintf("%s/%s/%s-via-%s", tc.user, tc.method, tc.transport, users[tc.user]), func(t *testing.T) {
			var c *client
			switch tc.transport {
			case "plain":
				c, _ = dial(t, e.addr, nil, none)
			case "stls":
				c, _ = dial(t, e.addr, nil, none)
				c.ok("STLS")
				c.starttls(e.client)
			case "implicit":
				c, _ = dial(t, e.tlsAddr, e.client, none)
			}
			if l := c.login(tc.method, tc.user, labUsers[tc.user]); l != "+OK Logged in." {
				t.Fatalf("login: %q", l)
			}
			if got := c.ok("STAT"); got != expect[tc.user].stat {
				t.Fatalf("STAT %q, the node says %q", got, expect[tc.user].stat)
			}
			got := c.ok("RETR 1") + "\r\n" + c.multi()
			if got != expect[tc.user].retr {
				t.Fatalf("RETR 1 differs from the node's own answer:\n got %q\nwant %q", got, expect[tc.user].retr)
			}
			if l := c.cmd("QUIT"); l != "+OK Logging out." {
				t.Fatalf("QUIT: %q", l)
			}
			c.expectEOF(2 * time.Second)
			e.obs.waitResults(t, "pop3:ok")
		})
	}
}

// TestPoplib (2): Python's poplib — user/pass_, AUTH PLAIN as a raw
// command, stls() — against the proxy.
func TestPoplib(t *testing.T) {
	py, err := peer.Binary("python3")
	if err != nil {
		t.Fatal(err)
	}
	l := getLab(t)
	e := newEnv(t, envOpts{}).withLab(l)
	for _, u := range []string{"dave", "spacey"} {
		e.dir.set(u, "stls")
	}
	deliver(t, l.nodes[e.home("dave")], "dave", "poplib subject")
	deliver(t, l.nodes[e.home("spacey")], "spacey", "poplib subject")
	const script = `
import base64, poplib, ssl, sys
host, port, cafile, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]

def check(p, how):
    n, size = p.stat()
    resp, lines, octets = p.retr(n)
    assert b"Subject: poplib subject" in lines, lines
    print(how, "ok")
    p.quit()

p = poplib.POP3(host, port, timeout=10)
caps = p.capa()
assert "STLS" in caps and "PLAIN" in caps["SASL"], caps
p.user(user)
p.pass_(pw)
check(p, "userpass")

p = poplib.POP3(host, port, timeout=10)
ir = base64.b64encode(b"\0" + user.encode() + b"\0" + pw.encode()).decode()
resp = p._shortcmd("AUTH PLAIN " + ir)
assert resp.startswith(b"+OK"), resp
check(p, "authplain")

p = poplib.POP3(host, port, timeout=10)
p._putcmd("AUTH PLAIN")
resp = p._getline()[0]
assert resp.startswith(b"+"), resp
resp = p._shortcmd(ir)
check(p, "authcont")

p = poplib.POP3(host, port, timeout=10)
p.stls(ssl.create_default_context(cafile=cafile))
assert "STLS" not in p.capa()
p.user(user)
p.pass_(pw)
check(p, "stls")

p = poplib.POP3(host, port, timeout=10)
p.user(user)
try:
    p.pass_(pw + "-wrong")
    raise SystemExit("wrong password accepted")
except poplib.error_proto as err:
    print("wrong", err)
p.quit()
`
	host, port, _ := net.SplitHostPort(e.addr)
	for _, u := range []string{"dave", "spacey"} {
		t.Run(u, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, py, "-c", script, host, port, e.caFile, u, labUsers[u]).CombinedOutput()
			if err != nil {
				t.Fatalf("poplib: %v\n%s", err, out)
			}
			for _, want := range []string{"userpass ok", "authplain ok", "authcont ok", "stls ok", "wrong b'-ERR [AUTH] Authentication failed.'"} {
				if !strings.Contains(string(out), want) {
					t.Fatalf("poplib output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// TestCurl (3): curl lists and fetches messages over pop3:// (SASL PLAIN
// with a continuation; with --sasl-ir an initial response), pop3s://
// (implicit TLS) and pop3:// --ssl-reqd (STLS); the message equals what
// curl fetches from the node directly.
func TestCurl(t *testing.T) {
	curl, err := peer.Binary("curl")
	if err != nil {
		t.Fatal(err)
	}
	l := getLab(t)
	e := newEnv(t, envOpts{}).withLab(l)
	e.dir.set("erin", "plain")
	home := l.nodes[e.home("erin")]
	deliver(t, home, "erin", "curl one")
	deliver(t, home, "erin", "curl two", ".dot line")
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		args = append([]string{"-sS", "--max-time", "20", "-u", "erin:" + labUsers["erin"]}, args...)
		out, err := exec.CommandContext(ctx, curl, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("curl %q: %v\n%s", args, err, out)
		}
		return string(out)
	}
	nodeURL := "pop3://" + home.Addr(netip.MustParseAddr("127.0.0.1"), home.Ports.POP3)
	// The mailbox holds the two messages, after any an earlier run of
	// this test (-count) left: the last one is "curl two".
	wantList := run(nodeURL + "/")
	last := "/" + strconv.Itoa(strings.Count(wantList, "\n"))
	wantMsg := run(nodeURL + last)
	if !regexp.MustCompile(`^1 \d+\r\n2 \d+\r\n(\d+ \d+\r\n)*$`).MatchString(wantList) || !strings.Contains(wantMsg, "\r\n.dot line\r\n") {
		t.Fatalf("from the node: list %q, message %q", wantList, wantMsg)
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"pop3", []string{"pop3://" + e.addr}},
		{"pop3-sasl-ir", []string{"--sasl-ir", "pop3://" + e.addr}},
		{"pop3s", []string{"--cacert", e.caFile, "pop3s://" + e.tlsAddr}},
		{"pop3-ssl-reqd", []string{"--ssl-reqd", "--cacert", e.caFile, "pop3://" + e.addr}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := tc.args[len(tc.args)-1]
			args := slices.Clone(tc.args[:len(tc.args)-1])
			if got := run(append(args, url+"/")...); got != wantList {
				t.Fatalf("list %q, the node lists %q", got, wantList)
			}
			if got := run(append(args, url+last)...); got != wantMsg {
				t.Fatalf("message %q, the node has %q", got, wantMsg)
			}
		})
	}
}

// TestSTLSInjection (4): commands sent in plain text after STLS, before
// the handshake, are discarded, never executed after it.
func TestSTLSInjection(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.dir.set("x", "plain")
	c, _ := dial(t, e.addr, nil, none)
	c.write("STLS\r\nUSER x\r\n")
	if l := c.line(); l != msgBeginTLS {
		t.Fatalf("STLS: %q", l)
	}
	c.starttls(e.client)
	c.expectSilence(300 * time.Millisecond) // USER x was not answered
	if l := c.cmd("PASS y"); l != msgUserFirst {
		t.Fatalf("PASS after the injected USER: %q (USER was executed)", l)
	}
	if got := e.obs.results(); len(got) != 0 {
		t.Fatalf("login attempted: %q", got)
	}

	// Bytes that reach the proxy after it read the STLS line end up in the
	// handshake: it fails and nothing runs.
	c2, _ := dial(t, e.addr, nil, none)
	c2.write("STLS\r\n")
	if l := c2.line(); l != msgBeginTLS {
		t.Fatalf("STLS: %q", l)
	}
	c2.write("USER x\r\nPASS y\r\n")
	tc := tls.Client(c2.raw, e.client)
	tc.SetDeadline(time.Now().Add(2 * time.Second))
	if err := tc.Handshake(); err == nil {
		t.Fatal("handshake after injected plaintext succeeded")
	}
	if got := e.obs.results(); len(got) != 0 {
		t.Fatalf("login attempted: %q", got)
	}
}

// marker returns the subject of message 1 (the node's marker).
func (c *client) marker() string {
	c.t.Helper()
	c.ok("TOP 1 0")
	for _, l := range strings.Split(c.multi(), "\r\n") {
		if s, ok := strings.CutPrefix(l, "Subject: "); ok {
			return s
		}
	}
	c.t.Fatal("no Subject in message 1")
	return ""
}

// TestRouting (5): one user keeps landing on one node; an unhealthy node
// is left out; a node that refuses, does not greet with +OK or hangs up
// before the credentials is skipped for the next one.
func TestRouting(t *testing.T) {
	l := getLab(t)
	e := newEnv(t, envOpts{}).withLab(l)
	const user = "frank"
	e.dir.set(user, "plain")
	for _, n := range []string{"node-a", "node-b"} {
		deliver(t, l.nodes[n], user, "marker "+n)
	}
	loginMarker := func() string {
		t.Helper()
		c, _ := dial(t, e.addr, nil, none)
		if l := c.login(authIR, user, labUsers[user]); l != "+OK Logged in." {
			t.Fatalf("login: %q", l)
		}
		m := c.marker()
		c.ok("QUIT")
		return m
	}
	home := e.home(user)
	other := map[string]string{"node-a": "node-b", "node-b": "node-a"}[home]
	for i := range 10 {
		if m := loginMarker(); m != "marker "+home {
			t.Fatalf("login %d landed on %q, want %s", i, m, home)
		}
	}
	e.nodes.setHealthy("plain", home, false)
	if m := loginMarker(); m != "marker "+other {
		t.Fatalf("with %s unhealthy: %q", home, m)
	}
	e.nodes.setHealthy("plain", home, true)

	// A dead port, a node greeting -ERR, one hanging up before the
	// greeting and one hanging up after CAPA: each placed first in the
	// island (a name the rendezvous hash ranks first for the user).
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().(*net.TCPAddr).AddrPort()
	dead.Close()
	for _, tc := range []struct {
		name string
		addr netip.AddrPort
	}{
		{"refused", deadAddr},
		{"greets-err", newFakeNode(t, func(c net.Conn, r *bufio.Reader, f *fakeNode) {
			io.WriteString(c, "-ERR [SYS/TEMP] go away\r\n")
		}).addr()},
		{"hangs-up", newFakeNode(t, func(c net.Conn, r *bufio.Reader, f *fakeNode) {}).addr()},
		{"hangs-up-after-capa", newFakeNode(t, func(c net.Conn, r *bufio.Reader, f *fakeNode) {
			io.WriteString(c, "+OK hi\r\n")
			f.read(r)
		}).addr()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := firstFor(t, e, user, func(name string) []proxy.NodeInfo {
				return []proxy.NodeInfo{
					{Name: "node-a", Addr: l.addr("node-a"), Healthy: true},
					{Name: "node-b", Addr: l.addr("node-b"), Healthy: true},
					{Name: name, Addr: tc.addr, Healthy: true},
				}
			})
			r, _ := e.core.Route(context.Background(), "pop3", user)
			if m := loginMarker(); m != "marker "+r.Nodes[1].Name {
				t.Fatalf("with %s first: landed on %q, want %s", name, m, r.Nodes[1].Name)
			}
			e.obs.waitResults(t, "pop3:ok")
		})
	}
}

// firstFor sets island "plain" to nodes(name) with a name for the extra
// node that the core ranks first for user, and returns that name.
func firstFor(t *testing.T, e *env, user string, nodes func(name string) []proxy.NodeInfo) string {
	t.Helper()
	settings, _ := e.nodes.Island("plain")
	for i := range 1000 {
		name := fmt.Sprintf("extra-%d", i)
		e.nodes.setIsland("plain", settings, nodes(name)...)
		if e.home(user) == name {
			return name
		}
	}
	t.Fatal("no name ranks first")
	return ""
}

// TestDirectoryErrors (6): what the client hears when the directory or
// the island cannot serve the login, and that a wrong password is the
// node's own answer.
func TestDirectoryErrors(t *testing.T) {
	l := getLab(t)

	t.Run("unknown-user-throttled", func(t *testing.T) {
		e := newEnv(t, envOpts{throttle: proxy.ThrottleSettings{Threshold: 1, BaseDelay: 300 * time.Millisecond}, limits: proxy.Limits{MaxLoginTries: 10}}).withLab(l)
		c, _ := dial(t, e.addr, nil, none)
		var took []time.Duration
		for range 3 {
			start := time.Now()
			if got := c.login(userPass, "nobody", "whatever"); got != msgAuthFailed {
				t.Fatalf("unknown user: %q", got)
			}
			took = append(took, time.Since(start))
		}
		// "No such user" is padded by 100–300ms (proxy.Core hides who
		// exists), so "fast" allows that.
		if took[0] > 450*time.Millisecond || took[1] < 300*time.Millisecond || took[2] < 600*time.Millisecond {
			t.Fatalf("answer times %v: want fast (≤ the 300ms pad), then ≥300ms, then ≥600ms", took)
		}
		e.obs.waitResults(t, "pop3:unknown_user", "pop3:unknown_user", "pop3:unknown_user")
		if n := e.obs.throttledCount(); n != 2 {
			t.Fatalf("throttled %d times, want 2", n)
		}
		// A name the core refuses is answered the same way.
		if got := c.login(authIR, "bad\x01name", "x"); got != msgAuthFailed {
			t.Fatalf("bad name: %q", got)
		}
		e.obs.waitResults(t, "pop3:bad_name")
	})

	t.Run("wrong-password-is-the-nodes-answer", func(t *testing.T) {
		e := newEnv(t, envOpts{}).withLab(l)
		e.dir.set("grace", "plain")
		for _, m := range []loginMethod{userPass, authIR} {
			c, _ := dial(t, e.addr, nil, none)
			// Dovecot's own line ("failed", not "unknown_user": the node
			// answered it).
			if got := c.login(m, "grace", "wrong"); got != "-ERR [AUTH] Authentication failed." {
				t.Fatalf("%s: %q", m, got)
			}
			e.obs.waitResults(t, "pop3:failed")
			// Back to the pre-login loop: log in properly.
			if got := c.login(m, "grace", labUsers["grace"]); got != "+OK Logged in." {
				t.Fatalf("%s after a failure: %q", m, got)
			}
			c.ok("QUIT")
		}
	})

	for _, tc := range []struct {
		name    string
		setup   func(e *env)
		want    string
		results string
	}{
		{"unavailable", func(e *env) { e.dir.setErr(fmt.Errorf("%w: every server down", directory.ErrUnavailable)) }, msgUnavailable, "pop3:unavailable"},
		{"no-healthy-node", func(e *env) {
			e.nodes.setHealthy("plain", "node-a", false)
			e.nodes.setHealthy("plain", "node-b", false)
		}, msgNoNode, "pop3:no_node"},
		{"island-not-configured", func(e *env) { e.dir.set("heidi", "atlantis") }, msgNoNode, "pop3:no_node"},
		{"every-node-unreachable", func(e *env) {
			e.nodes.setIsland("plain", proxy.IslandSettings{}, proxy.NodeInfo{Name: "gone", Addr: netip.MustParseAddrPort("127.0.0.1:1"), Healthy: true})
		}, msgNodeFailed, "pop3:error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{}).withLab(l)
			e.dir.set("heidi", "plain")
			tc.setup(e)
			for _, m := range []loginMethod{userPass, authCont} {
				c, _ := dial(t, e.addr, nil, none)
				start := time.Now()
				if got := c.login(m, "heidi", labUsers["heidi"]); got != tc.want {
					t.Fatalf("%s: %q, want %q", m, got, tc.want)
				}
				c.expectEOF(5 * time.Second)
				if d := time.Since(start); d > 5*time.Second {
					t.Fatalf("closed after %v", d)
				}
				e.obs.waitResults(t, tc.results)
			}
		})
	}
}

// TestThrottle (7): failed logins from 127.0.0.1 get slower past the
// threshold; another address is not delayed. With Dovecot's wrong-password
// answers (Dovecot itself answers a failure at its next 500 ms tick, so
// only the growth is measured) and with unknown users (no node involved:
// exact timing).
func TestThrottle(t *testing.T) {
	l := getLab(t)
	settings := proxy.ThrottleSettings{Threshold: 3, BaseDelay: 300 * time.Millisecond, MaxDelay: 5 * time.Second}
	fail := func(t *testing.T, c *client, user, want string) time.Duration {
		t.Helper()
		start := time.Now()
		if got := c.login(userPass, user, "wrong"); got != want {
			t.Fatalf("wrong password: %q", got)
		}
		return time.Since(start)
	}

	t.Run("dovecot-wrong-password", func(t *testing.T) {
		e := newEnv(t, envOpts{throttle: settings, limits: proxy.Limits{MaxLoginTries: 20}}).withLab(l)
		e.dir.set("ivan", "plain")
		const nodeSays = "-ERR [AUTH] Authentication failed."
		c, _ := dial(t, e.addr, nil, netip.MustParseAddr("127.0.0.1"))
		var took []time.Duration
		for range 6 {
			took = append(took, fail(t, c, "ivan", nodeSays))
		}
		t.Logf("127.0.0.1: %v", took)
		for i, min := range []time.Duration{0, 0, 0, 300 * time.Millisecond, 600 * time.Millisecond, 1200 * time.Millisecond} {
			if took[i] < min {
				t.Fatalf("failure %d answered after %v, want ≥ %v (%v)", i+1, took[i], min, took)
			}
		}
		if n := e.obs.throttledCount(); n != 3 {
			t.Fatalf("%d answers throttled, want 3 (failures 4 to 6)", n)
		}
		c2, _ := dial(t, e.addr, nil, netip.MustParseAddr("127.0.0.2"))
		if d := fail(t, c2, "ivan", nodeSays); d >= 600*time.Millisecond {
			t.Fatalf("127.0.0.2 delayed (%v) by 127.0.0.1's failures", d)
		}
		if n := e.obs.throttledCount(); n != 3 {
			t.Fatalf("127.0.0.2's failure was throttled")
		}
		// A correct login from the throttled address is not delayed: only
		// failures are.
		if got := c.login(userPass, "ivan", labUsers["ivan"]); got != "+OK Logged in." {
			t.Fatalf("login: %q", got)
		}
		if n := e.obs.throttledCount(); n != 3 {
			t.Fatalf("the successful login was throttled")
		}
	})

	t.Run("unknown-user", func(t *testing.T) {
		e := newEnv(t, envOpts{throttle: settings, limits: proxy.Limits{MaxLoginTries: 20}})
		c, _ := dial(t, e.addr, nil, netip.MustParseAddr("127.0.0.1"))
		var took []time.Duration
		for range 5 {
			took = append(took, fail(t, c, "nobody", msgAuthFailed))
		}
		t.Logf("127.0.0.1: %v", took)
		// Each answer also carries the 100–300ms "no such user" pad.
		for i, want := range []time.Duration{0, 0, 0, 300 * time.Millisecond, 600 * time.Millisecond} {
			if took[i] < want+100*time.Millisecond {
				t.Fatalf("failure %d answered after %v, want %v (+100ms pad or more) (%v)", i+1, took[i], want, took)
			}
		}
		c2, _ := dial(t, e.addr, nil, netip.MustParseAddr("127.0.0.2"))
		before := e.obs.throttledCount()
		fail(t, c2, "nobody", msgAuthFailed)
		if n := e.obs.throttledCount(); n != before {
			t.Fatalf("127.0.0.2's failure was throttled by 127.0.0.1's")
		}
	})
}

// TestPipelining (8): commands sent with the login in one write reach
// the node after it.
func TestPipelining(t *testing.T) {
	l := getLab(t)
	e := newEnv(t, envOpts{}).withLab(l)
	e.dir.set("judy", "stls")
	deliver(t, l.nodes[e.home("judy")], "judy", "pipelined")
	stat, _ := direct(t, l.nodes[e.home("judy")], "judy", labUsers["judy"])
	for _, tc := range []struct {
		name, login string
		answers     []string
	}{
		{"user-pass", "USER judy\r\nPASS " + labUsers["judy"] + "\r\n", []string{"+OK", "+OK Logged in."}},
		{"auth-plain", "AUTH PLAIN " + plainIR("judy", labUsers["judy"]) + "\r\n", []string{"+OK Logged in."}},
		{"capa-and-auth-continuation", "CAPA\r\nAUTH PLAIN\r\n" + plainIR("judy", labUsers["judy"]) + "\r\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := dial(t, e.addr, nil, none)
			c.write(tc.login + "STAT\r\nLIST\r\nQUIT\r\n")
			if tc.answers == nil {
				c.line()
				capaLines(c)
				tc.answers = []string{"+ ", "+OK Logged in."}
			}
			for _, want := range tc.answers {
				if l := c.line(); l != want {
					t.Fatalf("got %q, want %q", l, want)
				}
			}
			if l := c.line(); l != stat {
				t.Fatalf("STAT answered %q, the node says %q", l, stat)
			}
			c.line()
			if body := c.multi(); !strings.HasPrefix(body, "1 ") {
				t.Fatalf("LIST: %q", body)
			}
			if l := c.line(); l != "+OK Logging out." {
				t.Fatalf("QUIT: %q", l)
			}
			c.expectEOF(2 * time.Second)
		})
	}
}

// TestLimits (9): long lines, invalid commands, idleness and failed
// logins end the session with their own answer.
func TestLimits(t *testing.T) {
	l := getLab(t)
	for _, tc := range []struct {
		name   string
		limits proxy.Limits
		run    func(t *testing.T, c *client)
	}{
		{"line-too-long", proxy.Limits{MaxLine: 64}, func(t *testing.T, c *client) {
			if l := c.cmd("USER " + strings.Repeat("x", 59)); l != "+OK" { // exactly 64
				t.Fatalf("a line of MaxLine: %q", l)
			}
			if l := c.cmd("USER " + strings.Repeat("x", 60)); l != msgLineTooLong {
				t.Fatalf("MaxLine+1: %q", l)
			}
		}},
		{"line-far-too-long", proxy.Limits{MaxLine: 64}, func(t *testing.T, c *client) {
			c.write("PASS " + strings.Repeat("x", 200<<10)) // no CRLF: never ends
			if l := c.line(); l != msgLineTooLong {
				t.Fatalf("got %q", l)
			}
		}},
		{"bad-commands", proxy.Limits{MaxBadCommands: 3}, func(t *testing.T, c *client) {
			for _, cmd := range []string{"FOO", "PASS without user"} {
				if l := c.cmd(cmd); !strings.HasPrefix(l, "-ERR ") || l == msgTooManyBad {
					t.Fatalf("%s: %q", cmd, l)
				}
			}
			c.ok("CAPA") // valid commands do not count
			capaLines(c)
			if l := c.cmd("BAR"); l != msgTooManyBad {
				t.Fatalf("third bad command: %q", l)
			}
		}},
		{"idle", proxy.Limits{PreLoginTimeout: 200 * time.Millisecond}, func(t *testing.T, c *client) {
			start := time.Now()
			c.ok("USER alice") // activity resets the timer
			time.Sleep(120 * time.Millisecond)
			c.ok("CAPA")
			capaLines(c)
			if l := c.line(); l != msgInactivity {
				t.Fatalf("got %q", l)
			}
			if d := time.Since(start); d < 320*time.Millisecond || d > 2*time.Second {
				t.Fatalf("disconnected after %v", d)
			}
		}},
		{"idle-in-auth-continuation", proxy.Limits{PreLoginTimeout: 200 * time.Millisecond}, func(t *testing.T, c *client) {
			if l := c.cmd("AUTH PLAIN"); l != "+ " {
				t.Fatalf("AUTH PLAIN: %q", l)
			}
			if l := c.line(); l != msgInactivity {
				t.Fatalf("got %q", l)
			}
		}},
		{"login-tries", proxy.Limits{MaxLoginTries: 2}, func(t *testing.T, c *client) {
			if l := c.login(userPass, "alice", "wrong"); l != "-ERR [AUTH] Authentication failed." {
				t.Fatalf("first failure: %q", l)
			}
			if l := c.login(authIR, "nobody", "wrong"); l != msgAuthFailed {
				t.Fatalf("second failure: %q", l)
			}
			if l := c.line(); l != msgTooManyFails {
				t.Fatalf("after the second failure: %q", l)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{limits: tc.limits}).withLab(l)
			e.dir.set("alice", "plain")
			c, _ := dial(t, e.addr, nil, none)
			tc.run(t, c)
			c.expectEOF(2 * time.Second)
		})
	}
}

// TestProxyV2ToDovecot: on an island that passes the client's address by
// PROXY v2, Dovecot logs the client's address (127.0.0.2), not the
// proxy's (127.0.0.1), as the login's remote IP; STLS toward the node
// follows the header.
func TestProxyV2ToDovecot(t *testing.T) {
	l := getLab(t)
	e := newEnv(t, envOpts{}).withLab(l)
	const user = "alice"
	e.dir.set(user, "haproxy")
	node := l.nodes[e.home(user)]
	before := len(node.Log())
	c, _ := dial(t, e.addr, nil, netip.MustParseAddr("127.0.0.2"))
	if got := c.login(authIR, user, labUsers[user]); got != "+OK Logged in." {
		t.Fatalf("login: %q", got)
	}
	c.ok("STAT")
	c.ok("QUIT")
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, line := range strings.Split(node.Log()[before:], "\n") {
			if strings.Contains(line, "pop3-login") && strings.Contains(line, "Login: user=<"+user+">") {
				if !strings.Contains(line, "rip=127.0.0.2,") || !strings.Contains(line, "TLS") {
					t.Fatalf("Dovecot's login line lacks the client's address or TLS: %q", line)
				}
				t.Logf("Dovecot: %s", line)
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no login of %s in Dovecot's log", user)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFakeNodes: behaviours Dovecot does not show — a node without SASL
// (USER/PASS toward it, password with spaces intact), the PROXY v2 header,
// a node hanging up after the credentials (no second node is tried), a
// node refusing STLS.
func TestFakeNodes(t *testing.T) {
	pw := labUsers["spacey"]

	t.Run("user-pass-fallback-and-proxy-v2", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		f := newFakeNode(t, func(c net.Conn, r *bufio.Reader, f *fakeNode) {
			if !f.readProxyV2(r) {
				io.WriteString(c, "-ERR no PROXY header\r\n")
				return
			}
			serveFakePOP3(false, pw)(c, r, f)
		})
		e.nodes.setIsland("fake", proxy.IslandSettings{ClientAddr: proxy.ClientAddrProxy}, proxy.NodeInfo{Name: "fake", Addr: f.addr(), Healthy: true})
		e.dir.set("u@example.org", "fake")
		c, _ := dial(t, e.addr, nil, netip.MustParseAddr("127.0.0.2"))
		if l := c.login(authCont, "u@example.org", pw); l != "+OK fake logged in" {
			t.Fatalf("login: %q", l)
		}
		if l := c.cmd("STAT"); l != "+OK 0 0" {
			t.Fatalf("STAT: %q", l)
		}
		c.ok("QUIT")
		c.expectEOF(2 * time.Second)
		want := []string{"CAPA", "USER u@example.org", "PASS " + pw, "STAT", "QUIT"}
		if got := f.lines(); !slices.Equal(got, want) {
			t.Fatalf("node saw %q, want %q", got, want)
		}
		local := c.raw.LocalAddr().(*net.TCPAddr).AddrPort()
		if got := f.proxyHeaders(); len(got) != 1 || got[0] != netip.AddrPortFrom(local.Addr().Unmap(), local.Port()) {
			t.Fatalf("PROXY v2 source %v, want %v", got, local)
		}
	})

	t.Run("sasl-plain-to-node", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		f := newFakeNode(t, serveFakePOP3(true, pw))
		e.nodes.setIsland("fake", proxy.IslandSettings{ClientAddr: proxy.ClientAddrID}, proxy.NodeInfo{Name: "fake", Addr: f.addr(), Healthy: true})
		e.dir.set("u", "fake")
		c, _ := dial(t, e.addr, nil, none)
		if l := c.login(userPass, "u", pw); l != "+OK fake logged in" {
			t.Fatalf("login: %q", l)
		}
		c.ok("QUIT")
		want := []string{"CAPA", "AUTH PLAIN " + encodePlain("", "u", pw), "QUIT"}
		if got := f.lines(); !slices.Equal(got, want) {
			t.Fatalf("node saw %q, want %q", got, want)
		}
	})

	t.Run("node-fails-after-credentials", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		hangup := newFakeNode(t, func(c net.Conn, r *bufio.Reader, f *fakeNode) {
			io.WriteString(c, "+OK hi\r\n")
			f.read(r)
			io.WriteString(c, "+OK\r\nSASL PLAIN\r\n.\r\n")
			f.read(r) // AUTH: hang up
		})
		second := newFakeNode(t, serveFakePOP3(true, pw))
		e.dir.set("u", "fake")
		firstFor2(t, e, "u", proxy.NodeTLSNone, hangup.addr(), second.addr())
		c, _ := dial(t, e.addr, nil, none)
		if l := c.login(authIR, "u", pw); l != msgNodeFailed {
			t.Fatalf("login: %q", l)
		}
		c.expectEOF(time.Second)
		if got := second.lines(); len(got) != 0 {
			t.Fatalf("the second node was tried after the credentials went to the first: %q", got)
		}
		e.obs.waitResults(t, "pop3:error")
	})

	t.Run("node-in-use-not-throttled", func(t *testing.T) {
		e := newEnv(t, envOpts{throttle: proxy.ThrottleSettings{Threshold: 1, BaseDelay: time.Second}})
		f := newFakeNode(t, func(c net.Conn, r *bufio.Reader, f *fakeNode) {
			io.WriteString(c, "+OK hi\r\n")
			f.read(r)
			io.WriteString(c, "+OK\r\nSASL PLAIN\r\n.\r\n")
			f.read(r)
			io.WriteString(c, "-ERR [IN-USE] Mailbox locked by another session.\r\n")
		})
		e.nodes.setIsland("fake", proxy.IslandSettings{}, proxy.NodeInfo{Name: "fake", Addr: f.addr(), Healthy: true})
		e.dir.set("u", "fake")
		c, _ := dial(t, e.addr, nil, none)
		for range 2 {
			start := time.Now()
			if l := c.login(authIR, "u", pw); l != "-ERR [IN-USE] Mailbox locked by another session." {
				t.Fatalf("login: %q", l)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("[IN-USE] delayed %v", d)
			}
		}
		e.obs.waitResults(t, "pop3:failed", "pop3:failed")
	})

	t.Run("node-refuses-stls", func(t *testing.T) {
		e := newEnv(t, envOpts{})
		refuse := newFakeNode(t, serveFakePOP3(true, pw)) // STLS → "-ERR what"
		second := newFakeNode(t, serveFakePOP3(true, pw))
		e.dir.set("u", "fake")
		firstFor2(t, e, "u", proxy.NodeTLSStartTLS, refuse.addr(), second.addr())
		// Each node refuses STLS before any credential went out: both are
		// tried, then the login fails as a whole.
		c, _ := dial(t, e.addr, nil, none)
		if l := c.login(authIR, "u", pw); l != msgNodeFailed {
			t.Fatalf("login: %q", l)
		}
		for _, f := range []*fakeNode{refuse, second} {
			if got := f.lines(); !slices.Equal(got, []string{"STLS"}) {
				t.Fatalf("node saw %q, want only STLS", got)
			}
		}
		e.obs.waitResults(t, "pop3:error")
	})
}

// firstFor2 makes island "fake" of a node at first and one at second,
// named so that the core ranks the one at first first for user.
func firstFor2(t *testing.T, e *env, user, nodeTLS string, first, second netip.AddrPort) {
	t.Helper()
	for i := range 1000 {
		a := fmt.Sprintf("first-%d", i)
		e.nodes.setIsland("fake", proxy.IslandSettings{NodeTLS: nodeTLS}, proxy.NodeInfo{Name: a, Addr: first, Healthy: true}, proxy.NodeInfo{Name: "second", Addr: second, Healthy: true})
		if e.home(user) == a {
			return
		}
	}
	t.Fatal("no name ranks first")
}

// TestServerStopCutsSessions: stopping the server ends a session waiting
// for the client, one waiting in an AUTH continuation and one relaying.
func TestServerStopCutsSessions(t *testing.T) {
	e := newEnv(t, envOpts{})
	f := newFakeNode(t, serveFakePOP3(true, "pw"))
	e.nodes.setIsland("fake", proxy.IslandSettings{}, proxy.NodeInfo{Name: "fake", Addr: f.addr(), Healthy: true})
	e.dir.set("u", "fake")
	idle, _ := dial(t, e.addr, nil, none)
	cont, _ := dial(t, e.addr, nil, none)
	if l := cont.cmd("AUTH PLAIN"); l != "+ " {
		t.Fatalf("AUTH PLAIN: %q", l)
	}
	relaying, _ := dial(t, e.tlsAddr, e.client, none)
	if l := relaying.login(authIR, "u", "pw"); l != "+OK fake logged in" {
		t.Fatalf("login: %q", l)
	}
	if l := relaying.cmd("STAT"); l != "+OK 0 0" {
		t.Fatalf("STAT: %q", l)
	}
	start := time.Now()
	e.stop()
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Serve returned after %v", d)
	}
	for _, c := range []*client{idle, cont, relaying} {
		c.expectEOF(time.Second)
	}
}
