package imap

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab/peer"
	"github.com/atoll-lb/atoll/userspace/directory"
	"github.com/atoll-lb/atoll/userspace/proxy"
)

// Everything the proxy answers itself before login, without any node.
func TestPreLoginCommands(t *testing.T) {
	t.Parallel()
	e := newEnv(t, proxy.Options{}, false)
	c := dialIMAP(t, e.addr, netip.Addr{})
	if g, want := c.line(), "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID STARTTLS AUTH=PLAIN] proxy.test atoll ready."; g != want {
		t.Fatalf("greeting %q, want %q", g, want)
	}
	steps := []struct{ send, want string }{
		{"a CAPABILITY", "* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID STARTTLS AUTH=PLAIN\r\n|a OK Capability completed."},
		{"b capability", "* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID STARTTLS AUTH=PLAIN\r\n|b OK Capability completed."},
		{"c NOOP", "c OK NOOP completed."},
		{`d ID ("name" "Thunderbird" "version" NIL)`, "* ID (\"name\" \"atoll\")\r\n|d OK ID completed."},
		{"e ID NIL", "* ID (\"name\" \"atoll\")\r\n|e OK ID completed."},
		{"f ID (name thunderbird)", "f BAD Expected a string."},
		{"g SELECT INBOX", "g BAD Unknown command, or not allowed before login."},
		{"h ENABLE IMAP4rev2", "h BAD Unknown command, or not allowed before login."},
		{"i AUTHENTICATE LOGIN", "i NO [CANNOT] Unsupported authentication mechanism"},
		{"j AUTHENTICATE PLAIN !!!", "j BAD Invalid initial response."},
		{"k AUTHENTICATE PLAIN =", "k BAD Invalid PLAIN authentication data."},
		{"l AUTHENTICATE PLAIN dGVzdA==", "l BAD Invalid PLAIN authentication data."},
		{"m NOOP", "m OK NOOP completed."},
	}
	for _, s := range steps {
		c.write(s.send + "\r\n")
		var got []string
		for range strings.Count(s.want, "|") + 1 {
			got = append(got, c.resp())
		}
		if g := strings.TrimSuffix(strings.Join(got, "|"), "\r\n"); g != s.want {
			t.Errorf("%s: got %q, want %q", s.send, g, s.want)
		}
	}
	// AUTHENTICATE without an initial response: "+ ", then "*" cancels.
	c.write("n AUTHENTICATE PLAIN\r\n")
	if l := c.line(); l != "+ " {
		t.Fatalf("continuation %q", l)
	}
	c.write("*\r\n")
	if l := c.line(); l != "n BAD AUTHENTICATE cancelled" {
		t.Fatalf("cancel: %q", l)
	}
	c.write("o AUTHENTICATE PLAIN\r\n")
	c.line()
	c.write("not base64\r\n")
	if l := c.line(); l != "o BAD Invalid PLAIN authentication data." {
		t.Fatalf("bad base64: %q", l)
	}
	c.write("* garbage\r\n")
	if l := c.line(); l != "* BAD Invalid tag." {
		t.Fatalf("untagged garbage: %q", l)
	}
	if out := c.cmd("z", "LOGOUT"); !slices.Equal(out, []string{"* BYE Logging out.\r\n", "z OK Logout completed."}) {
		t.Fatalf("LOGOUT: %q", out)
	}
	c.closed(time.Second)
	if n := e.dir.lookups.Load(); n != 0 {
		t.Errorf("%d directory lookups", n)
	}

	// Without a certificate, no STARTTLS: not offered, and refused.
	e2 := newEnv(t, proxy.Options{}, true)
	c2 := dialIMAP(t, e2.addr, netip.Addr{})
	if g := c2.line(); strings.Contains(g, "STARTTLS") {
		t.Fatalf("greeting offers STARTTLS without a certificate: %q", g)
	}
	if l := last(c2.cmd("a", "STARTTLS")); l != "a BAD STARTTLS is not available." {
		t.Fatalf("STARTTLS: %q", l)
	}
}

// RequireTLS: LOGINDISABLED until STARTTLS, logins refused with
// PRIVACYREQUIRED and no password asked for; after STARTTLS the
// capabilities change and a second STARTTLS is BAD.
func TestRequireTLS(t *testing.T) {
	t.Parallel()
	e := newEnv(t, proxy.Options{RequireTLS: true}, false)
	f := startFakeNode(t, false)
	e.island("is", proxy.IslandSettings{}, nodeAt("f1", f.addr))
	e.dir.setDef("is")
	c := dialIMAP(t, e.addr, netip.Addr{})
	if g, want := c.line(), "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID STARTTLS LOGINDISABLED] proxy.test atoll ready."; g != want {
		t.Fatalf("greeting %q, want %q", g, want)
	}
	const refused = " NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections."
	if l := last(c.cmd("a", "LOGIN alice pw")); l != "a"+refused {
		t.Fatalf("LOGIN: %q", l)
	}
	if l := last(c.cmd("b", "AUTHENTICATE PLAIN "+plain("", "alice", "pw"))); l != "b"+refused {
		t.Fatalf("AUTHENTICATE: %q", l)
	}
	// A synchronizing literal is not asked for: the answer comes at once.
	c.write("c LOGIN {5}\r\n")
	if l := c.line(); l != "c"+refused {
		t.Fatalf("LOGIN with a literal: %q", l)
	}
	c.ok("d", "STARTTLS")
	c.startTLS(clientTLS(t))
	if l := c.cmd("e", "CAPABILITY")[0]; l != "* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN\r\n" {
		t.Fatalf("capabilities after TLS: %q", l)
	}
	if l := last(c.cmd("f", "STARTTLS")); l != "f BAD TLS is already active." {
		t.Fatalf("second STARTTLS: %q", l)
	}
	if l := last(c.cmd("g", "LOGIN alice pw")); l != "g OK [CAPABILITY IMAP4rev1 IDLE] Logged in" {
		t.Fatalf("LOGIN over TLS: %q", l)
	}
	if n := e.dir.lookups.Load(); n != 1 {
		t.Errorf("%d directory lookups, want 1 (only the login over TLS)", n)
	}
	// The implicit-TLS listener allows logins at once.
	tc, err := tls.Dial("tcp", e.tlsAddr, clientTLS(t))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	ic := &iconn{t: t, c: tc, r: newBufReader(tc)}
	if g := ic.line(); g != "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN] proxy.test atoll ready." {
		t.Fatalf("implicit TLS greeting %q", g)
	}
}

// Test 1: every login form reaches a real Dovecot, and the message
// delivered by LMTP comes back through the proxy byte for byte.
func TestLoginFormsDovecot(t *testing.T) {
	t.Parallel()
	d := sharedDovecot(t)
	e := newEnv(t, proxy.Options{}, false)
	e.dovecotIsland("dc", d, proxy.IslandSettings{})
	e.dir.setDef("dc")
	tests := []struct {
		name, user string
		login      func(c *iconn, pass string) string // returns the tagged answer
	}{
		{"atom", "alice", func(c *iconn, pass string) string { return last(c.cmd("a", "LOGIN alice "+pass)) }},
		{"quoted", "bob", func(c *iconn, pass string) string {
			return last(c.cmd("a", `LOGIN "bob" "`+strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(pass)+`"`))
		}},
		{"sync literal", "carol", func(c *iconn, pass string) string {
			c.write("a LOGIN carol {" + strconv.Itoa(len(pass)) + "}\r\n")
			if l := c.line(); l != "+ Ready for literal data" {
				c.t.Fatalf("continuation %q", l)
			}
			c.write(pass + "\r\n")
			return strings.TrimSpace(last(c.until("a")))
		}},
		{"non-sync literals", "dave", func(c *iconn, pass string) string {
			c.write("a LOGIN {4+}\r\ndave {" + strconv.Itoa(len(pass)) + "+}\r\n" + pass + "\r\n")
			return strings.TrimSpace(last(c.until("a")))
		}},
		{"AUTHENTICATE SASL-IR", "erin", func(c *iconn, pass string) string {
			return last(c.cmd("a", "AUTHENTICATE PLAIN "+plain("", "erin", pass)))
		}},
		{"AUTHENTICATE continuation", "frank", func(c *iconn, pass string) string {
			c.write("a AUTHENTICATE PLAIN\r\n")
			if l := c.line(); l != "+ " {
				c.t.Fatalf("continuation %q", l)
			}
			c.write(plain("", "frank", pass) + "\r\n")
			return strings.TrimSpace(last(c.until("a")))
		}},
		{"AUTHENTICATE with authzid", "gina", func(c *iconn, pass string) string {
			return last(c.cmd("a", "AUTHENTICATE PLAIN "+plain("gina", "gina", pass)))
		}},
		{"literal with quotes and backslash", "hank", func(c *iconn, pass string) string {
			c.write("a LOGIN hank {" + strconv.Itoa(len(pass)) + "+}\r\n" + pass + "\r\n")
			return strings.TrimSpace(last(c.until("a")))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pass := dovecotUsers[tt.user]
			subject := deliver(t, d, tt.user, tt.name)
			want := directFetch(t, imapAddr(d), tt.user, pass, "*")
			if !strings.Contains(want, subject) {
				t.Fatalf("direct fetch lacks %q: %q", subject, want)
			}
			c := e.client(t)
			ans := tt.login(c, pass)
			if !strings.HasPrefix(ans, "a OK [CAPABILITY IMAP4rev1 ") || !strings.HasSuffix(ans, "] Logged in") {
				t.Fatalf("login answer %q", ans)
			}
			if caps := strings.Join(e.core.IslandCaps("dc"), " "); !strings.Contains(ans, "[CAPABILITY "+caps+"]") {
				t.Errorf("login answer %q does not carry the island's capabilities %q", ans, caps)
			}
			c.ok("b", "SELECT INBOX")
			got := fetchResp(t, c.ok("c", "FETCH * BODY.PEEK[]"))
			if got != want {
				t.Errorf("through the proxy:\n%q\ndirect:\n%q", got, want)
			}
			c.ok("z", "LOGOUT")
			c.closed(2 * time.Second)
		})
	}
	if n := e.obs.login("ok"); n != len(tests) {
		t.Errorf("%d ok logins recorded, want %d", n, len(tests))
	}
}

// The node side variants against Dovecot: STARTTLS and implicit TLS
// toward the node, and the client's address by IMAP ID.
func TestNodeTLSAndID(t *testing.T) {
	t.Parallel()
	d := sharedDovecot(t)
	subject := deliver(t, d, "ivy", "node-tls")
	want := directFetch(t, imapAddr(d), "ivy", "ivy-pw", "*")
	for _, s := range []proxy.IslandSettings{
		{NodeTLS: proxy.NodeTLSStartTLS},
		{NodeTLS: proxy.NodeTLSImplicit},
		{ClientAddr: proxy.ClientAddrID},
		{NodeTLS: proxy.NodeTLSStartTLS, ClientAddr: proxy.ClientAddrID},
	} {
		t.Run(s.NodeTLS+"/"+s.ClientAddr, func(t *testing.T) {
			e := newEnv(t, proxy.Options{}, false)
			e.dovecotIsland("dc", d, s)
			e.dir.setDef("dc")
			c := e.client(t)
			if l := last(c.cmd("a", "LOGIN ivy ivy-pw")); !strings.HasPrefix(l, "a OK ") {
				t.Fatalf("login: %q", l)
			}
			c.ok("b", "EXAMINE INBOX")
			if got := fetchResp(t, c.ok("c", "FETCH * BODY.PEEK[]")); got != want || !strings.Contains(got, subject) {
				t.Errorf("through the proxy:\n%q\ndirect:\n%q", got, want)
			}
			c.ok("z", "LOGOUT")
		})
	}
}

// Test 4: commands pipelined behind STARTTLS in plaintext are dropped.
func TestSTARTTLSInjection(t *testing.T) {
	t.Parallel()
	e := newEnv(t, proxy.Options{}, false)
	e.dir.setDef("is")
	c := e.client(t)
	c.write("a STARTTLS\r\nb LOGIN user pass\r\n")
	if l := c.line(); l != "a OK Begin TLS negotiation now." {
		t.Fatalf("STARTTLS: %q", l)
	}
	c.startTLS(clientTLS(t))
	out := c.ok("c", "CAPABILITY")
	for _, l := range out {
		if strings.HasPrefix(l, "b ") {
			t.Fatalf("the injected command was run: %q", out)
		}
	}
	c.ok("d", "NOOP")
	c.silent(200 * time.Millisecond)
	if n := e.dir.lookups.Load(); n != 0 {
		t.Fatalf("the directory was asked %d times: the injected LOGIN ran", n)
	}
	if n := e.obs.login("unknown_user") + e.obs.login("failed"); n != 0 {
		t.Fatalf("%d login attempts recorded", n)
	}
}

// loggedInto logs user in and returns the subject of message 1, which
// names the node (one marker message per node).
func loggedInto(t *testing.T, e *env, user, pass string) string {
	t.Helper()
	c := e.client(t)
	c.ok("a", "LOGIN "+user+" "+pass)
	c.ok("b", "EXAMINE INBOX")
	out := c.ok("c", "FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
	c.ok("z", "LOGOUT")
	r := fetchResp(t, out)
	_, subj, _ := strings.Cut(r, "Subject: ")
	subj, _, _ = strings.Cut(subj, " ")
	return subj
}

// Test 5: two Dovecot nodes in one island. A user sticks to one node; when
// it stops answering (still marked healthy) the next one is tried; once
// marked unhealthy it is not even dialled.
func TestTwoNodes(t *testing.T) {
	t.Parallel()
	peer.Require(t, "dovecot")
	n1 := startDovecot(t, t.TempDir(), "node1")
	t.Cleanup(func() { n1.Stop() })
	n2 := startDovecot(t, t.TempDir(), "node2")
	t.Cleanup(func() { n2.Stop() })
	nodes := map[string]*peer.Dovecot{"node1": n1, "node2": n2}
	for name, d := range nodes {
		deliver(t, d, "zed", name)
	}
	e := newEnv(t, proxy.Options{}, false)
	e.island("two", proxy.IslandSettings{}, nodeAt("node1", imapAddr(n1)), nodeAt("node2", imapAddr(n2)))
	e.dir.setDef("two")
	first := e.firstNode("zed")
	other := map[string]string{"node1": "node2", "node2": "node1"}[first]
	for i := range 10 {
		if got := loggedInto(t, e, "zed", "zed-pw"); got != first {
			t.Fatalf("login %d landed on %s, want %s every time", i, got, first)
		}
	}
	if err := nodes[first].Stop(); err != nil {
		t.Fatal(err)
	}
	if got := loggedInto(t, e, "zed", "zed-pw"); got != other {
		t.Fatalf("with %s refusing connections: landed on %s, want %s", first, got, other)
	}
	if n := e.obs.dials(first); n != 1 {
		t.Fatalf("%d failed dials of %s, want 1", n, first)
	}
	e.nodes.setHealthy("two", first, false)
	if got := loggedInto(t, e, "zed", "zed-pw"); got != other {
		t.Fatalf("with %s unhealthy: landed on %s, want %s", first, got, other)
	}
	if n := e.obs.dials(first); n != 1 {
		t.Fatalf("an unhealthy node was dialled (%d failed dials)", n)
	}
}

// A node that greets with anything but "* OK" is skipped, like one that
// refuses connections.
func TestBadGreetingNextNode(t *testing.T) {
	t.Parallel()
	bye := startFakeNode(t, false, withGreeting("* BYE not today"))
	good := startFakeNode(t, false)
	e := newEnv(t, proxy.Options{}, false)
	e.island("is", proxy.IslandSettings{}, nodeAt("bye", bye.addr), nodeAt("good", good.addr))
	e.dir.setDef("is")
	user := ""
	for i := range 100 {
		if u := "u" + strconv.Itoa(i); e.firstNode(u) == "bye" {
			user = u
			break
		}
	}
	c := e.client(t)
	if l := last(c.cmd("a", "LOGIN "+user+" pw")); l != "a OK [CAPABILITY IMAP4rev1 IDLE] Logged in" {
		t.Fatalf("login: %q", l)
	}
	if got := good.commands(); len(got) != 1 || !strings.HasPrefix(got[0], "atoll1 AUTHENTICATE PLAIN ") {
		t.Fatalf("good node got %q", got)
	}
	if got := bye.commands(); len(got) != 0 {
		t.Fatalf("the node greeting BYE got %q", got)
	}
}

// Test 6: directory errors, and the node's own refusal relayed.
func TestDirectoryErrors(t *testing.T) {
	t.Parallel()
	d := sharedDovecot(t)
	e := newEnv(t, proxy.Options{Throttle: proxy.ThrottleSettings{Threshold: 1, BaseDelay: 50 * time.Millisecond}}, false)
	e.dovecotIsland("dc", d, proxy.IslandSettings{})
	e.island("empty", proxy.IslandSettings{}, nodeAt("gone", "127.0.0.1:1"))
	e.nodes.setHealthy("empty", "gone", false)
	e.dir.set("alice", "dc")
	e.dir.set("nobody-home", "empty")
	e.dir.fail("ldapdown", fmt.Errorf("every server: %w", directory.ErrUnavailable))

	// Unknown user: the same answer as a wrong password, and counted.
	c := e.client(t)
	if l := last(c.cmd("a", "LOGIN stranger pw")); l != "a NO [AUTHENTICATIONFAILED] Authentication failed." {
		t.Fatalf("unknown user: %q", l)
	}
	// A name the core refuses (a control character, in a literal).
	c.write("b LOGIN {8+}\r\nbad\x01name pw\r\n")
	if l := strings.TrimSpace(last(c.until("b"))); l != "b NO [AUTHENTICATIONFAILED] Authentication failed." {
		t.Fatalf("bad name: %q", l)
	}
	if e.obs.login("unknown_user") != 1 || e.obs.login("bad_name") != 1 {
		t.Fatalf("results %v", e.obs.logins)
	}
	if n := e.obs.throttles(); n != 1 {
		t.Fatalf("throttle hits %d, want 1 (threshold 1, two failures)", n)
	}
	// A wrong password: Dovecot's own answer, with the client's tag.
	if l := last(c.cmd("c", "LOGIN alice wrong")); l != "c NO [AUTHENTICATIONFAILED] Authentication failed." {
		t.Fatalf("wrong password: %q", l)
	}
	if n := e.obs.login("failed"); n != 1 {
		t.Fatalf("%d failed logins recorded, want 1 (the node's NO)", n)
	}
	// Three failures on one connection: closed.
	if l := c.line(); l != "* BYE Too many failed logins." {
		t.Fatalf("after 3 failures: %q", l)
	}
	c.closed(time.Second)

	// Directory down: NO [UNAVAILABLE], BYE, closed within a second.
	c = e.client(t)
	start := time.Now()
	out := c.cmd("a", "LOGIN ldapdown pw")
	if l := last(out); l != "a NO [UNAVAILABLE] Account directory unavailable, try again later." {
		t.Fatalf("directory down: %q", out)
	}
	if l := c.line(); !strings.HasPrefix(l, "* BYE ") {
		t.Fatalf("after directory down: %q", l)
	}
	c.closed(5 * time.Second)
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("closed after %v", el)
	}
	// No healthy node.
	c = e.client(t)
	if l := last(c.cmd("a", "LOGIN nobody-home pw")); l != "a NO [UNAVAILABLE] No server available for this account, try again later." {
		t.Fatalf("no node: %q", l)
	}
	c.line()
	c.closed(time.Second)
	if e.obs.login("unavailable") != 1 || e.obs.login("no_node") != 1 {
		t.Fatalf("results %v", e.obs.logins)
	}
}

// The node's refusals, with their codes and text, reach the client with
// its own tag; untagged lines before them too.
func TestNodeAnswersRelayed(t *testing.T) {
	t.Parallel()
	for _, ans := range []string{
		"NO [AUTHENTICATIONFAILED] Wrong password, says the node.",
		"NO [SYS/TEMP] Node is busy.",
		"NO [IN-USE] Already logged in elsewhere.",
		"NO [UNAVAILABLE] Maintenance.",
		"BAD [CLIENTBUG] Odd.",
		"no lower case status",
	} {
		t.Run(ans, func(t *testing.T) {
			// The node's BYE is its own connection's end: not passed on.
			f := startFakeNode(t, false, withLogin(ans), withBefore("* OK [ALERT] Read this\r\n* BYE Closing\r\n"))
			e := newEnv(t, proxy.Options{}, false)
			e.island("is", proxy.IslandSettings{}, nodeAt("f", f.addr))
			e.dir.setDef("is")
			c := e.client(t)
			out := c.cmd("x7", "LOGIN user pw")
			if want := []string{"* OK [ALERT] Read this\r\n", "x7 " + ans}; !slices.Equal(out, want) {
				t.Fatalf("got %q, want %q", out, want)
			}
			// The session goes on: a second login is possible.
			c.ok("x8", "NOOP")
		})
	}
}

// Failures on the node side: a node that hangs up after the login was
// sent ends the client's session with NO [UNAVAILABLE]; a node that
// cannot do what the island asks (STARTTLS) is skipped like a dead one.
func TestNodeFailures(t *testing.T) {
	t.Parallel()
	hang := startFakeNode(t, false, withLogin(""))
	e := newEnv(t, proxy.Options{}, false)
	e.island("is", proxy.IslandSettings{}, nodeAt("hang", hang.addr))
	e.dir.setDef("is")
	c := e.client(t)
	if l := last(c.cmd("a", "LOGIN joe pw")); l != "a NO [UNAVAILABLE] Lost the connection to the server, try again later." {
		t.Fatalf("node hung up: %q", l)
	}
	if l := c.line(); !strings.HasPrefix(l, "* BYE ") {
		t.Fatalf("%q", l)
	}
	c.closed(time.Second)
	if n := e.obs.login("error"); n != 1 {
		t.Fatalf("results %v", e.obs.logins)
	}

	plain := startFakeNode(t, false) // no STARTTLS offered
	e = newEnv(t, proxy.Options{}, false)
	e.island("is", proxy.IslandSettings{NodeTLS: proxy.NodeTLSStartTLS}, nodeAt("plain", plain.addr))
	e.dir.setDef("is")
	c = e.client(t)
	if l := last(c.cmd("a", "LOGIN joe pw")); l != "a NO [UNAVAILABLE] No server available for this account, try again later." {
		t.Fatalf("node without STARTTLS: %q", l)
	}
	if got := plain.commands(); len(got) != 0 {
		t.Fatalf("the node got %q: the login went out in plaintext", got)
	}
}

// How the login is replayed depends on what the node offers; the node
// user (NodeLogin strip) replaces the client's name.
func TestLoginReplayForms(t *testing.T) {
	t.Parallel()
	const utf = "wörd \"x\""
	tests := []struct {
		name       string
		caps       string
		greeting   string // "" = with the capabilities
		send       string // client command after "a "
		want       []string
		wantAnswer string
	}{
		{"PLAIN with SASL-IR", "IMAP4rev1 AUTH=PLAIN SASL-IR", "", "LOGIN joe@example.org pw",
			[]string{"atoll1 AUTHENTICATE PLAIN " + plain("", "joe", "pw")}, ""},
		{"PLAIN without SASL-IR", "IMAP4rev1 AUTH=PLAIN", "", "LOGIN joe@example.org pw",
			[]string{"atoll1 AUTHENTICATE PLAIN\r\n" + plain("", "joe", "pw")}, ""},
		{"authzid passed through", "IMAP4rev1 AUTH=PLAIN SASL-IR", "", "AUTHENTICATE PLAIN " + plain("admin", "joe@example.org", "pw"),
			[]string{"atoll1 AUTHENTICATE PLAIN " + plain("admin", "joe", "pw")}, ""},
		{"LOGIN quoted", "IMAP4rev1", "", `LOGIN joe@example.org "p a\"s\\s w"`,
			[]string{`atoll1 LOGIN "joe" "p a\"s\\s w"`}, ""},
		{"LOGIN LITERAL+", "IMAP4rev1 LITERAL+", "", "LOGIN joe@example.org {" + strconv.Itoa(len(utf)) + "+}\r\n" + utf,
			[]string{`atoll1 LOGIN "joe" ` + literalArg(utf, true)}, ""},
		{"LOGIN LITERAL-", "IMAP4rev1 LITERAL-", "", "LOGIN joe@example.org {" + strconv.Itoa(len(utf)) + "+}\r\n" + utf,
			[]string{`atoll1 LOGIN "joe" ` + literalArg(utf, true)}, ""},
		{"LOGIN sync literal", "IMAP4rev1", "", "LOGIN joe@example.org {" + strconv.Itoa(len(utf)) + "+}\r\n" + utf,
			[]string{`atoll1 LOGIN "joe" ` + literalArg(utf, false)}, ""},
		{"capabilities asked for", "IMAP4rev1 AUTH=PLAIN SASL-IR", "* OK fake ready.", "LOGIN joe@example.org pw",
			[]string{"atoll1 CAPABILITY", "atoll2 AUTHENTICATE PLAIN " + plain("", "joe", "pw")}, ""},
		{"authzid without PLAIN", "IMAP4rev1 LITERAL+", "", "AUTHENTICATE PLAIN " + plain("admin", "joe@example.org", "pw"),
			nil, "a NO [CANNOT] Authorization identity not supported by the server."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := startFakeNode(t, false, withCaps(tt.caps), withGreeting(tt.greeting))
			e := newEnv(t, proxy.Options{Names: directory.Names{NodeLogin: directory.NodeLoginStrip}}, false)
			e.island("is", proxy.IslandSettings{}, nodeAt("f", f.addr))
			e.dir.setDef("is")
			c := e.client(t)
			c.write("a " + tt.send + "\r\n")
			ans := strings.TrimSpace(last(c.until("a")))
			want := tt.wantAnswer
			if want == "" {
				want = "a OK [CAPABILITY IMAP4rev1 IDLE] Logged in"
			}
			if ans != want {
				t.Fatalf("answer %q, want %q", ans, want)
			}
			if got := f.commands(); !slices.Equal(got, tt.want) {
				t.Fatalf("node got %q, want %q", got, tt.want)
			}
		})
	}
}

// After login the client sees only the capabilities every recorded node
// of the island offers, with the node's own text.
func TestIslandCapabilities(t *testing.T) {
	t.Parallel()
	a := startFakeNode(t, false, withLogin("OK [CAPABILITY IMAP4rev1 IDLE X-ONLY-A MOVE] Hello from A"))
	b := startFakeNode(t, false, withLogin("OK [CAPABILITY IMAP4rev1 IDLE MOVE X-ONLY-B] Hello from B"))
	e := newEnv(t, proxy.Options{}, false)
	e.island("is", proxy.IslandSettings{}, nodeAt("a", a.addr), nodeAt("b", b.addr))
	e.dir.setDef("is")
	users := map[string]string{}
	for i := 0; len(users) < 2; i++ {
		u := "u" + strconv.Itoa(i)
		if n := e.firstNode(u); users[n] == "" {
			users[n] = u
		}
	}
	c := e.client(t)
	if l := last(c.cmd("a", "LOGIN "+users["a"]+" pw")); l != "a OK [CAPABILITY IMAP4rev1 IDLE X-ONLY-A MOVE] Hello from A" {
		t.Fatalf("first node: %q", l)
	}
	c = e.client(t)
	if l := last(c.cmd("a", "LOGIN "+users["b"]+" pw")); l != "a OK [CAPABILITY IMAP4rev1 IDLE MOVE] Hello from B" {
		t.Fatalf("second node: %q", l)
	}
}

// The client's address by IMAP ID, only to nodes that offer ID; a node
// refusing it does not stop the login.
func TestClientAddrID(t *testing.T) {
	t.Parallel()
	withIDNode := startFakeNode(t, false, withID("NO not from you"))
	noID := startFakeNode(t, false, withCaps("IMAP4rev1 AUTH=PLAIN SASL-IR"))
	for _, f := range []*fakeNode{withIDNode, noID} {
		e := newEnv(t, proxy.Options{}, false)
		e.island("is", proxy.IslandSettings{ClientAddr: proxy.ClientAddrID}, nodeAt("f", f.addr))
		e.dir.setDef("is")
		c := e.client(t)
		if l := last(c.cmd("a", "LOGIN joe pw")); !strings.HasPrefix(l, "a OK ") {
			t.Fatalf("login: %q", l)
		}
		cl := netip.MustParseAddrPort(c.c.LocalAddr().String())
		vip := netip.MustParseAddrPort(e.addr)
		want := []string{"atoll1 AUTHENTICATE PLAIN " + plain("", "joe", "pw")}
		if f == withIDNode {
			want = append([]string{fmt.Sprintf(`atoll1 ID ("x-originating-ip" "127.0.0.1" "x-originating-port" "%d" "x-connected-ip" "127.0.0.1" "x-connected-port" "%d")`, cl.Port(), vip.Port()),
				"atoll2 AUTHENTICATE PLAIN " + plain("", "joe", "pw")}, want[1:]...)
		}
		if got := f.commands(); !slices.Equal(got, want) {
			t.Fatalf("node got %q, want %q", got, want)
		}
	}
}

// Test 10: PROXY v2 toward the node. The lab's Dovecot has no haproxy
// listener (peer.DovecotOptions cannot ask for one), so a Go node parses
// the header with go-proxyproto.
func TestProxyProtocol(t *testing.T) {
	t.Parallel()
	f := startFakeNode(t, true)
	e := newEnv(t, proxy.Options{}, false)
	e.island("is", proxy.IslandSettings{ClientAddr: proxy.ClientAddrProxy}, nodeAt("f", f.addr))
	e.dir.setDef("is")
	c := e.client(t)
	if l := last(c.cmd("a", "LOGIN joe pw")); !strings.HasPrefix(l, "a OK ") {
		t.Fatalf("login: %q", l)
	}
	if l := last(c.cmd("b", "SELECT INBOX")); l != "b OK SELECT done by "+f.addr {
		t.Fatalf("after login: %q", l)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.remotes) != 1 || f.remotes[0] != c.c.LocalAddr().String() || f.locals[0] != e.addr {
		t.Fatalf("the node saw %v → %v, want %v → %v", f.remotes, f.locals, c.c.LocalAddr(), e.addr)
	}
}

// Test 10 against Dovecot: the client's address reaches the node by a
// PROXY v2 header (a haproxy listener) and by IMAP ID (login_trusted_
// networks); Dovecot logs it as the login's rip. The client connects from
// 127.0.0.2 to the proxy on 127.0.0.3, while the proxy reaches Dovecot
// from 127.0.0.1: rip=127.0.0.2 and lip=127.0.0.3 can only come from
// what the proxy passed on.
func TestClientAddressDovecot(t *testing.T) {
	t.Parallel()
	peer.Require(t, "dovecot")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hport := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	trusted := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := peer.StartDovecot(ctx, peer.DovecotOptions{
		Dir: t.TempDir(), Name: "dc-addr", Users: dovecotUsers,
		HAProxy: peer.DovecotHAProxy{IMAP: hport, Trusted: trusted}, LoginTrusted: trusted,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop() })
	for _, tt := range []struct {
		mode, user, addr string
	}{
		{proxy.ClientAddrProxy, "erin", d.Addr(d.Opts.Listen[0], hport)},
		{proxy.ClientAddrID, "frank", imapAddr(d)},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			e := newEnvOn(t, proxy.Options{}, false, "127.0.0.3")
			e.island("is", proxy.IslandSettings{ClientAddr: tt.mode}, nodeAt("dc-addr", tt.addr))
			e.dir.setDef("is")
			c := dialIMAP(t, e.addr, netip.MustParseAddr("127.0.0.2"))
			c.line()
			c.ok("a", "LOGIN "+tt.user+" "+dovecotUsers[tt.user])
			c.ok("b", "SELECT INBOX")
			c.ok("z", "LOGOUT")
			want := "user=<" + tt.user + ">, method=PLAIN, rip=127.0.0.2, lip=127.0.0.3"
			deadline := time.Now().Add(5 * time.Second)
			for !strings.Contains(d.Log(), want) {
				if time.Now().After(deadline) {
					t.Fatalf("Dovecot never logged %q:\n%s", want, d.Log())
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// Test 7: the failed-login throttle, per source address. Timings are
// taken on a fake node that refuses at once: the core pads unknown-user
// answers (100-300 ms) and Dovecot answers failures in 500 ms batches,
// both of which would blur "not delayed". Those failures still count.
// Not parallel: the bounds are tight.
func TestThrottle(t *testing.T) {
	d := sharedDovecot(t)
	f := startFakeNode(t, false, withLogin("NO [AUTHENTICATIONFAILED] Nope."))
	e := newEnv(t, proxy.Options{Throttle: proxy.ThrottleSettings{Threshold: 3, BaseDelay: 300 * time.Millisecond, MaxDelay: 5 * time.Second}}, false)
	e.dovecotIsland("dc", d, proxy.IslandSettings{})
	e.island("fk", proxy.IslandSettings{}, nodeAt("f", f.addr))
	e.dir.setDef("fk")
	e.dir.set("kim", "dc")
	e.dir.fail("nobody", directory.ErrUnknownUser)
	fail := func(from netip.Addr, cmd string) time.Duration {
		t.Helper()
		c := dialIMAP(t, e.addr, from)
		c.line()
		start := time.Now()
		want := "a NO [AUTHENTICATIONFAILED] Authentication failed."
		if strings.HasPrefix(cmd, "LOGIN u") {
			want = "a NO [AUTHENTICATIONFAILED] Nope."
		}
		if l := last(c.cmd("a", cmd)); l != want {
			t.Fatalf("%s: %q, want %q", cmd, l, want)
		}
		el := time.Since(start)
		c.c.Close()
		return el
	}
	lo := netip.MustParseAddr("127.0.0.1")
	// Failures 1-3: an unknown user, a wrong password on Dovecot, a
	// refusal by the fake node; none delayed by the throttle.
	// (Upper bounds on answer times would flake on a loaded machine: the
	// throttle's own count says which answers it delayed.)
	for _, cmd := range []string{"LOGIN nobody pw", "LOGIN kim wrong", "LOGIN u1 pw"} {
		fail(lo, cmd)
	}
	if n := e.obs.throttles(); n != 0 {
		t.Fatalf("%d of the first 3 failures throttled, want none", n)
	}
	el4 := fail(lo, "LOGIN u2 pw")
	if el4 < 300*time.Millisecond {
		t.Fatalf("failure 4 took %v, want 300ms or more", el4)
	}
	el5 := fail(lo, "LOGIN u3 pw")
	if el5 < 600*time.Millisecond {
		t.Fatalf("failure 5 took %v, want 600ms or more", el5)
	}
	t.Logf("failures 4 and 5 answered after %v and %v", el4, el5)
	// Another source address is not slowed.
	fail(netip.MustParseAddr("127.0.0.2"), "LOGIN u4 pw")
	if n := e.obs.throttles(); n != 2 {
		t.Fatalf("%d throttled answers, want 2", n)
	}
}

// Test 8: a command pipelined behind LOGIN reaches the node after it.
func TestPipelining(t *testing.T) {
	t.Parallel()
	d := sharedDovecot(t)
	e := newEnv(t, proxy.Options{}, false)
	e.dovecotIsland("dc", d, proxy.IslandSettings{})
	e.dir.setDef("dc")
	for _, login := range []string{"LOGIN jack jack-pw", "AUTHENTICATE PLAIN " + plain("", "jack", "jack-pw")} {
		c := e.client(t)
		c.write("a " + login + "\r\nb SELECT INBOX\r\nc LOGOUT\r\n")
		out := c.until("a")
		if l := last(out); !strings.HasPrefix(l, "a OK ") {
			t.Fatalf("login: %q", out)
		}
		out = c.until("b")
		if l := last(out); !strings.HasPrefix(l, "b OK [READ-WRITE] ") {
			t.Fatalf("pipelined SELECT: %q", out)
		}
		if out := c.until("c"); !strings.HasPrefix(last(out), "c OK") {
			t.Fatalf("pipelined LOGOUT: %q", out)
		}
		c.closed(2 * time.Second)
	}
}

// Test 9: the pre-login limits.
func TestLimits(t *testing.T) {
	t.Parallel()
	e := newEnv(t, proxy.Options{Limits: proxy.Limits{MaxLine: 200, MaxLiteral: 64, MaxBadCommands: 3}}, false)
	t.Run("line too long", func(t *testing.T) {
		c := e.client(t)
		c.write("a LOGIN " + strings.Repeat("x", 300) + " pw\r\n")
		if l := c.line(); l != "* BAD Command line too long" {
			t.Fatalf("%q", l)
		}
		c.closed(time.Second)
	})
	t.Run("too many bad commands", func(t *testing.T) {
		c := e.client(t)
		c.write("a FOO\r\n* x\r\nb SELECT INBOX\r\n")
		for _, want := range []string{"a BAD ", "* BAD ", "b BAD ", "* BYE Too many invalid commands."} {
			if l := c.line(); !strings.HasPrefix(l, want) {
				t.Fatalf("%q, want %q", l, want)
			}
		}
		c.closed(time.Second)
	})
	t.Run("literal too big", func(t *testing.T) {
		c := e.client(t)
		c.write("a LOGIN {65}\r\n")
		if l := c.line(); l != "a BAD Literal too big." {
			t.Fatalf("sync: %q (no + expected)", l)
		}
		c.ok("b", "NOOP")
		c.write("c LOGIN {65+}\r\n")
		if l := c.line(); l != "* BYE literal too big" {
			t.Fatalf("non-sync: %q", l)
		}
		c.closed(time.Second)
	})
	t.Run("too many failed logins", func(t *testing.T) {
		c := e.client(t)
		for i := range 3 {
			if l := last(c.cmd("a", "LOGIN nobody pw")); !strings.HasPrefix(l, "a NO [AUTHENTICATIONFAILED]") {
				t.Fatalf("attempt %d: %q", i, l)
			}
		}
		if l := c.line(); l != "* BYE Too many failed logins." {
			t.Fatalf("%q", l)
		}
		c.closed(time.Second)
	})
	t.Run("idle", func(t *testing.T) {
		e := newEnv(t, proxy.Options{Limits: proxy.Limits{PreLoginTimeout: 200 * time.Millisecond}}, false)
		c := e.client(t)
		start := time.Now()
		if l := c.line(); l != "* BYE Disconnected for inactivity." {
			t.Fatalf("%q", l)
		}
		el := time.Since(start)
		c.closed(time.Second)
		if el < 150*time.Millisecond || el > 2*time.Second {
			t.Fatalf("idle client dropped after %v, want about 200ms", el)
		}
		// A half-sent literal is bounded by the same timeout.
		c = e.client(t)
		c.write("a LOGIN {10}\r\n")
		if l := c.line(); l != continuation {
			t.Fatalf("%q", l)
		}
		c.write("abc")
		if l := c.line(); l != "* BYE Disconnected for inactivity." {
			t.Fatalf("%q", l)
		}
	})
}

// A session in the relay ends when the server stops; nothing is left
// behind (the race detector and the environment's cleanup check it).
func TestServerStopCutsSessions(t *testing.T) {
	t.Parallel()
	f := startFakeNode(t, false)
	e := newEnv(t, proxy.Options{}, false)
	e.island("is", proxy.IslandSettings{}, nodeAt("f", f.addr))
	e.dir.setDef("is")
	c := e.client(t)
	c.ok("a", "STARTTLS")
	c.startTLS(clientTLS(t))
	c.ok("b", "LOGIN joe pw")
	c.ok("c", "NOOP")
}
