//go:build linux

package peer

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/userspace/netns"
)

func requirePostfix(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: postfix needs root")
	}
	Require(t, "postfix", "postqueue")
}

func startPostfix(t *testing.T, o PostfixOptions) *Postfix {
	t.Helper()
	requirePostfix(t)
	p, err := StartPostfix(testCtx(t, 60*time.Second), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if t.Failed() {
			t.Logf("postfix maillog:\n%s", tail(p.Log(), 60))
		}
	})
	return p
}

// lmtpMessage is one LMTP transaction the fake server accepted.
type lmtpMessage struct {
	From   string
	To     []string // recipients it answered 250 for after DATA
	Data   string
	Remote string // the client's address
}

// fakeLMTP speaks enough LMTP for Postfix's lmtp client: LHLO (with
// PIPELINING and ENHANCEDSTATUSCODES), MAIL, RCPT, DATA with one reply
// per recipient, RSET, NOOP, QUIT; several transactions per connection.
type fakeLMTP struct {
	ln net.Listener

	mu       sync.Mutex
	failRcpt map[string]string // recipient → reply to its RCPT (instead of 250)
	failData map[string]string // recipient → its reply after DATA (instead of 250)
	got      []lmtpMessage
	wg       sync.WaitGroup
	conns    map[net.Conn]bool
}

func newFakeLMTP(t *testing.T, ln net.Listener) *fakeLMTP {
	f := &fakeLMTP{ln: ln, failRcpt: map[string]string{}, failData: map[string]string{}, conns: map[net.Conn]bool{}}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.conns[c] = true
			f.mu.Unlock()
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				f.serve(c)
				f.mu.Lock()
				delete(f.conns, c)
				f.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(f.close)
	return f
}

func listenFakeLMTP(t *testing.T, addr string) *fakeLMTP {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return newFakeLMTP(t, ln)
}

func (f *fakeLMTP) close() {
	f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *fakeLMTP) addr() string { return f.ln.Addr().String() }

func (f *fakeLMTP) setFail(rcptStage, dataStage map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failRcpt, f.failData = map[string]string{}, map[string]string{}
	for k, v := range rcptStage {
		f.failRcpt[strings.ToLower(k)] = v
	}
	for k, v := range dataStage {
		f.failData[strings.ToLower(k)] = v
	}
}

func (f *fakeLMTP) messages() []lmtpMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

// find returns the accepted messages whose data holds marker.
func (f *fakeLMTP) find(marker string) []lmtpMessage {
	var out []lmtpMessage
	for _, m := range f.messages() {
		if strings.Contains(m.Data, marker) {
			out = append(out, m)
		}
	}
	return out
}

func addrOf(arg string) string {
	_, a, _ := strings.Cut(arg, ":")
	a = strings.TrimSpace(a)
	if i := strings.IndexByte(a, '>'); i >= 0 {
		a = a[:i+1]
	}
	return strings.Trim(a, "<>")
}

func (f *fakeLMTP) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	reply := func(s string) { w.WriteString(s + "\r\n") }
	reply("220 fake-lmtp LMTP ready")
	w.Flush()
	var from string
	var rcpts []string
	inTx := false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		verb := strings.ToUpper(line)
		switch {
		case strings.HasPrefix(verb, "LHLO"):
			reply("250-fake-lmtp")
			reply("250-PIPELINING")
			reply("250 ENHANCEDSTATUSCODES")
		case strings.HasPrefix(verb, "MAIL FROM:"):
			from, rcpts, inTx = addrOf(line), nil, true
			reply("250 2.1.0 Ok")
		case strings.HasPrefix(verb, "RCPT TO:"):
			rc := addrOf(line)
			f.mu.Lock()
			fail := f.failRcpt[strings.ToLower(rc)]
			f.mu.Unlock()
			switch {
			case !inTx:
				reply("503 5.5.1 MAIL first")
			case fail != "":
				reply(fail)
			default:
				rcpts = append(rcpts, rc)
				reply("250 2.1.5 Ok")
			}
		case verb == "DATA":
			if len(rcpts) == 0 {
				reply("503 5.5.1 no valid recipients")
				break
			}
			reply("354 go ahead")
			w.Flush()
			var data strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" || l == ".\n" {
					break
				}
				data.WriteString(strings.TrimPrefix(l, "."))
			}
			msg := lmtpMessage{From: from, Data: data.String(), Remote: c.RemoteAddr().String()}
			f.mu.Lock()
			for _, rc := range rcpts {
				if fail := f.failData[strings.ToLower(rc)]; fail != "" {
					reply(fail)
					continue
				}
				msg.To = append(msg.To, rc)
				reply("250 2.0.0 <" + rc + "> delivered")
			}
			if len(msg.To) > 0 {
				f.got = append(f.got, msg)
			}
			f.mu.Unlock()
			from, rcpts, inTx = "", nil, false
		case verb == "RSET":
			from, rcpts, inTx = "", nil, false
			reply("250 2.0.0 Ok")
		case verb == "NOOP":
			reply("250 2.0.0 Ok")
		case verb == "QUIT":
			reply("221 2.0.0 Bye")
			w.Flush()
			return
		default:
			reply("500 5.5.2 unknown command")
		}
		// Answer a pipelined batch at once, line by line otherwise.
		if r.Buffered() == 0 {
			w.Flush()
		}
	}
}

// testMail is a message with a unique Message-ID and subject.
func testMail(to ...string) (msgID, subject string, msg []byte) {
	tok := token()
	msgID = tok + "@client.example"
	subject = "atoll-postfix-" + tok
	msg = fmt.Appendf(nil, "From: sender@client.example\nTo: %s\nSubject: %s\nMessage-ID: <%s>\n\nbody of %s\n.leading dot\n",
		strings.Join(to, ", "), subject, msgID, subject)
	return msgID, subject, msg
}

func waitMessages(t *testing.T, f *fakeLMTP, marker string, n int) []lmtpMessage {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := f.find(marker)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("the LMTP server got %d messages with %s, want %d", len(got), marker, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func TestPostfixRelaysToLMTP(t *testing.T) {
	lmtp := listenFakeLMTP(t, "127.0.0.1:0")
	p := startPostfix(t, PostfixOptions{
		Dir:   t.TempDir(),
		Relay: "inet:" + lmtp.addr(),
		// Only Flush retries deferred mail here.
		RetryDelay: time.Hour,
	})
	if p.Addr.Port() == 0 || p.Addr.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("Addr %v", p.Addr)
	}
	if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID)); !strings.Contains(string(cmdline), "master") {
		t.Fatalf("PID %d is %q, not the master daemon", p.PID, cmdline)
	}
	if s, err := ReadStat(p.PID); err != nil || s.PGRP != p.PID {
		t.Fatalf("master %d: process group %d (%v), want its own", p.PID, s.PGRP, err)
	}

	t.Run("two-recipients", func(t *testing.T) {
		ctx := testCtx(t, 30*time.Second)
		rcpts := []string{"alice@one.example", "bob@two.example"}
		msgID, subject, msg := testMail(rcpts...)
		qid, err := p.Send(ctx, "sender@client.example", rcpts, msg)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.WaitDelivered(ctx, qid); err != nil {
			t.Fatal(err)
		}
		if err := p.WaitDelivered(ctx, "<"+msgID+">"); err != nil {
			t.Fatalf("by Message-ID: %v", err)
		}
		got := waitMessages(t, lmtp, subject, 1)
		if len(got) != 1 || !sameSet(got[0].To, rcpts) || got[0].From != "sender@client.example" {
			t.Fatalf("LMTP server got %+v, want one message from sender@client.example to %v", got, rcpts)
		}
		if !strings.Contains(got[0].Data, "\r\n.leading dot\r\n") || !strings.Contains(got[0].Data, "Received: from") {
			t.Fatalf("message data:\n%s", got[0].Data)
		}
		var sent []string
		for _, d := range p.Deliveries() {
			if d.QueueID == qid {
				if d.Status != "sent" || d.DSN != "2.0.0" || !strings.Contains(d.Relay, "127.0.0.1") {
					t.Errorf("delivery %+v", d)
				}
				sent = append(sent, d.To)
			}
		}
		if !sameSet(sent, rcpts) {
			t.Fatalf("status=sent lines for %v, want %v", sent, rcpts)
		}
		if !strings.Contains(p.Log(), qid+": to=<alice@one.example>, relay=127.0.0.1") {
			t.Fatalf("maillog lacks the delivery line:\n%s", tail(p.Log(), 20))
		}
	})

	for _, stage := range []string{"data", "rcpt"} {
		t.Run("451-"+stage+"-then-flush", func(t *testing.T) {
			ctx := testCtx(t, 40*time.Second)
			good, bad := "carol@one.example", "dave-"+stage+"@two.example"
			fail := map[string]string{bad: "451 4.2.0 <" + bad + "> mailbox busy, try later"}
			if stage == "data" {
				lmtp.setFail(nil, fail)
			} else {
				lmtp.setFail(fail, nil)
			}
			_, subject, msg := testMail(good, bad)
			qid, err := p.Send(ctx, "sender@client.example", []string{good, bad}, msg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.WaitStatus(ctx, qid, good, "sent"); err != nil {
				t.Fatal(err)
			}
			d, err := p.WaitStatus(ctx, qid, bad, "deferred")
			if err != nil {
				t.Fatal(err)
			}
			if d.DSN != "4.2.0" || !strings.Contains(d.Reply, "mailbox busy") {
				t.Fatalf("deferral %+v", d)
			}
			first := waitMessages(t, lmtp, subject, 1)
			if len(first) != 1 || !slices.Equal(first[0].To, []string{good}) {
				t.Fatalf("first delivery %+v, want only %s", first, good)
			}
			q, err := p.Queue(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(q, qid) || !strings.Contains(q, bad) || strings.Contains(q, good) || !strings.Contains(q, "mailbox busy") {
				t.Fatalf("queue does not hold just %s deferred:\n%s", bad, q)
			}
			// Still deferred a while later: only Flush retries here.
			time.Sleep(1500 * time.Millisecond)
			if n := len(lmtp.find(subject)); n != 1 {
				t.Fatalf("%d deliveries before Flush, want 1", n)
			}

			lmtp.setFail(nil, nil)
			if err := p.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if err := p.WaitDelivered(ctx, qid); err != nil {
				t.Fatal(err)
			}
			got := waitMessages(t, lmtp, subject, 2)
			if len(got) != 2 || !slices.Equal(got[1].To, []string{bad}) {
				t.Fatalf("deliveries %+v: the second should be to %s only", got, bad)
			}
			if q, err := p.Queue(ctx); err != nil || !strings.Contains(q, "Mail queue is empty") {
				t.Fatalf("queue after Flush: %q, %v", q, err)
			}
		})
	}

	// Stop: the master and everything it forked are gone.
	procs := descendants(p.PID)
	if len(procs) < 3 {
		t.Fatalf("expected the master and its children, found %v", procs)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, procs)
	if live := GroupMembers(p.PID); len(live) != 0 {
		t.Fatalf("process group %d still has %v", p.PID, live)
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if p.Running() {
		t.Fatal("Running() after Stop")
	}
	requireRefused(t, nil, p.Addr.String())
	// The queue outlives the master.
	q, err := p.Queue(testCtx(t, 10*time.Second))
	if err != nil || !strings.Contains(q, "Mail queue is empty") {
		t.Fatalf("Queue with the master stopped: %q, %v", q, err)
	}
}

// TestPostfixRetriesOnItsOwn: with the default retry delay, mail deferred
// while the LMTP destination is down goes out once it is up, no Flush.
// Also Kill and Start: mail accepted before a crash is not lost.
func TestPostfixRetriesOnItsOwn(t *testing.T) {
	requirePostfix(t)
	lo := netip.MustParseAddr("127.0.0.1")
	port, err := freePort([]netip.Addr{lo}, nil)
	if err != nil {
		t.Fatal(err)
	}
	lmtpAddr := netip.AddrPortFrom(lo, uint16(port)).String()
	p := startPostfix(t, PostfixOptions{Dir: t.TempDir(), Hostname: "mx.test.example", Relay: lmtpAddr})
	if p.Opts.Relay != "inet:"+lmtpAddr {
		t.Fatalf("Relay normalized to %q", p.Opts.Relay)
	}
	ctx := testCtx(t, 40*time.Second)
	rcpt := "erin@three.example"
	_, subject, msg := testMail(rcpt)
	qid, err := p.Send(ctx, "sender@client.example", []string{rcpt}, msg)
	if err != nil {
		t.Fatal(err)
	}
	d, err := p.WaitStatus(ctx, qid, rcpt, "deferred")
	if err != nil {
		t.Fatal(err)
	}
	if d.Relay != "none" || !strings.Contains(d.Reply, "Connection refused") {
		t.Fatalf("deferral %+v", d)
	}

	// A crash with the mail in the queue, then a restart.
	procs := descendants(p.PID)
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, procs)
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}

	lmtp := listenFakeLMTP(t, lmtpAddr)
	if err := p.WaitDelivered(ctx, qid); err != nil {
		t.Fatal(err)
	}
	got := waitMessages(t, lmtp, subject, 1)
	if len(got) != 1 || !slices.Equal(got[0].To, []string{rcpt}) {
		t.Fatalf("LMTP server got %+v", got)
	}
	if !strings.Contains(got[0].Data, "by mx.test.example") {
		t.Fatalf("Received header lacks the Hostname:\n%s", got[0].Data)
	}
}

// TestPostfixRelayPolicy: clients outside MyNetworks may not relay.
func TestPostfixRelayPolicy(t *testing.T) {
	p := startPostfix(t, PostfixOptions{
		Dir:        t.TempDir(),
		Relay:      "inet:127.0.0.1:24",
		MyNetworks: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32")},
	})
	main, err := os.ReadFile(p.ConfigDir + "/main.cf")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(main), "mynetworks = 192.0.2.0/24 [2001:db8::]/32\n") {
		t.Fatalf("main.cf:\n%s", main)
	}
	_, _, msg := testMail("frank@four.example")
	_, err = p.Send(testCtx(t, 10*time.Second), "sender@client.example", []string{"frank@four.example"}, msg)
	if err == nil || !strings.Contains(err.Error(), "Relay access denied") {
		t.Fatalf("Send from outside MyNetworks: %v, want Relay access denied", err)
	}
}

// TestPostfixIPv6: listener, mynetworks and the LMTP destination on IPv6.
func TestPostfixIPv6(t *testing.T) {
	requirePostfix(t)
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatalf("no IPv6 loopback (::1): %v", err)
	}
	lmtp := newFakeLMTP(t, ln)
	p := startPostfix(t, PostfixOptions{
		Dir:    t.TempDir(),
		Listen: netip.MustParseAddrPort("[::1]:0"),
		Relay:  lmtp.addr(),
	})
	if !p.Addr.Addr().Is6() || p.Opts.Relay != "inet:"+lmtp.addr() {
		t.Fatalf("Addr %v, Relay %q", p.Addr, p.Opts.Relay)
	}
	ctx := testCtx(t, 20*time.Second)
	_, subject, msg := testMail("ivy@seven.example")
	qid, err := p.Send(ctx, "sender@client.example", []string{"ivy@seven.example"}, msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitDelivered(ctx, qid); err != nil {
		t.Fatal(err)
	}
	if got := waitMessages(t, lmtp, subject, 1); !slices.Equal(got[0].To, []string{"ivy@seven.example"}) {
		t.Fatalf("LMTP server got %+v", got)
	}
}

func TestPostfixOptionErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		o    PostfixOptions
		want string
	}{
		{"no dir", PostfixOptions{Relay: "inet:127.0.0.1:24"}, "Dir is required"},
		{"dollar in dir", PostfixOptions{Dir: dir + "/a$b", Relay: "inet:127.0.0.1:24"}, "interpret"},
		{"no relay", PostfixOptions{Dir: dir}, "Relay is required"},
		{"bad relay", PostfixOptions{Dir: dir, Relay: "inet:127.0.0.1"}, "want inet:HOST:PORT"},
		{"relative unix relay", PostfixOptions{Dir: dir, Relay: "unix:lmtp"}, "absolute"},
		{"port 0 off loopback", PostfixOptions{Dir: dir, Relay: "inet:127.0.0.1:24", Listen: netip.MustParseAddrPort("192.0.2.30:0")}, "loopback"},
		{"bad hostname", PostfixOptions{Dir: dir, Relay: "inet:127.0.0.1:24", Hostname: "a b"}, "Hostname"},
		{"short retry", PostfixOptions{Dir: dir, Relay: "inet:127.0.0.1:24", RetryDelay: time.Millisecond}, "RetryDelay"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := StartPostfix(testCtx(t, 10*time.Second), tc.o)
			if err == nil {
				p.Stop()
				t.Fatal("started")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
	// An address that is not configured where Postfix runs: postfix check
	// fails, and its fatal error (which Postfix sends to syslog only) is
	// in the error.
	t.Run("address not local", func(t *testing.T) {
		requirePostfix(t)
		p, err := StartPostfix(testCtx(t, 30*time.Second), PostfixOptions{
			Dir: t.TempDir(), Relay: "inet:127.0.0.1:24", Listen: netip.MustParseAddrPort("192.0.2.99:2525"),
		})
		if err == nil {
			p.Stop()
			t.Fatal("started")
		}
		if !strings.Contains(err.Error(), "no local interface found for 192.0.2.99") {
			t.Fatalf("error %q lacks Postfix's reason", err)
		}
	})
	// A port someone else holds: the master dies, and the error says why.
	t.Run("port in use", func(t *testing.T) {
		requirePostfix(t)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		p, err := StartPostfix(testCtx(t, 30*time.Second), PostfixOptions{
			Dir: t.TempDir(), Relay: "inet:127.0.0.1:24", Listen: netip.MustParseAddrPort(ln.Addr().String()),
		})
		if err == nil {
			p.Stop()
			t.Fatal("started")
		}
		if !strings.Contains(err.Error(), "in use") {
			t.Fatalf("error %q does not say the port is in use", err)
		}
	})
}

func TestPostfixInNamespace(t *testing.T) {
	requirePostfix(t)
	ns, err := netns.New("atl-pf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Error(err)
		}
	})
	mta, vip := netip.MustParsePrefix("192.0.2.30/32"), netip.MustParsePrefix("203.0.113.20/32")
	for _, a := range []netip.Prefix{mta, vip} {
		if err := ns.AddAddr("lo", a); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := ns.Listen("tcp", "203.0.113.20:24")
	if err != nil {
		t.Fatal(err)
	}
	lmtp := newFakeLMTP(t, ln)
	p := startPostfix(t, PostfixOptions{
		Dir:    t.TempDir(),
		Listen: netip.AddrPortFrom(mta.Addr(), 25),
		Relay:  "inet:203.0.113.20:24",
		Command: func(name string, args ...string) *exec.Cmd {
			return ns.Command(context.Background(), name, args...)
		},
		Dial: ns.DialContext,
	})
	if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID)); !strings.Contains(string(cmdline), "master") {
		t.Fatalf("PID %d is %q, not the master: ip netns exec should exec", p.PID, cmdline)
	}
	ctx := testCtx(t, 30*time.Second)
	rcpts := []string{"gina@five.example", "hank@six.example"}
	_, subject, msg := testMail(rcpts...)
	qid, err := p.Send(ctx, "sender@client.example", rcpts, msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitDelivered(ctx, qid); err != nil {
		t.Fatal(err)
	}
	got := waitMessages(t, lmtp, subject, 1)
	if len(got) != 1 || !sameSet(got[0].To, rcpts) {
		t.Fatalf("LMTP server got %+v", got)
	}
	// A single non-loopback inet_interfaces address is also the source
	// of Postfix's outgoing connections.
	if host, _, _ := net.SplitHostPort(got[0].Remote); host != mta.Addr().String() {
		t.Fatalf("LMTP connection came from %s, want %v", got[0].Remote, mta.Addr())
	}

	procs := descendants(p.PID)
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, procs)
	requireRefused(t, ns.DialContext, p.Addr.String())
}
