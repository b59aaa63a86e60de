package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab"
	"github.com/atoll-lb/atoll/deploy/lab/peer"
	"github.com/atoll-lb/atoll/userspace/api"
)

// The MTA's own address on the client host: Postfix listens there and
// delivers from there.
var mtaAddr = netip.MustParseAddr("192.0.2.25")

// Recipients of the LMTP tests: each lives on one island; each island's
// Dovecot knows only its own users, by full address (as LMTP names them).
var lmtpUsers = []struct {
	uid, island, password string
}{
	{"amy", "a", "amy-pw"},
	{"ben", "b", "ben-pw"},
	{"cat", "a", "cat-pw"},
}

func lmtpMail(uid string) string { return uid + "@example.org" }

type lmtpEnv struct {
	*env
	slapd   *peer.Slapd
	postfix *peer.Postfix
	nodeCA  string
	ldapPW  string
}

type lmtpCfg struct {
	MaxSize, MaxRcpts int
}

var lmtpCfgTmpl = template.Must(template.New("cfg").Parse(`# written by the LMTP e2e test
dataplane:
  interfaces: [eth0]
  pin_path: {{.Pin}}
  conntrack_size: 65536
  source_v4: {{.SrcV4}}
  source_v6: {{.SrcV6}}
health:
  interval: 1s
  timeout: 800ms
  jitter: 100ms
  rise: 2
  fall: 2
  tls: {ca_file: {{.NodeCA}}}
metrics:
  listen: 127.0.0.1:9742
api:
  socket: {{.Socket}}
proxy:
  hostname: front.example.org
  lmtp: {max_message_size: {{.MaxSize}}, max_recipients: {{.MaxRcpts}}}
directory:
  ldap:
    urls: [{{.LDAP}}]
    bind_dn: "{{.BindDN}}"
    password_file: {{.PWFile}}
    base_dn: "{{.BaseDN}}"
    filter: "(|(uid=%u)(mail=%u))"
    attribute: mailIsland
    timeout: 1s
islands:
  - name: a
    nodes:
{{- range .A}}
      - name: {{.Name}}
        addresses: [{{.V4}}, {{.V6}}]
{{- end}}
  - name: b
    proxy: {tls: starttls}
    nodes:
{{- range .B}}
      - name: {{.Name}}
        addresses: [{{.V4}}, {{.V6}}]
        ports: {lmtp: 10024}
{{- end}}
services:
  - {name: lmtp, vips: [{{.Front}}], protocol: lmtp, forwarding: ipip, routing: login}
`))

// newLMTPEnv: two islands of two Dovecot LMTP nodes (island b reached
// with STARTTLS), slapd on the servers host, `atoll run` (XDP data plane)
// with the LMTP router on the front-door VIP (island b's nodes on the
// port their ports.lmtp names), and a private Postfix on the
// client host that relays everything with `lmtp:` to that VIP.
func newLMTPEnv(t *testing.T) *lmtpEnv {
	t.Helper()
	requireRoot(t)
	l, err := lab.New(lab.Config{Prefix: "atl-lm", Islands: 2, NoBalancer: true, Servers: true})
	must(t, err)
	t.Cleanup(func() { l.Close() })
	dir := t.TempDir()
	e := &lmtpEnv{env: &env{t: t, lab: l, dir: dir, cfgPath: filepath.Join(dir, "atoll.yaml"), socket: filepath.Join(dir, "atoll.sock"),
		// The test's own temp dir name (TestLMTPE2EPostfix<random>), not
		// t.TempDir()'s "001": concurrent runs must not share pinned state.
		pin: "/sys/fs/bpf/atoll-lm-" + filepath.Base(filepath.Dir(dir)), dovecot: map[string]*peer.Dovecot{}}}
	t.Cleanup(func() { exec.Command(atollBin, "reset", "-yes", "-pin", e.pin).Run() })

	// The LB holds the front-door VIP, so the flows the data plane passes
	// reach the router; the MTA gets its own address on the client host.
	must(t, l.LB.AddAddr("lo", netip.PrefixFrom(frontVIP, 32)))
	must(t, l.Client.AddAddr("eth0", netip.PrefixFrom(mtaAddr, 24)))

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var users []peer.LDAPUser
	for _, u := range lmtpUsers {
		users = append(users, peer.LDAPUser{UID: u.uid, Mail: lmtpMail(u.uid), Password: u.password, Island: u.island})
	}
	e.slapd, err = peer.StartSlapd(ctx, peer.SlapdOptions{
		Dir: filepath.Join(dir, "slapd"), Listen: []netip.AddrPort{netip.AddrPortFrom(lab.ServerV4.Addr(), 389)}, Users: users,
		Command: func(name string, args ...string) *exec.Cmd {
			return l.Servers.Command(context.Background(), name, args...)
		},
		Dial: l.Servers.DialContext,
	})
	must(t, err)
	t.Cleanup(func() { e.slapd.Stop() })

	// Every node: LMTP on 24 (island b: on 10024, which the config's
	// ports.lmtp names) and IMAP on 143 (to read the mail back); XCLIENT
	// (login_trusted_networks) for the LB host's addresses.
	lbNets := []netip.Prefix{netip.PrefixFrom(lab.LBV4.Addr(), 32), netip.PrefixFrom(lab.LBV6.Addr(), 128)}
	var ca []byte
	for _, n := range l.Nodes {
		mine := map[string]string{}
		for _, u := range lmtpUsers {
			if u.island == n.Island {
				mine[lmtpMail(u.uid)] = u.password
			}
		}
		lmtpPort := 24
		if n.Island == "b" {
			lmtpPort = 10024
		}
		d, err := peer.StartDovecot(ctx, peer.DovecotOptions{
			Dir: filepath.Join(dir, "dovecot-"+n.Name), Name: n.Name, Listen: []netip.Addr{n.V4, n.V6},
			Ports: peer.DovecotPorts{IMAP: 143, LMTP: lmtpPort, POP3: -1, IMAPS: -1, POP3S: -1, LMTPS: -1},
			Users: mine, TLS: true,
			Command: func(name string, args ...string) *exec.Cmd {
				return n.NS.Command(context.Background(), name, args...)
			},
			Dial:         n.NS.DialContext,
			LoginTrusted: lbNets,
		})
		must(t, err)
		t.Cleanup(func() { d.Stop() })
		e.dovecot[n.Name] = d
		ca = append(ca, d.CertPEM...)
	}
	e.nodeCA = filepath.Join(dir, "nodes-ca.pem")
	must(t, os.WriteFile(e.nodeCA, ca, 0o644))
	e.ldapPW = filepath.Join(dir, "ldap.secret")
	must(t, os.WriteFile(e.ldapPW, []byte(peer.SlapdServicePassword+"\n"), 0o600))
	e.writeLMTPConfig(lmtpCfg{MaxSize: 10 << 20, MaxRcpts: 100})
	e.startDaemon()
	e.client = api.NewClient(e.socket)
	e.waitLMTPNodesUp()

	e.postfix, err = peer.StartPostfix(ctx, peer.PostfixOptions{
		Dir:      filepath.Join(dir, "postfix"),
		Listen:   netip.AddrPortFrom(mtaAddr, 25),
		Hostname: "mta.example.org",
		// The test submits from the client host's first address.
		MyNetworks: []netip.Prefix{netip.PrefixFrom(mtaAddr, 32), lab.ClientV4.Masked()},
		Relay:      "inet:" + netip.AddrPortFrom(frontVIP, 24).String(),
		Command: func(name string, args ...string) *exec.Cmd {
			return l.Client.Command(context.Background(), name, args...)
		},
		Dial: l.Client.DialContext,
	})
	must(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("postfix maillog:\n%s", tailLines(e.postfix.Log(), 40))
		}
		e.postfix.Stop()
	})
	return e
}

func (e *lmtpEnv) writeLMTPConfig(c lmtpCfg) {
	e.t.Helper()
	var a, b []*lab.Node
	for _, n := range e.lab.Nodes {
		if n.Island == "a" {
			a = append(a, n)
		} else {
			b = append(b, n)
		}
	}
	f, err := os.Create(e.cfgPath)
	must(e.t, err)
	defer f.Close()
	must(e.t, lmtpCfgTmpl.Execute(f, map[string]any{
		"Pin": e.pin, "Socket": e.socket, "SrcV4": lab.LBV4.Addr(), "SrcV6": lab.LBV6.Addr(), "NodeCA": e.nodeCA,
		"LDAP": e.slapd.URLs[0], "BindDN": e.slapd.ServiceDN(), "PWFile": e.ldapPW, "BaseDN": e.slapd.PeopleDN(),
		"A": a, "B": b, "Front": frontVIP, "MaxSize": c.MaxSize, "MaxRcpts": c.MaxRcpts,
	}))
}

// waitLMTPNodesUp waits until the LMTP service's checks (LHLO on every
// node, with STARTTLS on island b) have passed on every node.
func (e *lmtpEnv) waitLMTPNodesUp() {
	e.t.Helper()
	e.waitFor("every node of the lmtp service up", 30*time.Second, func(st api.Status) bool {
		n := 0
		for _, s := range st.Services {
			if s.Name != "lmtp" {
				continue
			}
			for _, nd := range s.Nodes {
				if nd.Health != "up" {
					return false
				}
				n++
			}
		}
		return n == len(e.lab.Nodes)
	})
}

// mailbox reads every message of user's INBOX on node n over IMAP
// (FETCH BODY.PEEK[]: the message as stored, CRLF line ends).
func (e *lmtpEnv) mailbox(t *testing.T, n *lab.Node, user, password string) [][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	conn, err := n.NS.DialContext(ctx, "tcp", netip.AddrPortFrom(n.V4, 143).String())
	cancel()
	must(t, err)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(conn)
	line := func() string {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("IMAP %s: read: %v (%q)", n.Name, err, l)
		}
		return l
	}
	if g := line(); !strings.HasPrefix(g, "* OK") {
		t.Fatalf("IMAP %s: greeting %q", n.Name, g)
	}
	var msgs [][]byte
	exists := 0
	existsRe, literalRe := regexp.MustCompile(`^\* (\d+) EXISTS`), regexp.MustCompile(`\{(\d+)\}\r\n$`)
	run := func(tag, cmd string) {
		fmt.Fprintf(conn, "%s %s\r\n", tag, cmd)
		for {
			l := line()
			if strings.HasPrefix(l, tag+" ") {
				if !strings.HasPrefix(l, tag+" OK") {
					t.Fatalf("IMAP %s: %s: %q", n.Name, cmd, l)
				}
				return
			}
			if m := existsRe.FindStringSubmatch(l); m != nil {
				exists, _ = strconv.Atoi(m[1])
			}
			if m := literalRe.FindStringSubmatch(l); m != nil {
				size, _ := strconv.Atoi(m[1])
				buf := make([]byte, size)
				if _, err := io.ReadFull(r, buf); err != nil {
					t.Fatalf("IMAP %s: literal: %v", n.Name, err)
				}
				msgs = append(msgs, buf)
			}
		}
	}
	run("a", fmt.Sprintf("LOGIN %s %s", user, password))
	run("b", "SELECT INBOX")
	if exists > 0 {
		run("c", "FETCH 1:* (BODY.PEEK[])")
	}
	run("d", "LOGOUT")
	return msgs
}

// traceHeaders checks that stored is msg with only trace header lines
// (Return-Path, Delivered-To, Received and their continuations, added by
// Postfix and the node) before it, and returns them.
func traceHeaders(t *testing.T, stored []byte, msg string) string {
	t.Helper()
	if !bytes.HasSuffix(stored, []byte(msg)) {
		t.Fatalf("stored message does not end with the message sent:\n--- stored ---\n%s\n--- sent ---\n%s", stored, msg)
	}
	prefix := string(stored[:len(stored)-len(msg)])
	for l := range strings.SplitAfterSeq(prefix, "\r\n") {
		if l == "" {
			continue
		}
		if !strings.HasPrefix(l, "Return-Path: ") && !strings.HasPrefix(l, "Delivered-To: ") &&
			!strings.HasPrefix(l, "Received: ") && !strings.HasPrefix(l, " ") && !strings.HasPrefix(l, "\t") {
			t.Fatalf("line %q before the message: more than trace headers were added, or the message changed:\n%s", l, prefix)
		}
	}
	return prefix
}

// lmtpMessage is a 7-bit message with what trips relays up: a line
// starting with a dot (dot-stuffed twice on the way, by Postfix and by
// atoll toward the node), a line of only a dot, a 990-byte line (Postfix
// itself folds lines over 998 bytes: lmtp_line_length_limit).
func lmtpMessage(mark string, to []string) string {
	var b strings.Builder
	b.WriteString("From: Sender <sender@example.net>\r\n")
	b.WriteString("To: " + strings.Join(to, ", ") + "\r\n")
	b.WriteString("Subject: through atoll " + mark + "\r\n")
	b.WriteString("Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n")
	b.WriteString("Message-ID: <" + mark + "@example.net>\r\n")
	b.WriteString("MIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: text/plain; charset=us-ascii\r\n")
	b.WriteString("\r\n")
	b.WriteString("Hello from Postfix through the LMTP island router.\r\n")
	b.WriteString(".\r\n")
	b.WriteString(".leading dot\r\n")
	b.WriteString(strings.Repeat("0123456789", 99) + "\r\n")
	b.WriteString("\r\n")
	b.WriteString("last line " + mark + "\r\n")
	return b.String()
}

// TestLMTPE2EPostfix (issue 5, test 4): a real Postfix relays one message
// with the lmtp: transport to atoll's LMTP VIP (a login service: the XDP
// data plane passes the flow to the router on the LB host). The message
// has three recipients on two islands, found in slapd; atoll delivers it
// in one transaction per island (island b over STARTTLS, on the port its
// nodes' ports.lmtp names) and each copy is
// read back over IMAP from exactly one node of the recipient's own island,
// byte for byte, with the node's Received header naming Postfix (XCLIENT),
// not atoll. Postfix logs the nodes' own replies; the metrics count the
// deliveries per island, one transaction of three recipients and its
// bytes. Then a reload lowers the LMTP limits: a new MTA session is
// offered the new SIZE and refused a third recipient (452 4.5.3), and is
// still offered 8BITMIME, which the router learned from the nodes before
// the reload (its handler survived it).
func TestLMTPE2EPostfix(t *testing.T) {
	e := newLMTPEnv(t)
	mark := fmt.Sprintf("lmtp-e2e-%d", time.Now().UnixNano())
	var rcpts []string
	for _, u := range lmtpUsers {
		rcpts = append(rcpts, lmtpMail(u.uid))
	}
	msg := lmtpMessage(mark, rcpts)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	qid, err := e.postfix.Send(ctx, "sender@example.net", rcpts, []byte(msg))
	must(t, err)
	if err := e.postfix.WaitDelivered(ctx, qid); err != nil {
		t.Fatal(err)
	}

	// Postfix saw atoll's VIP as the relay and the nodes' own replies.
	want := netip.AddrPortFrom(frontVIP, 24)
	relay := fmt.Sprintf("%v[%v]:%d", want.Addr(), want.Addr(), want.Port())
	for _, d := range e.postfix.Deliveries() {
		if d.QueueID != qid {
			continue
		}
		if d.Status != "sent" || d.Relay != relay || !strings.HasPrefix(d.Reply, "250 2.0.0 <"+d.To+"> ") || !strings.HasSuffix(d.Reply, " Saved") {
			t.Errorf("postfix delivery %+v: want status sent via %s with the node's own reply", d, relay)
		}
	}

	// Each copy is on exactly one node of its recipient's island, and on
	// no node of the other island.
	for _, u := range lmtpUsers {
		found := 0
		for _, n := range e.lab.Nodes {
			if n.Island != u.island {
				continue
			}
			for _, stored := range e.mailbox(t, n, lmtpMail(u.uid), u.password) {
				if !bytes.Contains(stored, []byte(mark)) {
					continue
				}
				found++
				hdrs := traceHeaders(t, stored, msg)
				// The node's Received header (the first line) names the
				// MTA, not atoll: XCLIENT ADDR and HELO.
				first, _, _ := strings.Cut(hdrs, "\r\n")
				for strings.HasPrefix(first, "Return-Path: ") || strings.HasPrefix(first, "Delivered-To: ") {
					hdrs = hdrs[len(first)+2:]
					first, _, _ = strings.Cut(hdrs, "\r\n")
				}
				if wantFrom := "Received: from mta.example.org ([" + mtaAddr.String() + "])"; !strings.HasPrefix(first, wantFrom) {
					t.Errorf("%s on %s: the node's Received header %q does not start %q (XCLIENT)", u.uid, n.Name, first, wantFrom)
				}
				if !strings.Contains(hdrs, "by "+n.Name+" with LMTP") {
					t.Errorf("%s on %s: no Received header of the node in\n%s", u.uid, n.Name, hdrs)
				}
			}
		}
		if found != 1 {
			t.Errorf("%s (island %s): %d copies on its island's nodes, want 1", u.uid, u.island, found)
		}
	}
	// Dovecot logs the LMTP session of every node it delivered on; the
	// other island's nodes never saw its recipients.
	for _, n := range e.lab.Nodes {
		log := e.dovecot[n.Name].Log()
		for _, u := range lmtpUsers {
			if u.island != n.Island && strings.Contains(log, lmtpMail(u.uid)) {
				t.Errorf("%s (island %s) appears in the log of %s (island %s)", u.uid, u.island, n.Name, n.Island)
			}
		}
	}

	mfs := e.scrape(t)
	for _, c := range []struct {
		island string
		want   float64
	}{{"a", 2}, {"b", 1}} {
		if v, _ := value(mfs, "atoll_proxy_lmtp_deliveries_total", map[string]string{"island": c.island, "result": "delivered"}); v != c.want {
			t.Errorf("deliveries on island %s: %v, want %v", c.island, v, c.want)
		}
	}
	if v, _ := value(mfs, "atoll_proxy_lmtp_deliveries_total", nil); v != 3 {
		t.Errorf("%v deliveries counted in all, want 3", v)
	}
	if mf := mfs["atoll_proxy_lmtp_transaction_recipients"]; mf == nil || len(mf.GetMetric()) != 1 ||
		mf.GetMetric()[0].GetHistogram().GetSampleCount() != 1 || mf.GetMetric()[0].GetHistogram().GetSampleSum() != 3 {
		t.Errorf("recipients per transaction: %v, want one transaction of 3", mf)
	}
	// Postfix adds its Received header: the router got a little more than
	// the message as submitted.
	if v, _ := value(mfs, "atoll_proxy_lmtp_message_bytes_total", nil); v < float64(len(msg)) || v > float64(len(msg)+2048) {
		t.Errorf("message bytes %v, want about %d", v, len(msg))
	}
	if v, _ := value(mfs, "atoll_proxy_logins_total", map[string]string{"protocol": "lmtp", "result": "ok"}); v != 3 {
		t.Errorf("recipient lookups ok: %v, want 3", v)
	}

	// A reload with lower limits.
	e.writeLMTPConfig(lmtpCfg{MaxSize: 1 << 20, MaxRcpts: 2})
	if out, err := e.cli("reload"); err != nil {
		t.Fatalf("atoll reload: %v\n%s", err, out)
	}
	c, r, greeting, err := e.greet(frontVIP, 24)
	must(t, err)
	defer c.Close()
	if !strings.HasPrefix(greeting, "220 front.example.org ") {
		t.Fatalf("greeting %q", greeting)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	cmd := func(line string) (int, []string) {
		t.Helper()
		fmt.Fprintf(c, "%s\r\n", line)
		var lines []string
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			code, _ := strconv.Atoi(l[:3])
			lines = append(lines, strings.TrimRight(l[4:], "\r\n"))
			if l[3] == ' ' {
				return code, lines
			}
		}
	}
	code, lhlo := cmd("LHLO mta.example.org")
	if code != 250 || !slices.Contains(lhlo, "SIZE 1048576") || !slices.Contains(lhlo, "8BITMIME") || !slices.Contains(lhlo, "PIPELINING") {
		t.Fatalf("LHLO after the reload: %d %q, want SIZE 1048576 and 8BITMIME (learned before the reload)", code, lhlo)
	}
	for i, step := range []struct {
		line   string
		code   int
		prefix string
	}{
		{"MAIL FROM:<sender@example.net> SIZE=2000000", 552, "5.3.4"},
		{"MAIL FROM:<sender@example.net> BODY=8BITMIME", 250, "2.1.0"},
		{"RCPT TO:<amy@example.org>", 250, "2.1.5"},
		{"RCPT TO:<ben@example.org>", 250, "2.1.5"},
		{"RCPT TO:<cat@example.org>", 452, "4.5.3"},
		{"RSET", 250, "2.0.0"},
		{"QUIT", 221, "2.0.0"},
	} {
		code, lines := cmd(step.line)
		if code != step.code || !strings.HasPrefix(lines[len(lines)-1], step.prefix) {
			t.Fatalf("step %d %s: %d %q, want %d %s", i, step.line, code, lines, step.code, step.prefix)
		}
	}
}
