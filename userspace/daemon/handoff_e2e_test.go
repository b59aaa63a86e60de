package daemon_test

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/atoll-lb/atoll/deploy/lab"
	"github.com/atoll-lb/atoll/maps"
)

// frontSession is an IMAP session to the front door from a chosen
// client address (and port, 0 = any).
type frontSession struct {
	c    net.Conn
	r    *bufio.Reader
	tag  int
	node string // from the greeting: the proxy's or the node's
}

func (e *proxyEnv) dialFront(t *testing.T, from netip.Addr, port uint16) *frontSession {
	t.Helper()
	var c net.Conn
	must(t, e.lab.Client.Do(func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice(), Port: int(port)}, Timeout: 5 * time.Second}
		var err error
		c, err = d.Dial("tcp4", netip.AddrPortFrom(frontVIP, 143).String())
		return err
	}))
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	greet, err := r.ReadString('\n')
	must(t, err)
	c.SetDeadline(time.Time{})
	return &frontSession{c: c, r: r, node: greet}
}

// cmd sends an IMAP command and returns its tagged answer.
func (s *frontSession) cmd(format string, args ...any) (string, error) {
	s.tag++
	tag := fmt.Sprintf("t%d", s.tag)
	s.c.SetDeadline(time.Now().Add(10 * time.Second))
	defer s.c.SetDeadline(time.Time{})
	if _, err := fmt.Fprintf(s.c, tag+" "+format+"\r\n", args...); err != nil {
		return "", err
	}
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(line, tag+" ") {
			return strings.TrimSpace(strings.TrimPrefix(line, tag+" ")), nil
		}
	}
}

// byXDP says whether a session's greeting came from a node (straight by
// XDP) rather than from the proxy.
func (s *frontSession) byXDP() bool { return strings.Contains(s.node, "atoll-test") }

func (e *proxyEnv) counter(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	v, _ := value(e.scrape(t), name, labels)
	return v
}

// TestHandoffAffinity: from an affinity prefix, sessions go straight to
// the island's nodes by XDP — the proxy sees none of them, the node sees
// the client's own address on the VIP; from any other address they go
// through the proxy and land on the right island.
func TestHandoffAffinity(t *testing.T) {
	e := newProxyEnvOpts(t, proxyEnvOpts{handoff: true})
	e.deliver("alice", "a", "hello alice by affinity")
	proxyOK := map[string]string{"protocol": "imap", "result": "ok"}
	affinity := map[string]string{"outcome": "fwd_affinity"}
	okBefore, affBefore := e.counter(t, "atoll_proxy_logins_total", proxyOK), e.counter(t, "atoll_packets_total", affinity)

	// curl and imaplib from 192.0.2.10 (static affinity to island a).
	out, err := e.clientRun(20*time.Second, "curl", "-sS", "--max-time", "15", "--interface", lab.ClientV4.Addr().String(),
		"-u", "alice:alice-pw", "imap://"+frontVIP.String()+"/INBOX;UID=1")
	if err != nil || !strings.Contains(out, "hello alice by affinity") {
		t.Fatalf("curl by affinity: %v\n%s", err, out)
	}
	script := `
import imaplib, sys
m = imaplib.IMAP4(sys.argv[1])
assert b'atoll-test node-a' in m.welcome, m.welcome
m.login('alice', 'alice-pw'); m.select('INBOX'); m.logout()
print('ok')
`
	if out, err := e.clientRun(20*time.Second, "python3", "-c", script, frontVIP.String()); err != nil || !strings.Contains(out, "ok") {
		t.Fatalf("imaplib by affinity: %v\n%s", err, out)
	}
	if d := e.counter(t, "atoll_proxy_logins_total", proxyOK) - okBefore; d != 0 {
		t.Fatalf("the proxy saw %v logins of affinity clients", d)
	}
	if d := e.counter(t, "atoll_packets_total", affinity) - affBefore; d < 2 {
		t.Fatalf("fwd_affinity moved by %v, want >= 2", d)
	}
	// The node took the connection on the VIP, from the client's own
	// address: no proxy, no PROXY header, no ID (direct server return).
	found := false
	for _, n := range e.lab.Nodes {
		if strings.Contains(e.dovecot[n.Name].Log(), "rip=192.0.2.10, lip="+frontVIP.String()) {
			found = n.Island == "a"
		}
	}
	if !found {
		t.Fatal("no island-a node logged a login from 192.0.2.10 on the VIP")
	}

	// From 192.0.2.11 (no affinity): through the proxy, to island a.
	s := e.dialFront(t, clientNoAffinity, 0)
	if s.byXDP() {
		t.Fatalf("no-affinity client greeted by a node: %q", s.node)
	}
	if ans, err := s.cmd("LOGIN alice alice-pw"); err != nil || !strings.HasPrefix(ans, "OK") {
		t.Fatalf("login through the proxy: %q %v", ans, err)
	}
	// The proxy counts a login once its OK has gone to the client, so
	// the counter may move just after the answer arrives: poll.
	deadline := time.Now().Add(5 * time.Second)
	for {
		d := e.counter(t, "atoll_proxy_logins_total", proxyOK) - okBefore
		if d == 1 {
			break
		}
		if d > 1 || time.Now().After(deadline) {
			t.Fatalf("proxy logins moved by %v, want 1", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := e.status()
	if st.Outcomes["pass_handoff"] == 0 || st.Outcomes["fwd_affinity"] == 0 {
		t.Fatalf("outcomes %v", st.Outcomes)
	}
	out, err = e.cli("status")
	if err != nil || !strings.Contains(out, "front door:") {
		t.Fatalf("atoll status lacks the front-door line: %v\n%s", err, out)
	}
}

// TestHandoffConntrackFlush: with conntrack flushed in the middle of 50
// open sessions of each kind, every session keeps working: proxied ones
// stay local (their socket is found), affinity ones land on the same node
// (Maglev).
func TestHandoffConntrackFlush(t *testing.T) {
	e := newProxyEnvOpts(t, proxyEnvOpts{handoff: true})
	var sessions []*frontSession
	for i := 0; i < 50; i++ {
		for _, from := range []netip.Addr{lab.ClientV4.Addr(), clientNoAffinity} {
			s := e.dialFront(t, from, 0)
			if s.byXDP() != (from == lab.ClientV4.Addr()) {
				t.Fatalf("session from %v: greeting %q", from, s.node)
			}
			if ans, err := s.cmd("LOGIN alice alice-pw"); err != nil || !strings.HasPrefix(ans, "OK") {
				t.Fatalf("login %d from %v: %q %v", i, from, ans, err)
			}
			sessions = append(sessions, s)
		}
	}
	// The 50 proxied sessions are idle: both directions of each relay
	// park (no goroutine left), and must wake for the NOOPs below.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if v := e.counter(t, "atoll_proxy_parked_directions", nil); v >= 100 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("%v relay directions parked with 50 idle proxied sessions, want 100", v)
		}
	}
	ct4, err := ebpf.LoadPinnedMap(filepath.Join(e.pin, "conntrack4"), nil)
	must(t, err)
	defer ct4.Close()
	ct6, err := ebpf.LoadPinnedMap(filepath.Join(e.pin, "conntrack6"), nil)
	must(t, err)
	defer ct6.Close()
	gen, err := ebpf.LoadPinnedMap(filepath.Join(e.pin, maps.MapFlowCacheGen), nil)
	must(t, err)
	defer gen.Close()
	flushed, err := (&maps.Maps{Conntrack4: ct4, Conntrack6: ct6, FlowCacheGen: gen}).FlushConntrack()
	must(t, err)
	if flushed < 100 {
		t.Fatalf("flushed %d conntrack entries with 100 sessions open", flushed)
	}
	for i, s := range sessions {
		if ans, err := s.cmd("NOOP"); err != nil || !strings.HasPrefix(ans, "OK") {
			t.Fatalf("session %d after the flush: %q %v", i, ans, err)
		}
	}
	st := e.status()
	t.Logf("100 sessions alive after flushing %d entries; outcomes %v", flushed, st.Outcomes)
	if st.Outcomes["pass_local_socket"] == 0 {
		t.Fatal("no proxied packet was kept local by its socket")
	}
}

// TestHandoffLearned: two users of island a from one address → the
// address is learned and goes by XDP; a user of island b from it (on a
// flow the entry keeps on the proxy) → the entry goes, and that user
// lands on island b.
func TestHandoffLearned(t *testing.T) {
	e := newProxyEnvOpts(t, proxyEnvOpts{handoff: true, learn: true})
	login := func(from netip.Addr, port uint16, user, pw string) *frontSession {
		t.Helper()
		s := e.dialFront(t, from, port)
		if ans, err := s.cmd("LOGIN %s %s", user, pw); err != nil || !strings.HasPrefix(ans, "OK") {
			t.Fatalf("%s from %v:%d: %q %v (greeting %q)", user, from, port, ans, err, s.node)
		}
		return s
	}
	if s := login(clientLearner, 0, "alice", "alice-pw"); s.byXDP() {
		t.Fatal("first login went by XDP")
	}
	login(clientLearner, 0, "carol", `"pass w\"ord \\x"`)
	deadline := time.Now().Add(5 * time.Second)
	for e.counter(t, "atoll_affinity_learned_entries", nil) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("192.0.2.12 was not learned after two island-a logins")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Ports whose flows the entry sends by XDP, and one it keeps probing
	// through the proxy (one in 8, by the flow hash Go mirrors).
	var direct, probe uint16
	for port := uint16(42000); direct == 0 || probe == 0; port++ {
		k := maps.NewFlowKey(netip.AddrPortFrom(clientLearner, port), netip.AddrPortFrom(frontVIP, 143))
		if maps.FlowHash(k, 0x61746f6c)&7 == 0 {
			if probe == 0 {
				probe = port
			}
		} else if direct == 0 {
			direct = port
		}
	}
	if s := login(clientLearner, direct, "alice", "alice-pw"); !s.byXDP() {
		t.Fatalf("learned address not sent by XDP: %q", s.node)
	}
	// bob (island b) on a probed flow reaches the proxy, which sees the
	// conflict.
	s := login(clientLearner, probe, "bob", "bob-pw")
	if s.byXDP() {
		t.Fatalf("probe flow went by XDP: %q", s.node)
	}
	deadline = time.Now().Add(5 * time.Second)
	for e.counter(t, "atoll_affinity_learned_entries", nil) != 0 || e.counter(t, "atoll_affinity_conflicts_total", nil) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the learned entry survived a login into another island")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// bob now lands on island b, on any flow.
	s = login(clientLearner, direct+1, "bob", "bob-pw")
	if s.byXDP() {
		t.Fatalf("after the conflict: greeting %q", s.node)
	}
}
