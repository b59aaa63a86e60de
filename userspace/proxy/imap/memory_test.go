package imap

import (
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/userspace/proxy"
)

// idleSessions is how many logged-in idle sessions the memory test holds
// (each costs four sockets and two splice pipes in this process).
const idleSessions = 1000

// TestIdleSessionMemory measures what one idle relayed session costs the
// proxy in Go memory (heap in use plus goroutine stacks, after a GC): the
// same number of clients log in directly to the fake node and then
// through the proxy, and the difference is the proxy's. Idle relays
// park: no goroutine is left per session. The bound is
// loose (kernel memory is not counted, and the race detector inflates
// stacks); the figure is logged for the bench report.
func TestIdleSessionMemory(t *testing.T) {
	node := startFakeNode(t, false)
	e := newEnv(t, proxy.Options{MaxConnsPerSource: 2 * idleSessions, Limits: proxy.Limits{ParkAfter: 100 * time.Millisecond}}, true)
	e.dir.set("alice", "a")
	e.island("a", proxy.IslandSettings{}, nodeAt("n1", node.addr))

	open := func(addr string, greeting string) []*iconn {
		cs := make([]*iconn, 0, idleSessions)
		for range idleSessions {
			c := dialIMAP(t, addr, netip.Addr{})
			c.c.SetDeadline(time.Time{})
			if g := c.line(); !strings.HasPrefix(g, greeting) {
				t.Fatalf("greeting %q", g)
			}
			c.write("a LOGIN alice secret\r\n")
			if l := c.line(); !strings.HasPrefix(l, "a OK") {
				t.Fatalf("login: %q", l)
			}
			cs = append(cs, c)
		}
		return cs
	}
	closeAll := func(cs []*iconn) {
		for _, c := range cs {
			c.c.Close()
		}
	}
	measure := func() (heap, stack uint64) {
		var m runtime.MemStats
		for range 3 {
			runtime.GC()
		}
		runtime.ReadMemStats(&m)
		return m.HeapInuse, m.StackInuse
	}
	// Goroutines: one per fake-node connection; through the proxy, none
	// once both directions of each relay are parked.
	// (a few runtime and test goroutines come and go: within 5 is there.)
	waitGoroutines := func(want int) {
		deadline := time.Now().Add(30 * time.Second)
		for n := runtime.NumGoroutine(); n < want-5 || n > want+5; n = runtime.NumGoroutine() {
			if time.Now().After(deadline) {
				t.Fatalf("%d goroutines, want %d", runtime.NumGoroutine(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	g0 := runtime.NumGoroutine()
	h0, s0 := measure()
	direct := open(node.addr, "* OK")
	waitGoroutines(g0 + idleSessions)
	h1, s1 := measure()
	closeAll(direct)
	waitGoroutines(g0)
	h2, s2 := measure()
	proxied := open(e.addr, "* OK [CAPABILITY")
	waitGoroutines(g0 + idleSessions)
	h3, s3 := measure()
	// Parked sessions wake on either side: a command from the client, its
	// answer from the node, then LOGOUT and the node's close, which must
	// reach the client as the end of the stream.
	for i, c := range proxied {
		c.c.SetDeadline(time.Now().Add(20 * time.Second))
		c.write("b NOOP\r\n")
		if l := c.line(); !strings.HasPrefix(l, "b OK NOOP done by") {
			t.Fatalf("session %d after parking: NOOP answered %q", i, l)
		}
		c.write("c LOGOUT\r\n")
		if l := c.line(); l != "* BYE bye" {
			t.Fatalf("session %d: LOGOUT answered %q", i, l)
		}
		c.line()
		if l, err := c.r.ReadString('\n'); err == nil {
			t.Fatalf("session %d: read %q after LOGOUT, want the end of the stream", i, l)
		}
	}
	closeAll(proxied)
	waitGoroutines(g0)
	// The goroutine count has a tolerance: the last relays may still be
	// ending, so the session count is polled, not read once.
	for deadline := time.Now().Add(10 * time.Second); e.obs.sessionCount() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("%d sessions still counted 10 s after every client left", e.obs.sessionCount())
			break
		}
	}

	per := func(after, before uint64) float64 { return (float64(after) - float64(before)) / idleSessions / 1024 }
	dh, ds := per(h1, h0), per(s1, s0)
	ph, ps := per(h3, h2), per(s3, s2)
	t.Logf("per idle session: direct heap %.1f KiB stack %.1f KiB; proxied heap %.1f KiB stack %.1f KiB; proxy's share %.1f KiB",
		dh, ds, ph, ps, ph+ps-dh-ds)
	if share := ph + ps - dh - ds; share > 8 {
		t.Errorf("the proxy holds %.1f KiB of Go memory per idle session, want < 8", share)
	}
}

// TestParkedSessionLimits: a parked session still ends at the idle
// timeout and when the server stops, while a busy one lives on.
func TestParkedSessionLimits(t *testing.T) {
	node := startFakeNode(t, false)
	e := newEnv(t, proxy.Options{Limits: proxy.Limits{IdleTimeout: time.Second, ParkAfter: 20 * time.Millisecond}}, true)
	e.dir.set("alice", "a")
	e.island("a", proxy.IslandSettings{}, nodeAt("n1", node.addr))
	login := func() *iconn {
		c := e.client(t)
		c.write("a LOGIN alice secret\r\n")
		if l := c.line(); !strings.HasPrefix(l, "a OK") {
			t.Fatalf("login: %q", l)
		}
		return c
	}
	idle, busy := login(), login()
	// busy talks every 50 ms for 2.5 s, past the idle timeout; each gap
	// is long enough for its directions to park.
	for i := range 50 {
		busy.write("b NOOP\r\n")
		if l := busy.line(); !strings.HasPrefix(l, "b OK NOOP") {
			t.Fatalf("busy session, NOOP %d: %q", i, l)
		}
		time.Sleep(50 * time.Millisecond) // the traffic pattern under test, not synchronisation
	}
	if l, err := idle.r.ReadString('\n'); err == nil {
		t.Fatalf("idle session read %q, want it closed at the idle timeout", l)
	}
	// Stopping the server ends the parked busy session.
	before := proxy.Parked()
	parked := login()
	for deadline := time.Now().Add(10 * time.Second); proxy.Parked() < before+2; {
		if time.Now().After(deadline) {
			t.Fatalf("the new session never parked (%d parked directions)", proxy.Parked())
		}
		time.Sleep(5 * time.Millisecond)
	}
	done := make(chan struct{})
	go func() { e.shutdown(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not stop with parked sessions open")
	}
	for _, c := range []*iconn{busy, parked} {
		if l, err := c.r.ReadString('\n'); err == nil {
			t.Errorf("read %q after the server stopped, want the end of the stream", l)
		}
	}
}
