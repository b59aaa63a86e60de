//go:build linux

package reference_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab"
	"github.com/atoll-lb/atoll/deploy/lab/peer"
	"github.com/atoll-lb/atoll/deploy/lab/reference"
)

// atollBin is the atoll binary the LB hosts run.
var atollBin string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() != 0 {
			return m.Run() // every test skips loudly
		}
		dir, err := os.MkdirTemp("", "atoll-ref-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		if atollBin, err = lab.BuildAtoll(dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func token() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// start runs the whole reference lab for one test and removes it after.
func start(t *testing.T) *reference.Env { return startHA(t, reference.HAVRRP) }

// startHA is start with a choice of HA.
func startHA(t *testing.T, ha reference.HA) *reference.Env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: needs root (network namespaces, BPF, Dovecot, Postfix, keepalived); run `make test` as root")
	}
	peer.Require(t, "keepalived", "bird", "slapd", "dovecot", "postfix", "curl")
	dir := t.TempDir()
	var logb syncBuf
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	begin := time.Now()
	env, err := reference.Start(ctx, reference.Options{
		Dir: dir, Atoll: atollBin, Prefix: "atl-ref", PinBase: "/sys/fs/bpf/atoll-ref-" + filepath.Base(filepath.Dir(dir)),
		Log: &logb, HA: ha,
	})
	if err != nil {
		t.Fatalf("start: %v\n%s", err, logb.String())
	}
	t.Logf("reference lab up in %v", time.Since(begin).Round(10*time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			for _, lb := range env.LBs {
				t.Logf("--- %s atoll log (tail) ---\n%s", lb.Name, tailFile(lb.Log, 40))
				t.Logf("--- %s keepalived log (tail) ---\n%s", lb.Name, tailFile(lb.VRRPLog, 20))
			}
		}
		if err := env.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return env
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// curl runs curl on the client host.
func curl(t *testing.T, env *reference.Env, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := env.Lab.Client.Exec(ctx, "curl", append([]string{"-sS", "--max-time", "15"}, args...)...)
	return string(out), err
}

func hostPort(a netip.Addr) string {
	if a.Is6() {
		return "[" + a.String() + "]"
	}
	return a.String()
}

// readEverywhere reads user's mail with real clients (curl) over IMAP and
// POP3, through the front door and the user's island VIPs, over IPv4 and
// IPv6, and checks that the message with subject tok is there.
func readEverywhere(t *testing.T, env *reference.Env, u reference.User, tok string) {
	t.Helper()
	isl := reference.IslandVIPs[u.Island]
	paths := []struct {
		name string
		vip  netip.Addr
	}{
		{"front door v4", reference.FrontV4}, {"front door v6", reference.FrontV6},
		{"island VIP v4", isl[0]}, {"island VIP v6", isl[1]},
	}
	cred := u.Name + ":" + u.Password
	for _, p := range paths {
		out, err := curl(t, env, "--user", cred, "imap://"+hostPort(p.vip)+"/INBOX", "-X", `SEARCH SUBJECT "`+tok+`"`)
		if err != nil || !strings.Contains(out, "* SEARCH ") {
			t.Errorf("%s: IMAP via %s (%v): message %s not found: %v %q", u.Name, p.name, p.vip, tok, err, out)
		}
		// POP3: the list, then the newest message.
		out, err = curl(t, env, "--user", cred, "pop3://"+hostPort(p.vip)+"/")
		if err != nil {
			t.Errorf("%s: POP3 LIST via %s (%v): %v", u.Name, p.name, p.vip, err)
			continue
		}
		f := strings.Fields(strings.TrimSpace(out))
		if len(f) < 2 {
			t.Errorf("%s: POP3 LIST via %s: %q", u.Name, p.name, out)
			continue
		}
		last := f[len(f)-2]
		out, err = curl(t, env, "--user", cred, "pop3://"+hostPort(p.vip)+"/"+last)
		if err != nil || !strings.Contains(out, tok) {
			t.Errorf("%s: POP3 RETR %s via %s (%v): message %s not there: %v", u.Name, last, p.name, p.vip, tok, err)
		}
	}
}

// TestDeliverAndRead (degraded mode 0, all up): mail for a user of island
// a (through smtp-left) and of island b (through smtp-right) goes by LMTP
// to atoll's front-door LMTP VIP, whose router finds each recipient's
// island in LDAP, and is read back with curl over IMAP and POP3 through
// the front door (the login proxy) and through the island VIPs (XDP, direct
// server return), over IPv4 and IPv6.
func TestDeliverAndRead(t *testing.T) {
	env := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i, isl := range []string{"a", "b"} {
		u := reference.UserOf(isl)
		tok := token()
		id, err := env.Send(ctx, i, u.Name, "test "+tok, "body "+tok)
		must(t, err)
		must(t, env.MTAs[i].WaitDelivered(ctx, id))
		for _, d := range env.MTAs[i].Deliveries() {
			if d.QueueID == id && !strings.Contains(d.Relay, reference.FrontV4.String()) {
				t.Errorf("%s delivered through %s, not the front-door LMTP VIP", id, d.Relay)
			}
		}
		readEverywhere(t, env, u, tok)
	}
}

// TestThreeTimesDegraded: smtp-left down, one node of each island down
// (dbmail-left-a, dbmail-right-b) and lb-left off the network, all at
// once. keepalived moves the VIPs to lb-right, whose atoll sees the
// nodes go down; an incoming relay falls back to smtp-right (equal MX),
// and mail for both islands is still delivered and read through every
// path.
func TestThreeTimesDegraded(t *testing.T) {
	env := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	left, right := env.LBs[0], env.LBs[1]
	begin := time.Now()
	must(t, env.MTAs[0].Kill())
	must(t, env.StopNode("dbmail-left-a"))
	must(t, env.StopNode("dbmail-right-b"))
	must(t, left.LinkDown())
	must(t, env.WaitMaster(ctx, right))
	t.Logf("lb-right holds the VIPs %v after the failures", time.Since(begin).Round(10*time.Millisecond))
	down := map[string][]string{"imap-a": {"dbmail-left-a"}, "pop3-a": {"dbmail-left-a"}, "imap-b": {"dbmail-right-b"}, "pop3-b": {"dbmail-right-b"}}
	for svc, nodes := range down {
		for _, n := range nodes {
			for {
				st, err := right.NodeState(ctx, svc, n)
				if err == nil && st == "down" {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("lb-right never saw %s down for %s (last %q, %v)", n, svc, st, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	t.Logf("lb-right sees both nodes down %v after the failures", time.Since(begin).Round(10*time.Millisecond))
	for _, isl := range []string{"a", "b"} {
		u := reference.UserOf(isl)
		tok := token()
		mta, id, err := env.SendAny(ctx, u.Name, "degraded "+tok, "body "+tok)
		must(t, err)
		if mta != 1 {
			t.Errorf("the message went through MTA %d, but smtp-left is down", mta)
		}
		must(t, env.MTAs[1].WaitDelivered(ctx, id))
		readEverywhere(t, env, u, tok)
	}
}

// session is one long-lived IMAP session of the failover test.
type session struct {
	m       *reference.IMAP
	user    reference.User
	proxied bool
}

// TestLBFailoverSessions: 50 IMAP sessions through the island VIPs (XDP,
// direct server return: their TCP state lives on the client and the node
// only) and 10 through the front door (proxied: their TCP state lives in
// lb-left's proxy) are open when lb-left drops off the network. keepalived
// moves the VIPs to lb-right, whose data plane — same config, same Maglev
// tables — sends each XDP flow's next packet to the node it already uses:
// at least 99% of them keep working. Proxied sessions are expected to
// break (counted separately) and to reconnect through lb-right's proxy.
func TestLBFailoverSessions(t *testing.T) {
	env := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var sessions []*session
	defer func() {
		for _, s := range sessions {
			s.m.Abort()
		}
	}()
	open := func(vip netip.Addr, u reference.User, proxied bool) {
		t.Helper()
		m, err := reference.DialIMAP(ctx, env.Lab.Client, netip.AddrPortFrom(vip, 143).String())
		must(t, err)
		must(t, m.Login(u.Name, u.Password))
		sessions = append(sessions, &session{m: m, user: u, proxied: proxied})
	}
	const dsr, proxied = 50, 10
	for i := range dsr {
		u := reference.Users[i%len(reference.Users)]
		vip := reference.IslandVIPs[u.Island][i%5/4] // one in five over IPv6
		open(vip, u, false)
	}
	for i := range proxied {
		u := reference.Users[i%len(reference.Users)]
		open(reference.FrontV4, u, true)
	}
	byNode := map[string]int{}
	for _, s := range sessions {
		if !s.proxied {
			byNode[s.m.Node()]++
		}
		must(t, s.m.Noop())
	}
	t.Logf("XDP sessions per node before the failover: %v", byNode)

	begin := time.Now()
	must(t, env.LBs[0].LinkDown())
	must(t, env.WaitMaster(ctx, env.LBs[1]))
	t.Logf("lb-right holds the VIPs %v after lb-left went down", time.Since(begin).Round(10*time.Millisecond))

	var (
		wg               sync.WaitGroup
		mu               sync.Mutex
		dsrOK, proxiedOK int
		failures         []string
	)
	for _, s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.m.Timeout = 20 * time.Second
			err := s.m.Noop()
			if err == nil {
				var seqs []int
				seqs, err = s.m.Search("Welcome")
				if err == nil && len(seqs) == 0 {
					err = fmt.Errorf("the welcome message is gone")
				}
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && s.proxied:
				proxiedOK++
			case err == nil:
				dsrOK++
			case !s.proxied:
				failures = append(failures, fmt.Sprintf("%s on %s: %v", s.user.Name, s.m.Node(), err))
			}
		}()
	}
	wg.Wait()
	t.Logf("after the failover: %d/%d XDP (DSR) sessions work; %d/%d proxied sessions survived (expected 0: their TCP state was in lb-left's proxy)",
		dsrOK, dsr, proxiedOK, proxied)
	if float64(dsrOK) < 0.99*dsr {
		t.Errorf("only %d of %d XDP sessions survived the failover: %v", dsrOK, dsr, failures)
	}
	// Proxied clients reconnect: through lb-right's proxy now.
	for _, isl := range []string{"a", "b"} {
		u := reference.UserOf(isl)
		m, err := reference.DialIMAP(ctx, env.Lab.Client, netip.AddrPortFrom(reference.FrontV4, 143).String())
		must(t, err)
		if err := m.Login(u.Name, u.Password); err != nil {
			t.Errorf("reconnect through the front door as %s: %v", u.Name, err)
		}
		m.Close()
	}
}

// TestNodeReturns: dbmail-right-a fails and comes back. While it is down,
// new flows to island a's VIP all go to dbmail-left-a; once both LB hosts
// see it up again it gets new flows, and no existing flow moves: every
// session opened before and during the outage (all on dbmail-left-a) keeps
// working — a moved flow would reach a node without its socket and be
// reset.
func TestNodeReturns(t *testing.T) {
	env := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	u := reference.UserOf("a")
	vip := netip.AddrPortFrom(reference.IslandVIPs["a"][0], 143).String()
	var all []*reference.IMAP
	defer func() {
		for _, m := range all {
			m.Abort()
		}
	}()
	openN := func(n int) []*reference.IMAP {
		t.Helper()
		var ms []*reference.IMAP
		for range n {
			m, err := reference.DialIMAP(ctx, env.Lab.Client, vip)
			must(t, err)
			must(t, m.Login(u.Name, u.Password))
			ms = append(ms, m)
			all = append(all, m)
		}
		return ms
	}
	count := func(ms []*reference.IMAP) map[string]int {
		c := map[string]int{}
		for _, m := range ms {
			c[m.Node()]++
		}
		return c
	}
	waitState := func(node, want string) {
		t.Helper()
		for _, lb := range env.LBs {
			for {
				st, err := lb.NodeState(ctx, "imap-a", node)
				if err == nil && st == want {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("%s never saw %s %s for imap-a (last %q, %v)", lb.Name, node, want, st, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	before := openN(20)
	t.Logf("before the failure: %v", count(before))
	if count(before)["dbmail-right-a"] == 0 {
		t.Fatalf("no session on dbmail-right-a to begin with: %v", count(before))
	}
	must(t, env.StopNode("dbmail-right-a"))
	waitState("dbmail-right-a", "down")
	during := openN(20)
	if c := count(during); c["dbmail-left-a"] != 20 {
		t.Errorf("while dbmail-right-a is down, new sessions went to %v", c)
	}
	must(t, env.StartNode(ctx, "dbmail-right-a"))
	waitState("dbmail-right-a", "up")
	// Nothing that lived on dbmail-left-a moved.
	kept := 0
	for _, m := range append(before, during...) {
		if m.Node() != "dbmail-left-a" {
			continue
		}
		if err := m.Noop(); err != nil {
			t.Errorf("a session on dbmail-left-a broke after dbmail-right-a returned: %v", err)
			continue
		}
		if _, err := m.Search("Welcome"); err != nil {
			t.Errorf("a session on dbmail-left-a broke after dbmail-right-a returned: %v", err)
			continue
		}
		kept++
	}
	after := openN(40)
	t.Logf("sessions kept on dbmail-left-a: %d; new sessions after the return: %v", kept, count(after))
	if count(after)["dbmail-right-a"] == 0 {
		t.Errorf("dbmail-right-a got no new sessions after it returned: %v", count(after))
	}
}

// TestBGPScaleOut: the scale-out example. Both LB hosts announce the VIPs
// by BGP (bird2) to a router, which spreads flows over them by ECMP:
// sessions through the island VIPs arrive at both LB hosts (both count new
// flows) and each reaches its island. When lb-left drops off the network
// the router withdraws its routes (hold timer) and moves its flows to
// lb-right, which sends them to the same nodes: at least 99% survive.
func TestBGPScaleOut(t *testing.T) {
	env := startHA(t, reference.HABGP)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var sessions []*reference.IMAP
	defer func() {
		for _, m := range sessions {
			m.Abort()
		}
	}()
	const n = 40
	for i := range n {
		u := reference.Users[i%len(reference.Users)]
		vip := reference.IslandVIPs[u.Island][i%2]
		m, err := reference.DialIMAP(ctx, env.Lab.Client, netip.AddrPortFrom(vip, 143).String())
		must(t, err)
		must(t, m.Login(u.Name, u.Password))
		sessions = append(sessions, m)
	}
	for _, lb := range env.LBs {
		st, err := lb.API.Status(ctx)
		must(t, err)
		var flows uint64
		for _, s := range st.Services {
			if s.Routing == "island" {
				flows += s.Counters.NewFlows
			}
		}
		t.Logf("%s placed %d new flows", lb.Name, flows)
		if flows == 0 {
			t.Errorf("ECMP sent no flow to %s", lb.Name)
		}
	}
	begin := time.Now()
	must(t, env.LBs[0].LinkDown())
	for {
		v4, v6, err := env.ECMPNextHops()
		if err == nil && len(v4) == 1 && len(v6) == 1 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the router kept routing over lb-left: v4 %v, v6 %v, %v", v4, v6, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the router dropped lb-left's routes %v after it went down", time.Since(begin).Round(10*time.Millisecond))
	var (
		wg sync.WaitGroup
		mu sync.Mutex
		ok int
	)
	for _, m := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.Timeout = 20 * time.Second
			err := m.Noop()
			if err == nil {
				_, err = m.Search("Welcome")
			}
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				ok++
			} else {
				t.Logf("session on %s: %v", m.Node(), err)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d/%d sessions work after lb-left's routes were withdrawn", ok, n)
	if float64(ok) < 0.99*n {
		t.Errorf("only %d of %d sessions survived", ok, n)
	}
}
