package lmtp

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab/peer"
	"github.com/atoll-lb/atoll/userspace/directory"
	"github.com/atoll-lb/atoll/userspace/proxy"
)

// swaksFile writes msg for swaks --data @FILE without its last CRLF:
// swaks ends the data with CRLF "." CRLF whatever the file's end.
func swaksFile(t *testing.T, msg string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "msg.eml")
	if err := os.WriteFile(file, []byte(strings.TrimSuffix(msg, "\r\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

func marker(t *testing.T) string {
	return fmt.Sprintf("m%d-%s", time.Now().UnixNano(), strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
}

// checkDelivered checks that each recipient's mailbox on its island's
// node holds exactly one copy of msg, byte for byte after the trace
// headers the node added, and returns those headers by recipient.
func checkDelivered(t *testing.T, l *lab, msg, mark string, rcpts ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, rc := range rcpts {
		node := l.nodes["node-a"]
		if strings.HasSuffix(rc, "@b.test") {
			node = l.nodes["node-b"]
		}
		got := copies(t, node, rc, mark)
		if len(got) != 1 {
			t.Fatalf("%s: %d copies of the message on %s, want 1", rc, len(got), node.Opts.Name)
		}
		out[rc] = addedHeaders(t, got[0], msg)
	}
	return out
}

// TestSwaks: a real LMTP client (swaks) delivers ONE message to three
// recipients in two islands in one transaction; each copy lands in its
// mailbox on its island's node, byte for byte; the replies after DATA
// are the nodes' own. The client connects from 127.0.0.2 and the node
// records that address and the client's LHLO name (XCLIENT), not atoll's.
func TestSwaks(t *testing.T) {
	peer.Require(t, "swaks")
	l := getLab(t)
	e := newEnv(t, envOpts{}).withLab(l)
	mark := marker(t)
	rcpts := []string{"alice@a.test", "bob@b.test", "carol@a.test"}
	msg := testMessage(mark, rcpts...)
	file := swaksFile(t, msg)
	out, err := exec.Command("swaks", "--protocol", "LMTP", "--server", e.host, "--port", fmt.Sprint(e.port),
		"--local-interface", "127.0.0.2", "--helo", "mta.example.test", "--from", "sender@example.org",
		"--to", strings.Join(rcpts, ","), "--data", "@"+file, "--timeout", "30").CombinedOutput()
	t.Logf("swaks:\n%s", out)
	if err != nil {
		t.Fatalf("swaks: %v", err)
	}
	// swaks prints the replies after DATA, one per recipient, in order.
	var finals []string
	for l := range strings.SplitSeq(string(out), "\n") {
		if m := regexp.MustCompile(`^\s*<[-~]\s+(\d{3} \d\.\d\.\d <([^>]+)> .*)$`).FindStringSubmatch(l); m != nil {
			finals = append(finals, m[2]+" "+m[1])
		}
	}
	if len(finals) != 3 {
		t.Fatalf("want 3 replies after DATA, got %q", finals)
	}
	for i, rc := range rcpts {
		if !strings.HasPrefix(finals[i], rc+" 250 2.0.0 <"+rc+"> ") || !strings.HasSuffix(finals[i], " Saved") {
			t.Errorf("reply %d: %q, want the node's own 250 for %s", i, finals[i], rc)
		}
	}
	hdrs := checkDelivered(t, l, msg, mark, rcpts...)
	// Dovecot adds Delivered-To only to a message with one recipient.
	if !strings.Contains(hdrs["bob@b.test"], "Delivered-To: bob@b.test\r\n") {
		t.Errorf("bob: trace headers %q lack Delivered-To", hdrs["bob@b.test"])
	}
	for rc, h := range hdrs {
		// XCLIENT: the node saw the MTA, not atoll.
		if !strings.Contains(h, "from mta.example.test") || !strings.Contains(h, "[127.0.0.2]") {
			t.Errorf("%s: Received header does not name the client (XCLIENT): %q", rc, h)
		}
	}
	_, deliveries, recipients, bytes := e.obs.snapshot()
	slices.Sort(deliveries)
	if want := []string{"a:delivered", "a:delivered", "b:delivered"}; !slices.Equal(deliveries, want) {
		t.Errorf("deliveries %q, want %q", deliveries, want)
	}
	if !slices.Equal(recipients, []int{3}) || len(bytes) != 1 || bytes[0] != int64(len(msg)) {
		t.Errorf("recipients %v bytes %v, want [3] [%d]", recipients, bytes, len(msg))
	}
}

// pythonLMTP delivers with python's smtplib.LMTP. smtplib's data() reads
// only the first recipient's reply after DATA (LMTP sends one per
// recipient), so the script reads the others with getreply(), as an LMTP
// client must.
const pythonLMTP = `
import json, smtplib, sys
host, port, sender, path = sys.argv[1:5]
rcpts = sys.argv[5:]
s = smtplib.LMTP(host, int(port), local_hostname="py.example.test", source_address=("127.0.0.3", 0), timeout=30)
s.ehlo_or_helo_if_needed()
s.mail(sender)
accepted, out = [], {"rcpt": [], "data": []}
for r in rcpts:
    code, text = s.rcpt(r)
    out["rcpt"].append([r, code, text.decode()])
    if code == 250:
        accepted.append(r)
msg = open(path, "rb").read()
code, text = s.data(msg)
out["data"].append([code, text.decode()])
for _ in accepted[1:]:
    code, text = s.getreply()
    out["data"].append([code, text.decode()])
s.quit()
print(json.dumps(out))
`

type pyResult struct {
	Rcpt [][3]any `json:"rcpt"`
	Data [][2]any `json:"data"`
}

func runPython(t *testing.T, e *env, msg string, rcpts ...string) pyResult {
	t.Helper()
	peer.Require(t, "python3")
	file := filepath.Join(t.TempDir(), "msg.eml")
	if err := os.WriteFile(file, []byte(msg), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-c", pythonLMTP, e.host, fmt.Sprint(e.port), "sender@example.org", file}, rcpts...)
	cmd := exec.Command("python3", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, stderr.String())
	}
	var res pyResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("python output %q: %v", out, err)
	}
	t.Logf("python: %+v", res)
	return res
}

// TestPython: python's smtplib.LMTP, same transaction as TestSwaks.
func TestPython(t *testing.T) {
	l := getLab(t)
	e := newEnv(t, envOpts{}).withLab(l)
	mark := marker(t)
	rcpts := []string{"carol@a.test", "dave@b.test", "erin@a.test"}
	msg := testMessage(mark, rcpts...)
	res := runPython(t, e, msg, rcpts...)
	if len(res.Data) != 3 {
		t.Fatalf("want 3 replies after DATA, got %v", res.Data)
	}
	for i, rc := range rcpts {
		code, text := res.Data[i][0].(float64), res.Data[i][1].(string)
		if code != 250 || !strings.HasPrefix(text, "2.0.0 <"+rc+"> ") {
			t.Errorf("reply %d: %v %q, want the node's 250 for %s", i, code, text, rc)
		}
	}
	hdrs := checkDelivered(t, l, msg, mark, rcpts...)
	for rc, h := range hdrs {
		if !strings.Contains(h, "from py.example.test") || !strings.Contains(h, "[127.0.0.3]") {
			t.Errorf("%s: Received header does not name the client (XCLIENT): %q", rc, h)
		}
	}
}

// TestRepliesInRCPTOrder: recipients of two islands interleaved and an
// unknown one; the unknown one is refused at RCPT (550 5.1.1) and the
// others delivered, with the replies after DATA one per accepted
// recipient in RCPT order (each node's reply names its recipient).
func TestRepliesInRCPTOrder(t *testing.T) {
	l := getLab(t)
	e := newEnv(t, envOpts{}).withLab(l)
	mark := marker(t)
	// grace twice: two replies, one copy.
	order := []string{"frank@b.test", "grace@a.test", "nobody@a.test", "bob@b.test", "ivan@a.test", "dave@b.test", "grace@a.test"}
	msg := testMessage(mark, order...)
	c, g := dial(t, e.addr, netip.Addr{})
	if g.code != 220 || g.text() != "router.test LMTP atoll ready" {
		t.Fatalf("greeting %v", g)
	}
	c.expect("LHLO mta.test", 250, "")
	c.expect("MAIL FROM:<sender@example.org>", 250, "2.1.0")
	var accepted []string
	for _, rc := range order {
		r := c.cmd("RCPT TO:<" + rc + ">")
		if rc == "nobody@a.test" {
			if r.code != 550 || r.text() != "5.1.1 <nobody@a.test>: no such user" {
				t.Fatalf("unknown recipient: %v", r)
			}
			continue
		}
		if r.code != 250 || r.text() != "2.1.5 OK" {
			t.Fatalf("RCPT %s: %v", rc, r)
		}
		accepted = append(accepted, rc)
	}
	c.expect("DATA", 354, "")
	c.sendData(msg)
	for i, rc := range accepted {
		r := c.reply()
		if r.code != 250 || !strings.HasPrefix(r.text(), "2.0.0 <"+rc+"> ") {
			t.Fatalf("reply %d: %v, want 250 for %s", i, r, rc)
		}
	}
	c.expect("QUIT", 221, "2.0.0")
	checkDelivered(t, l, msg, mark, accepted...) // one copy each, grace included
	if got := copies(t, l.nodes["node-a"], "alice@a.test", mark); len(got) != 0 {
		t.Fatalf("a recipient not in the transaction got the message")
	}
	logins, _, _, _ := e.obs.snapshot()
	if !slices.Contains(logins, "lmtp:unknown_user") {
		t.Errorf("login results %q lack lmtp:unknown_user", logins)
	}
}

// TestNodeKilledBetweenRCPTAndDATA: island b's only node dies after the
// RCPTs were accepted (the control plane still says healthy, so the
// router tries it): b's recipients get 4xx, a's 250. After a restart, a
// retry of only the failed recipients, as an MTA does, delivers b's copy
// once; a got exactly one copy too.
func TestNodeKilledBetweenRCPTAndDATA(t *testing.T) {
	l := getLab(t)
	e := newEnv(t, envOpts{}).withLab(l)
	dir := t.TempDir()
	users := map[string]string{"bob@b.test": usersB["bob@b.test"]}
	kb := startDovecot(t, dovecotOpts(filepath.Join(dir, "kb"), "node-kb", users))
	t.Cleanup(func() { kb.Stop() })
	e.nodes.setIsland("b", proxy.IslandSettings{}, proxy.NodeInfo{Name: "node-kb", Addr: lmtpAddr(kb), Healthy: true})

	mark := marker(t)
	rcpts := []string{"alice@a.test", "bob@b.test"}
	msg := testMessage(mark, rcpts...)
	c, _ := dial(t, e.addr, netip.Addr{})
	c.expect("LHLO mta.test", 250, "")
	c.expect("MAIL FROM:<sender@example.org>", 250, "2.1.0")
	c.expect("RCPT TO:<alice@a.test>", 250, "2.1.5")
	c.expect("RCPT TO:<bob@b.test>", 250, "2.1.5")
	if err := kb.Kill(); err != nil {
		t.Fatal(err)
	}
	c.expect("DATA", 354, "")
	c.sendData(msg)
	ra, rb := c.reply(), c.reply()
	if ra.code != 250 || !strings.HasPrefix(ra.text(), "2.0.0 <alice@a.test> ") {
		t.Fatalf("alice: %v, want 250", ra)
	}
	if rb.code/100 != 4 || !strings.HasPrefix(rb.text(), "4.4.") || !strings.Contains(rb.text(), "<bob@b.test>") {
		t.Fatalf("bob: %v, want 451 4.4.x", rb)
	}
	t.Logf("bob's answer with island b's node down: %v", rb)

	// The node comes back on the same ports with its mail.
	kb2 := startDovecot(t, func() peer.DovecotOptions {
		o := dovecotOpts(kb.Opts.Dir, "node-kb", users)
		o.Ports = kb.Ports
		return o
	}())
	t.Cleanup(func() { kb2.Stop() })
	// The MTA retries only the deferred recipient.
	c.expect("MAIL FROM:<sender@example.org>", 250, "2.1.0")
	c.expect("RCPT TO:<bob@b.test>", 250, "2.1.5")
	c.expect("DATA", 354, "")
	c.sendData(msg)
	if r := c.reply(); r.code != 250 || !strings.HasPrefix(r.text(), "2.0.0 <bob@b.test> ") {
		t.Fatalf("bob on retry: %v", r)
	}
	c.expect("QUIT", 221, "")
	if got := copies(t, kb2, "bob@b.test", mark); len(got) != 1 {
		t.Fatalf("bob has %d copies, want exactly 1", len(got))
	} else {
		addedHeaders(t, got[0], msg)
	}
	if got := copies(t, l.nodes["node-a"], "alice@a.test", mark); len(got) != 1 {
		t.Fatalf("alice has %d copies, want exactly 1", len(got))
	}
	_, deliveries, _, _ := e.obs.snapshot()
	slices.Sort(deliveries)
	if want := []string{"a:delivered", "b:delivered", "b:node_failed"}; !slices.Equal(deliveries, want) {
		t.Errorf("deliveries %q, want %q", deliveries, want)
	}
}

// TestDirectory: directory down → 451 4.3.0 at RCPT within a second (no
// hang); unknown domain or user, or a name that cannot be a user →
// 550 5.1.1; an island without a healthy node → 451 4.4.1.
func TestDirectory(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.dir.set("known@a.test", "a")
	e.dir.set("orphan@c.test", "c")
	e.nodes.setIsland("a", proxy.IslandSettings{}, proxy.NodeInfo{Name: "n1", Addr: netip.MustParseAddrPort("127.0.0.1:1"), Healthy: true})
	e.nodes.setIsland("c", proxy.IslandSettings{}, proxy.NodeInfo{Name: "c1", Addr: netip.MustParseAddrPort("127.0.0.1:1"), Healthy: false})
	c, _ := dial(t, e.addr, netip.Addr{})
	c.expect("LHLO mta.test", 250, "")
	c.expect("MAIL FROM:<>", 250, "2.1.0")
	c.expect("RCPT TO:<someone@nowhere.test>", 550, "5.1.1 <someone@nowhere.test>: no such user")
	c.expect("RCPT TO:<nobody@a.test>", 550, "5.1.1")
	c.expect("RCPT TO:<"+strings.Repeat("x", 300)+"@a.test>", 550, "5.1.1")
	c.expect("RCPT TO:<orphan@c.test>", 451, "4.4.1 No server available for this recipient's island")
	c.expect("RCPT TO:<known@a.test>", 250, "2.1.5")

	e.dir.setErr(fmt.Errorf("%w: every server timed out", directory.ErrUnavailable))
	start := time.Now()
	c.expect("RCPT TO:<known@a.test>", 451, "4.3.0 Directory unavailable, try again later")
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("451 took %v", d)
	}
	c.expect("QUIT", 221, "")
	logins, _, _, _ := e.obs.snapshot()
	want := []string{"lmtp:unknown_user", "lmtp:unknown_user", "lmtp:bad_name", "lmtp:no_node", "lmtp:ok", "lmtp:unavailable"}
	if !slices.Equal(logins, want) {
		t.Errorf("results %q, want %q", logins, want)
	}
}

// TestLimits: a message over MaxMessageSize gets 552 per recipient (and
// the session goes on), a recipient past MaxRecipients 452 4.5.3, a
// SIZE= over the maximum 552 at MAIL.
func TestLimits(t *testing.T) {
	l := getLab(t)
	e := newEnv(t, envOpts{opts: Options{MaxMessageSize: 10000, MaxRecipients: 2}}).withLab(l)
	c, _ := dial(t, e.addr, netip.Addr{})
	lhlo := c.expect("LHLO mta.test", 250, "")
	if !slices.Contains(lhlo.lines, "SIZE 10000") {
		t.Fatalf("LHLO %v lacks SIZE 10000", lhlo)
	}
	c.expect("MAIL FROM:<sender@example.org> SIZE=10001", 552, "5.3.4")
	c.expect("MAIL FROM:<sender@example.org> SIZE=10000", 250, "2.1.0")
	c.expect("RCPT TO:<alice@a.test>", 250, "2.1.5")
	c.expect("RCPT TO:<bob@b.test>", 250, "2.1.5")
	c.expect("RCPT TO:<carol@a.test>", 452, "4.5.3 Too many recipients")
	c.expect("DATA", 354, "")
	mark := marker(t)
	big := testMessage(mark) + strings.Repeat("x", 80) + "\r\n"
	for len(big) <= 10000 {
		big += strings.Repeat("y", 998) + "\r\n"
	}
	c.sendData(big)
	for _, rc := range []string{"alice@a.test", "bob@b.test"} {
		if r := c.reply(); r.code != 552 || !strings.HasPrefix(r.text(), "5.3.4 <"+rc+"> ") {
			t.Fatalf("%s: %v, want 552 5.3.4", rc, r)
		}
	}
	c.expect("NOOP", 250, "2.0.0")
	// Exactly the maximum is fine.
	c.expect("MAIL FROM:<sender@example.org>", 250, "2.1.0")
	c.expect("RCPT TO:<alice@a.test>", 250, "2.1.5")
	c.expect("DATA", 354, "")
	exact := testMessage(mark + "-exact")
	exact += strings.Repeat("z", 10000-len(exact)-2) + "\r\n"
	c.sendData(exact)
	if r := c.reply(); r.code != 250 {
		t.Fatalf("a message of exactly the maximum: %v", r)
	}
	c.expect("QUIT", 221, "")
	if n := len(copies(t, l.nodes["node-a"], "alice@a.test", mark)); n != 1 {
		t.Fatalf("alice has %d copies, want 1 (the one within the limit)", n)
	}
}

// TestSetOptions: a reload's new limits (SetOptions) apply to sessions
// that start afterwards; a session in progress keeps the limits it was
// offered; what the handler learned about the nodes survives.
func TestSetOptions(t *testing.T) {
	l := getLab(t)
	e := newEnv(t, envOpts{opts: Options{MaxMessageSize: 10000, MaxRecipients: 2}}).withLab(l)
	old, _ := dial(t, e.addr, netip.Addr{})
	if r := old.expect("LHLO mta.test", 250, ""); !slices.Contains(r.lines, "SIZE 10000") || slices.Contains(r.lines, "8BITMIME") {
		t.Fatalf("first LHLO: %v", r)
	}
	mark := marker(t)
	old.expect("MAIL FROM:<sender@example.org>", 250, "2.1.0")
	old.expect("RCPT TO:<alice@a.test>", 250, "2.1.5")
	old.expect("DATA", 354, "")
	old.sendData(testMessage(mark, "alice@a.test"))
	if r := old.reply(); r.code != 250 {
		t.Fatalf("delivery before the change: %v", r)
	}

	e.h.SetOptions(Options{MaxMessageSize: 20000, MaxRecipients: 1})
	if o := e.h.Options(); o.MaxMessageSize != 20000 || o.MaxRecipients != 1 {
		t.Fatalf("Options() = %+v", o)
	}
	// The old session keeps SIZE 10000 and two recipients.
	old.expect("MAIL FROM:<sender@example.org> SIZE=15000", 552, "5.3.4")
	old.expect("MAIL FROM:<sender@example.org>", 250, "2.1.0")
	old.expect("RCPT TO:<alice@a.test>", 250, "2.1.5")
	old.expect("RCPT TO:<carol@a.test>", 250, "2.1.5")
	old.expect("RSET", 250, "")
	old.expect("QUIT", 221, "")

	// A new session gets the new limits, and 8BITMIME: node-a's
	// capabilities were learned before the change and are kept.
	c, _ := dial(t, e.addr, netip.Addr{})
	if r := c.expect("LHLO mta.test", 250, ""); !slices.Contains(r.lines, "SIZE 20000") || !slices.Contains(r.lines, "8BITMIME") {
		t.Fatalf("LHLO after SetOptions: %v", r)
	}
	c.expect("MAIL FROM:<sender@example.org> SIZE=15000", 250, "2.1.0")
	c.expect("RCPT TO:<alice@a.test>", 250, "2.1.5")
	c.expect("RCPT TO:<carol@a.test>", 452, "4.5.3")
	c.expect("QUIT", 221, "")

	// Zero options take the defaults.
	e.h.SetOptions(Options{})
	if o := e.h.Options(); o.MaxMessageSize != DefaultMaxMessageSize || o.MaxRecipients != DefaultMaxRecipients {
		t.Fatalf("defaults: %+v", o)
	}
}

// TestPipelining: MAIL, three RCPTs and DATA in one write; the replies
// come back in order, then the message and its three replies.
func TestPipelining(t *testing.T) {
	l := getLab(t)
	e := newEnv(t, envOpts{}).withLab(l)
	mark := marker(t)
	rcpts := []string{"erin@a.test", "frank@b.test", "grace@a.test"}
	msg := testMessage(mark, rcpts...)
	c, _ := dial(t, e.addr, netip.Addr{})
	lhlo := c.expect("LHLO mta.test", 250, "")
	if !slices.Contains(lhlo.lines, "PIPELINING") || !slices.Contains(lhlo.lines, "ENHANCEDSTATUSCODES") {
		t.Fatalf("LHLO %v", lhlo)
	}
	c.write("MAIL FROM:<sender@example.org>\r\nRCPT TO:<erin@a.test>\r\nRCPT TO:<frank@b.test>\r\nRCPT TO:<grace@a.test>\r\nDATA\r\n")
	for i, want := range []int{250, 250, 250, 250, 354} {
		if r := c.reply(); r.code != want {
			t.Fatalf("reply %d: %v, want %d", i, r, want)
		}
	}
	// The message and the next transaction's commands in one write too.
	c.write(stuff(msg) + ".\r\nRSET\r\nNOOP\r\n")
	for _, rc := range rcpts {
		if r := c.reply(); r.code != 250 || !strings.Contains(r.text(), "<"+rc+">") {
			t.Fatalf("%s: %v", rc, r)
		}
	}
	c.expect("QUIT", 250, "2.0.0") // RSET's answer
	if r := c.reply(); r.code != 250 {
		t.Fatalf("NOOP: %v", r)
	}
	if r := c.reply(); r.code != 221 {
		t.Fatalf("QUIT: %v", r)
	}
	checkDelivered(t, l, msg, mark, rcpts...)
}

// TestSwaksPipelineTLS: swaks with STARTTLS (verifying the router's
// certificate) and PIPELINING.
func TestSwaksPipelineTLS(t *testing.T) {
	peer.Require(t, "swaks")
	if out, _ := exec.Command("swaks", "--support").CombinedOutput(); !strings.Contains(string(out), "TLS supported") {
		t.Fatal("swaks without TLS support (libnet-ssleay-perl): run deploy/install-deps.sh")
	}
	l := getLab(t)
	e := newEnv(t, envOpts{}).withLab(l)
	mark := marker(t)
	rcpts := []string{"ivan@a.test", "bob@b.test"}
	msg := testMessage(mark, rcpts...)
	file := swaksFile(t, msg)
	out, err := exec.Command("swaks", "--protocol", "LMTP", "--server", e.host, "--port", fmt.Sprint(e.port),
		"--tls", "--tls-verify", "--tls-ca-path", e.caFile, "--pipeline", "--helo", "mta.example.test",
		"--from", "sender@example.org", "--to", strings.Join(rcpts, ","), "--data", "@"+file, "--timeout", "30").CombinedOutput()
	t.Logf("swaks:\n%s", out)
	if err != nil {
		t.Fatalf("swaks: %v", err)
	}
	if !strings.Contains(string(out), "TLS started") {
		t.Fatalf("swaks did not start TLS")
	}
	checkDelivered(t, l, msg, mark, rcpts...)
}

// TestSTARTTLS: STARTTLS is offered with a certificate, not without, not
// twice; plaintext pipelined after STARTTLS is discarded
// (CVE-2011-0411); the session starts over after the handshake.
func TestSTARTTLS(t *testing.T) {
	e := newEnv(t, envOpts{})
	c, _ := dial(t, e.addr, netip.Addr{})
	if r := c.expect("LHLO mta.test", 250, ""); !slices.Contains(r.lines, "STARTTLS") {
		t.Fatalf("LHLO %v lacks STARTTLS", r)
	}
	c.write("STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
	if r := c.reply(); r.code != 220 {
		t.Fatalf("STARTTLS: %v", r)
	}
	c.starttls(e.client)
	// The injected MAIL was dropped: MAIL now needs LHLO first.
	c.expect("MAIL FROM:<sender@example.org>", 503, "5.5.1 Send LHLO first")
	if r := c.expect("LHLO mta.test", 250, ""); slices.Contains(r.lines, "STARTTLS") {
		t.Fatalf("STARTTLS offered again: %v", r)
	}
	c.expect("STARTTLS", 503, "5.5.1")
	c.expect("QUIT", 221, "")

	e2 := newEnv(t, envOpts{noTLS: true})
	c2, _ := dial(t, e2.addr, netip.Addr{})
	if r := c2.expect("LHLO mta.test", 250, ""); slices.Contains(r.lines, "STARTTLS") {
		t.Fatalf("STARTTLS offered without a certificate: %v", r)
	}
	c2.expect("STARTTLS", 502, "5.5.1")
}

// TestCommands: the small commands, sequence errors, parameters that were
// not offered, and the bad-command limit.
func TestCommands(t *testing.T) {
	e := newEnv(t, envOpts{limits: proxy.Limits{MaxBadCommands: 3}})
	e.dir.set("x@a.test", "a")
	e.nodes.setIsland("a", proxy.IslandSettings{}, proxy.NodeInfo{Name: "n1", Addr: netip.MustParseAddrPort("127.0.0.1:1"), Healthy: true})
	c, _ := dial(t, e.addr, netip.Addr{})
	c.expect("MAIL FROM:<a@b.test>", 503, "5.5.1 Send LHLO first")
	c.expect("NOOP", 250, "2.0.0")
	c.expect("VRFY x@a.test", 252, "2.5.0")
	c.expect("HELP", 214, "2.0.0")
	lhlo := c.expect("LHLO mta.test", 250, "")
	// Nothing learned about the nodes yet: the conservative set.
	if want := []string{"router.test", "PIPELINING", "ENHANCEDSTATUSCODES", "SIZE 52428800", "STARTTLS"}; !slices.Equal(lhlo.lines, want) {
		t.Fatalf("LHLO %q, want %q", lhlo.lines, want)
	}
	c.expect("RCPT TO:<x@a.test>", 503, "5.5.1 MAIL first")
	c.expect("DATA", 503, "5.5.1 MAIL first")
	c.expect("MAIL FROM:<a@b.test> BODY=8BITMIME", 555, "5.5.4")
	c.expect("MAIL FROM:<a@b.test> SMTPUTF8", 555, "5.5.4")
	c.expect("MAIL FROM:<a@b.test> FOO=bar", 555, "5.5.4")
	c.expect("MAIL FROM:<grüße@b.test>", 553, "5.6.7")
	c.expect("MAIL FROM: <a@b.test> BODY=7BIT SIZE=100", 250, "2.1.0")
	c.expect("MAIL FROM:<a@b.test>", 503, "5.5.1 Nested MAIL command")
	c.expect("DATA", 554, "5.5.1 No valid recipients")
	c.expect("RCPT TO:<x@a.test> NOTIFY=NEVER", 555, "5.5.4")
	c.expect("RSET", 250, "2.0.0")
	c.expect("RCPT TO:<x@a.test>", 503, "5.5.1")
	c.expect("EHLO mta.test", 500, "5.5.1 This is an LMTP server: use LHLO")
	c.expect("MAIL FROM:a@b.test", 501, "5.5.4")
	r := c.cmd("BOGUS")
	if r.code != 421 || !strings.HasPrefix(r.text(), "4.7.0") {
		t.Fatalf("third bad command: %v, want 421", r)
	}
	c.expectEOF(2 * time.Second)
}

// TestIdleTimeout: a client silent past PreLoginTimeout gets 421.
func TestIdleTimeout(t *testing.T) {
	e := newEnv(t, envOpts{limits: proxy.Limits{PreLoginTimeout: 300 * time.Millisecond}})
	c, _ := dial(t, e.addr, netip.Addr{})
	start := time.Now()
	r := c.reply()
	if r.code != 421 || time.Since(start) > 3*time.Second {
		t.Fatalf("got %v after %v", r, time.Since(start))
	}
	c.expectEOF(2 * time.Second)
}

// TestLineTooLong: a command line over MaxLine ends the session.
func TestLineTooLong(t *testing.T) {
	e := newEnv(t, envOpts{limits: proxy.Limits{MaxLine: 600}})
	c, _ := dial(t, e.addr, netip.Addr{})
	c.write("NOOP " + strings.Repeat("x", 700) + "\r\n")
	if r := c.reply(); r.code != 500 {
		t.Fatalf("got %v", r)
	}
	c.expectEOF(2 * time.Second)
}

// TestCapabilitiesLearned: 8BITMIME is offered once the nodes seen offer
// it (Dovecot does); SMTPUTF8 never (Dovecot 2.3 does not offer it).
func TestCapabilitiesLearned(t *testing.T) {
	l := getLab(t)
	e := newEnv(t, envOpts{}).withLab(l)
	c, _ := dial(t, e.addr, netip.Addr{})
	if r := c.expect("LHLO mta.test", 250, ""); slices.Contains(r.lines, "8BITMIME") {
		t.Fatalf("8BITMIME offered before any node was seen: %v", r)
	}
	mark := marker(t)
	msg := testMessage(mark, "alice@a.test", "bob@b.test")
	c.expect("MAIL FROM:<sender@example.org>", 250, "")
	c.expect("RCPT TO:<alice@a.test>", 250, "")
	c.expect("RCPT TO:<bob@b.test>", 250, "")
	c.expect("DATA", 354, "")
	c.sendData(msg)
	c.reply()
	c.reply()
	r := c.expect("LHLO mta.test", 250, "")
	if !slices.Contains(r.lines, "8BITMIME") || slices.Contains(r.lines, "SMTPUTF8") {
		t.Fatalf("after delivering to both nodes: %v", r)
	}
	c.expect("MAIL FROM:<sender@example.org> BODY=8BITMIME", 250, "2.1.0")
	c.expect("MAIL FROM:<x@y.test>", 503, "")
	c.expect("QUIT", 221, "")
}

// TestNodeFailsMidTransaction: one island's node takes the message then
// hangs up, another's answers garbage, a third's stalls past NodeTimeout:
// their recipients get 451 4.4.2, the real node's recipients keep their
// 250.
func TestNodeFailsMidTransaction(t *testing.T) {
	l := getLab(t)
	e := newEnv(t, envOpts{opts: Options{NodeTimeout: time.Second}}).withLab(l)
	hangup := newFakeNode(t, fakeLMTP(func(c net.Conn, rcpts []string) { c.Close() }))
	garbage := newFakeNode(t, fakeLMTP(func(c net.Conn, rcpts []string) { io.WriteString(c, "HELLO THERE\r\n") }))
	stall := newFakeNode(t, fakeLMTP(func(c net.Conn, rcpts []string) { time.Sleep(3 * time.Second) }))
	// Partial: answers the first recipient, then hangs up.
	partial := newFakeNode(t, fakeLMTP(func(c net.Conn, rcpts []string) {
		fmt.Fprintf(c, "250 2.0.0 <%s> fake saved\r\n", rcpts[0])
		c.Close()
	}))
	for island, f := range map[string]*fakeNode{"h": hangup, "g": garbage, "s": stall, "p": partial} {
		e.nodes.setIsland(island, proxy.IslandSettings{}, proxy.NodeInfo{Name: "fake-" + island, Addr: f.addr(), Healthy: true})
		e.dir.set("u1@"+island+".test", island)
		e.dir.set("u2@"+island+".test", island)
	}
	mark := marker(t)
	order := []string{"u1@h.test", "alice@a.test", "u1@g.test", "u1@s.test", "u1@p.test", "bob@b.test", "u2@p.test"}
	msg := testMessage(mark, order...)
	c, _ := dial(t, e.addr, netip.Addr{})
	c.expect("LHLO mta.test", 250, "")
	c.expect("MAIL FROM:<sender@example.org>", 250, "")
	for _, rc := range order {
		c.expect("RCPT TO:<"+rc+">", 250, "2.1.5")
	}
	c.expect("DATA", 354, "")
	start := time.Now()
	c.sendData(msg)
	for _, rc := range order {
		r := c.reply()
		switch {
		case rc == "alice@a.test" || rc == "bob@b.test":
			if r.code != 250 || !strings.HasPrefix(r.text(), "2.0.0 <"+rc+"> ") {
				t.Errorf("%s: %v, want the node's 250", rc, r)
			}
		case rc == "u1@p.test":
			if r.code != 250 || r.text() != "2.0.0 <u1@p.test> fake saved" {
				t.Errorf("%s: %v, want the fake's 250 (it answered before hanging up)", rc, r)
			}
		default:
			if r.code != 451 || !strings.HasPrefix(r.text(), "4.4.2 <"+rc+"> The server of island ") {
				t.Errorf("%s: %v, want 451 4.4.2", rc, r)
			}
		}
	}
	if d := time.Since(start); d > 2500*time.Millisecond {
		t.Errorf("replies took %v: the stalled node held them past NodeTimeout", d)
	}
	c.expect("QUIT", 221, "")
	checkDelivered(t, l, msg, mark, "alice@a.test", "bob@b.test")
}

// TestNextNode: a node that cannot be reached, or refuses the connection
// with a 421 greeting, is skipped for the island's next node; with no
// node left, 451 4.4.1. The node's RCPT refusal is relayed as is.
func TestNextNode(t *testing.T) {
	l := getLab(t)
	e := newEnv(t, envOpts{}).withLab(l)
	busy := newFakeNode(t, func(c net.Conn, r *bufio.Reader, f *fakeNode) { io.WriteString(c, "421 4.3.2 busy\r\n") })
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().(*net.TCPAddr).AddrPort()
	dead.Close()
	real := proxy.NodeInfo{Name: "node-a", Addr: lmtpAddr(l.nodes["node-a"]), Healthy: true}
	e.nodes.setIsland("a", proxy.IslandSettings{}, proxy.NodeInfo{Name: "dead", Addr: deadAddr, Healthy: true},
		proxy.NodeInfo{Name: "busy", Addr: busy.addr(), Healthy: true}, real)
	// A user the rendezvous hash sends to a broken node first.
	var user string
	for u := range usersA {
		r, err := e.core.Route(context.Background(), "lmtp", u)
		if err != nil {
			t.Fatal(err)
		}
		if r.Nodes[0].Name != "node-a" && r.Nodes[1].Name != "node-a" {
			user = u
			break
		}
	}
	if user == "" {
		t.Fatal("no test user is routed to the broken nodes first; add users")
	}
	e.nodes.setIsland("z", proxy.IslandSettings{}, proxy.NodeInfo{Name: "dead", Addr: deadAddr, Healthy: true})
	e.dir.set("zed@z.test", "z")
	e.dir.set("ghost@a.test", "a") // the directory knows it, the node does not
	mark := marker(t)
	msg := testMessage(mark, user)
	c, _ := dial(t, e.addr, netip.Addr{})
	c.expect("LHLO mta.test", 250, "")
	c.expect("MAIL FROM:<sender@example.org>", 250, "")
	c.expect("RCPT TO:<"+user+">", 250, "")
	c.expect("RCPT TO:<zed@z.test>", 250, "")
	c.expect("RCPT TO:<ghost@a.test>", 250, "")
	c.expect("DATA", 354, "")
	c.sendData(msg)
	if r := c.reply(); r.code != 250 {
		t.Fatalf("%s: %v", user, r)
	}
	if r := c.reply(); r.code != 451 || !strings.HasPrefix(r.text(), "4.4.1 <zed@z.test> No server of island z") {
		t.Fatalf("zed: %v", r)
	}
	if r := c.reply(); r.code != 550 || !strings.HasPrefix(r.text(), "5.1.1 <ghost@a.test> User doesn't exist") {
		t.Fatalf("ghost: %v, want node-a's own 550", r)
	}
	c.expect("QUIT", 221, "")
	if n := len(copies(t, l.nodes["node-a"], user, mark)); n != 1 {
		t.Fatalf("%s has %d copies", user, n)
	}
	_, deliveries, _, _ := e.obs.snapshot()
	slices.Sort(deliveries)
	if want := []string{"a:delivered", "a:rejected", "z:node_failed"}; !slices.Equal(deliveries, want) {
		t.Errorf("deliveries %q, want %q", deliveries, want)
	}
}

// TestLargeMessageSpooledToDisk: a message past the in-memory spool goes
// through a temporary file and arrives intact on both islands.
func TestLargeMessageSpooledToDisk(t *testing.T) {
	l := getLab(t)
	e := newEnv(t, envOpts{}).withLab(l)
	mark := marker(t)
	var b strings.Builder
	b.WriteString(testMessage(mark, "carol@a.test", "dave@b.test"))
	line := strings.Repeat("abcdefghij", 7) + "\r\n"
	for b.Len() < memSpool+memSpool/2 {
		b.WriteString(line)
	}
	msg := b.String()
	c, _ := dial(t, e.addr, netip.Addr{})
	c.expect("LHLO mta.test", 250, "")
	c.expect("MAIL FROM:<sender@example.org>", 250, "")
	c.expect("RCPT TO:<carol@a.test>", 250, "")
	c.expect("RCPT TO:<dave@b.test>", 250, "")
	c.expect("DATA", 354, "")
	c.sendData(msg)
	c.reply()
	c.reply()
	checkDelivered(t, l, msg, mark, "carol@a.test", "dave@b.test")
}

// TestNodeRefusalsRelayed: a node's permanent refusal of the sender or
// of the message is its island's answer, relayed as is; a temporary
// refusal of the sender sends the island to its next node.
func TestNodeRefusalsRelayed(t *testing.T) {
	e := newEnv(t, envOpts{})
	saved := func(c net.Conn, rcpts []string) {
		for _, r := range rcpts {
			fmt.Fprintf(c, "250 2.0.0 <%s> fake saved\r\n", r)
		}
	}
	noSender := newFakeNode(t, fakeLMTPWith(fakeReplies{mail: "550 5.7.1 Sender rejected by policy"}, saved))
	noData := newFakeNode(t, fakeLMTPWith(fakeReplies{data: "554 5.6.0 Message refused"}, saved))
	later := newFakeNode(t, fakeLMTPWith(fakeReplies{mail: "451 4.3.0 Try later"}, saved))
	good := newFakeNode(t, fakeLMTP(saved))
	e.nodes.setIsland("m", proxy.IslandSettings{}, proxy.NodeInfo{Name: "m1", Addr: noSender.addr(), Healthy: true})
	e.nodes.setIsland("d", proxy.IslandSettings{}, proxy.NodeInfo{Name: "d1", Addr: noData.addr(), Healthy: true})
	// Both nodes of island t, whatever order the hash gives: "later"
	// refuses every MAIL, so the message ends on "good" either way.
	e.nodes.setIsland("t", proxy.IslandSettings{}, proxy.NodeInfo{Name: "t1", Addr: later.addr(), Healthy: true},
		proxy.NodeInfo{Name: "t2", Addr: good.addr(), Healthy: true})
	for _, u := range []string{"u@m.test", "u@d.test", "u@t.test", "v@t.test"} {
		e.dir.set(u, u[2:3])
	}
	c, _ := dial(t, e.addr, netip.Addr{})
	c.expect("LHLO mta.test", 250, "")
	c.expect("MAIL FROM:<sender@example.org>", 250, "")
	for _, u := range []string{"u@m.test", "u@t.test", "u@d.test", "v@t.test"} {
		c.expect("RCPT TO:<"+u+">", 250, "")
	}
	c.expect("DATA", 354, "")
	c.sendData(testMessage(marker(t)))
	for _, want := range []string{
		"550 5.7.1 Sender rejected by policy",
		"250 2.0.0 <u@t.test> fake saved",
		"554 5.6.0 Message refused",
		"250 2.0.0 <v@t.test> fake saved",
	} {
		if r := c.reply(); fmt.Sprintf("%d %s", r.code, r.text()) != want {
			t.Fatalf("got %v, want %q", r, want)
		}
	}
	c.expect("QUIT", 221, "")
	// The fake that refused MAIL never saw a recipient.
	for _, l := range later.lines() {
		if strings.HasPrefix(l, "RCPT") {
			t.Fatalf("the node that refused MAIL got %q", l)
		}
	}
}

// TestNodeConnectionKept: transactions of one client session reuse the
// island's node connection (one connect, one LHLO); a transaction whose
// recipients were all refused leaves the node's transaction open, so the
// next starts with RSET; when the node has closed the kept connection,
// the next transaction dials anew and is delivered, not deferred; the
// client's QUIT ends the kept connection with QUIT.
func TestNodeConnectionKept(t *testing.T) {
	e := newEnv(t, envOpts{})
	var conns, txs atomic.Int32
	var refused atomic.Bool
	saved := func(c net.Conn, rcpts []string) {
		for _, r := range rcpts {
			fmt.Fprintf(c, "250 2.0.0 <%s> saved\r\n", r)
		}
	}
	kept := fakeLMTP(func(c net.Conn, rcpts []string) {
		saved(c, rcpts)
		if txs.Add(1) == 3 {
			c.Close() // the node ends the idle connection
		}
	})
	refusing := fakeLMTPWith(fakeReplies{rcpt: "550 5.1.1 no such user"}, saved)
	f := newFakeNode(t, func(c net.Conn, r *bufio.Reader, f *fakeNode) {
		conns.Add(1)
		if refused.CompareAndSwap(true, false) {
			refusing(c, r, f) // every recipient until RSET
			return
		}
		kept(c, r, f)
	})
	e.nodes.setIsland("k", proxy.IslandSettings{}, proxy.NodeInfo{Name: "fake-k", Addr: f.addr(), Healthy: true})
	for _, u := range []string{"u1@k.test", "u2@k.test"} {
		e.dir.set(u, "k")
	}
	c, _ := dial(t, e.addr, netip.Addr{})
	c.expect("LHLO mta.test", 250, "")
	send := func(rcpt string, want int) {
		t.Helper()
		c.expect("MAIL FROM:<sender@example.org>", 250, "")
		c.expect("RCPT TO:<"+rcpt+">", 250, "")
		c.expect("DATA", 354, "")
		c.sendData(testMessage(marker(t), rcpt))
		if r := c.reply(); r.code != want {
			t.Fatalf("%s: %v, want %d", rcpt, r, want)
		}
	}
	send("u1@k.test", 250)
	send("u2@k.test", 250)
	if n := conns.Load(); n != 1 {
		t.Fatalf("two transactions took %d node connections, want 1", n)
	}
	send("u1@k.test", 250) // the fake closes the connection after this one
	send("u2@k.test", 250) // so this one dials anew
	if n := conns.Load(); n != 2 {
		t.Fatalf("after the node closed the kept connection: %d node connections, want 2", n)
	}
	c.expect("QUIT", 221, "")

	// A node session whose recipients were all refused is reset before
	// the next transaction on it.
	refused.Store(true)
	c, _ = dial(t, e.addr, netip.Addr{})
	c.expect("LHLO mta.test", 250, "")
	send("u1@k.test", 550)
	send("u2@k.test", 250)
	c.expect("QUIT", 221, "")
	if n := conns.Load(); n != 3 {
		t.Errorf("%d node connections in all, want 3", n)
	}
	f.mu.Lock()
	seen := slices.Clone(f.seen)
	f.mu.Unlock()
	var lhlo, rset int
	for _, l := range seen {
		switch verb, _, _ := strings.Cut(l, " "); verb {
		case "LHLO":
			lhlo++
		case "RSET":
			rset++
		}
	}
	// Two LHLO per connection (ours, then go-smtp's) and one more after
	// the RSET (go-smtp's Reset forgets the LHLO).
	if lhlo != 7 || rset != 1 {
		t.Errorf("the node saw %d LHLO (want 7) and %d RSET (want 1):\n%s", lhlo, rset, strings.Join(seen, "\n"))
	}
	// The last connection ends with QUIT once the client has quit.
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.mu.Lock()
		last := f.seen[len(f.seen)-1]
		f.mu.Unlock()
		if last == "QUIT" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kept node connection did not get QUIT; last command %q", last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStalledKeptNodeDoesNotDelay: a kept node connection that may not
// serve the next transaction (the MTA said LHLO with another name) is
// ended with QUIT off the delivery path: the node keeps its QUIT answer,
// and the next transaction is answered while that connection is still
// open; the session's end then waits for it to close.
func TestStalledKeptNodeDoesNotDelay(t *testing.T) {
	e := newEnv(t, envOpts{})
	var quits, closed atomic.Int32
	stall := func(c net.Conn, r *bufio.Reader) {
		quits.Add(1)
		io.Copy(io.Discard, r) // no answer; until atoll closes
		closed.Add(1)
	}
	f := newFakeNode(t, fakeLMTPWith(fakeReplies{quit: stall}, func(c net.Conn, rcpts []string) {
		for _, r := range rcpts {
			fmt.Fprintf(c, "250 2.0.0 <%s> saved\r\n", r)
		}
	}))
	e.nodes.setIsland("k", proxy.IslandSettings{}, proxy.NodeInfo{Name: "fake-k", Addr: f.addr(), Healthy: true})
	e.dir.set("u1@k.test", "k")
	c, _ := dial(t, e.addr, netip.Addr{})
	send := func() {
		t.Helper()
		c.expect("MAIL FROM:<sender@example.org>", 250, "")
		c.expect("RCPT TO:<u1@k.test>", 250, "")
		c.expect("DATA", 354, "")
		c.sendData(testMessage(marker(t), "u1@k.test"))
		if r := c.reply(); r.code != 250 {
			t.Fatalf("delivery: %v, want 250", r)
		}
	}
	c.expect("LHLO mta.test", 250, "")
	send()
	c.expect("LHLO other.test", 250, "")
	send()
	if n := closed.Load(); n != 0 {
		t.Fatalf("when the second delivery was answered, %d stalled node connection(s) had been closed: the delivery waited for the QUIT answer", n)
	}
	c.expect("QUIT", 221, "")
	deadline := time.Now().Add(10 * time.Second)
	for closed.Load() != 2 || quits.Load() != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("after the session ended: %d QUIT sent, %d connections closed; want 2 and 2", quits.Load(), closed.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
