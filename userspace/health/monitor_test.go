package health

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/deploy/lab/peer"
)

// recorder is an Observer and an onChange callback. For every change it
// notes how many results in a row, ending with the one that caused it,
// had the same outcome.
type recorder struct {
	mu      sync.Mutex
	results map[string][]result
	changes []recorded
}

type result struct {
	at      time.Time // when the observer saw it
	latency time.Duration
	err     error
}

// start is (about) when the check began.
func (r result) start() time.Time { return r.at.Add(-r.latency) }

type recorded struct {
	Change
	run int // consecutive same-outcome results at the change
}

func newRecorder() *recorder { return &recorder{results: map[string][]result{}} }

func (r *recorder) ObserveCheck(id string, latency time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.results[id] = append(r.results[id], result{time.Now(), latency, err})
}

func (r *recorder) change(c Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := r.results[c.ID]
	run := 0
	for i := len(res) - 1; i >= 0 && (res[i].err == nil) == (res[len(res)-1].err == nil); i-- {
		run++
	}
	r.changes = append(r.changes, recorded{c, run})
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.results[id])
}

func (r *recorder) changesOf(id string) []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []recorded
	for _, c := range r.changes {
		if c.ID == id {
			out = append(out, c)
		}
	}
	return out
}

func (r *recorder) resultsOf(id string) []result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]result(nil), r.results[id]...)
}

// logCapture keeps slog records.
type logCapture struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCapture) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}
func (h *logCapture) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logCapture) WithGroup(string) slog.Handler      { return h }

// transitions lists "level id from->to" for each state-change record.
func (h *logCapture) transitions(id string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.recs {
		var rid, from, to string
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "id":
				rid = a.Value.String()
			case "from":
				from = fmt.Sprint(a.Value.Any())
			case "to":
				to = fmt.Sprint(a.Value.Any())
			}
			return true
		})
		if rid == id && to != "" {
			out = append(out, fmt.Sprintf("%s %s->%s", r.Level, from, to))
		}
	}
	return out
}

// runMonitor runs m until the test ends and checks Run returns.
func runMonitor(t *testing.T, m *Monitor) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
}

// waitFor polls cond every 5 ms until it holds or the deadline passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitState(t *testing.T, m *Monitor, id string, want State, within time.Duration) Status {
	t.Helper()
	var st Status
	waitFor(t, within, fmt.Sprintf("%s to be %v", id, want), func() bool {
		var ok bool
		st, ok = m.Status(id)
		return ok && st.State == want
	})
	return st
}

// imapOK is a well-behaved IMAP server.
var imapOK = script("* OK ready\r\n", map[string]string{"z LOGOUT": "* BYE bye\r\nz OK done\r\n"})

// switchable is an IMAP server that greets "* OK" or "* BYE" on demand.
func switchable(t *testing.T) (*fakeServer, *atomic.Bool) {
	var up atomic.Bool
	up.Store(true)
	srv := newFake(t, func(c net.Conn, r *bufio.Reader) {
		if up.Load() {
			imapOK(c, r)
			return
		}
		c.Write([]byte("* BYE maintenance\r\n"))
	})
	return srv, &up
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{StateUnknown: "unknown", StateUp: "up", StateDown: "down", State(7): "State(7)"} {
		if s.String() != want {
			t.Errorf("%d.String() = %q, want %q", int(s), s.String(), want)
		}
	}
}

// CheckNow applies the first-result rule and rise/fall exactly.
func TestCheckNowRiseFall(t *testing.T) {
	srv, up := switchable(t)
	rec := newRecorder()
	logs := &logCapture{}
	m := NewMonitor(Settings{Interval: time.Hour, Rise: 3, Fall: 2}, rec.change, slog.New(logs), rec)
	m.Set([]Target{{ID: "t", Addr: srv.addr(), Probe: Probe{Kind: KindIMAP, Timeout: 2 * time.Second}}})
	if st, ok := m.Status("t"); !ok || st.State != StateUnknown {
		t.Fatalf("new target: %+v %v", st, ok)
	}
	ctx := context.Background()
	steps := []struct {
		up    bool
		state State
	}{
		{false, StateDown}, // the first result decides at once
		{true, StateDown},
		{true, StateDown},
		{true, StateUp}, // rise = 3
		{false, StateUp},
		{false, StateDown}, // fall = 2
		{false, StateDown},
		{true, StateDown},
		{false, StateDown},
		{true, StateDown},
		{true, StateDown},
		{true, StateUp},
	}
	for i, s := range steps {
		up.Store(s.up)
		st, err := m.CheckNow(ctx, "t")
		if err != nil {
			t.Fatal(err)
		}
		if st.State != s.state {
			t.Fatalf("step %d (server up=%v): state %v, want %v (%+v)", i, s.up, st.State, s.state, st)
		}
		if (st.LastErr == nil) != s.up {
			t.Fatalf("step %d: LastErr %v", i, st.LastErr)
		}
	}
	var got []string
	for _, c := range rec.changesOf("t") {
		got = append(got, fmt.Sprintf("%v->%v", c.From, c.To))
		if (c.To == StateDown) != (c.Err != nil) {
			t.Errorf("change %+v: Err must be set exactly for DOWN", c)
		}
	}
	want := []string{"unknown->down", "down->up", "up->down", "down->up"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("changes %v, want %v", got, want)
	}
	wantLogs := []string{"WARN unknown->down", "INFO down->up", "WARN up->down", "INFO down->up"}
	if l := logs.transitions("t"); fmt.Sprint(l) != fmt.Sprint(wantLogs) {
		t.Fatalf("logged %v, want %v", l, wantLogs)
	}
	if n := rec.count("t"); n != len(steps) {
		t.Fatalf("observer saw %d checks, want %d", n, len(steps))
	}
	if _, err := m.CheckNow(ctx, "nope"); err == nil {
		t.Fatal("CheckNow of an unknown target succeeded")
	}
}

// A real Dovecot goes away and comes back: DOWN after exactly Fall failed
// checks, UP after exactly Rise good ones, one onChange and one log line
// per transition.
func TestMonitorFollowsDovecot(t *testing.T) {
	peer.Require(t, "dovecot")
	const rise, fall = 2, 3
	dir := t.TempDir()
	o := peer.DovecotOptions{Dir: dir, Name: "node-m", Ports: peer.DovecotPorts{POP3: -1}}
	d := startDovecot(t, o)
	lo := netip.MustParseAddr("127.0.0.1")

	rec := newRecorder()
	logs := &logCapture{}
	m := NewMonitor(Settings{Interval: 50 * time.Millisecond, Jitter: 10 * time.Millisecond, Rise: rise, Fall: fall, Concurrency: 4},
		rec.change, slog.New(logs), rec)
	m.Set([]Target{
		{ID: "imap", Addr: d.Addr(lo, d.Ports.IMAP), Probe: Probe{Kind: KindIMAP, Timeout: time.Second}},
		{ID: "lmtp", Addr: d.Addr(lo, d.Ports.LMTP), Probe: Probe{Kind: KindLMTP, Timeout: time.Second}},
	})
	runMonitor(t, m)

	for _, id := range []string{"imap", "lmtp"} {
		waitState(t, m, id, StateUp, 5*time.Second)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"imap", "lmtp"} {
		st := waitState(t, m, id, StateDown, 10*time.Second)
		if st.Failures < fall || st.LastErr == nil {
			t.Fatalf("%s: %+v", id, st)
		}
	}
	o.Ports = d.Ports // same ports, same Dir
	startDovecot(t, o)
	for _, id := range []string{"imap", "lmtp"} {
		waitState(t, m, id, StateUp, 10*time.Second)
	}
	// A few more checks: no further transitions.
	n := rec.count("imap")
	waitFor(t, 5*time.Second, "5 more checks", func() bool { return rec.count("imap") >= n+5 })

	for _, id := range []string{"imap", "lmtp"} {
		ch := rec.changesOf(id)
		var got []string
		for _, c := range ch {
			got = append(got, fmt.Sprintf("%v->%v after %d", c.From, c.To, c.run))
		}
		want := []string{"unknown->up after 1", fmt.Sprintf("up->down after %d", fall), fmt.Sprintf("down->up after %d", rise)}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: changes %q, want %q", id, got, want)
		}
		if len(ch) == 3 {
			t.Logf("%s went down with: %v", id, ch[1].Err)
		}
		wantLogs := []string{"INFO unknown->up", "WARN up->down", "INFO down->up"}
		if l := logs.transitions(id); fmt.Sprint(l) != fmt.Sprint(wantLogs) {
			t.Errorf("%s: logged %v, want %v", id, l, wantLogs)
		}
	}
}

// A slow server counting simultaneous connections never sees more than
// Concurrency, before and after UpdateSettings changes it.
func TestMonitorConcurrencyBound(t *testing.T) {
	var cur, peak atomic.Int32
	srv := newFake(t, func(c net.Conn, r *bufio.Reader) {
		n := cur.Add(1)
		done := false
		defer func() {
			if !done {
				cur.Add(-1)
			}
		}()
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(20 * time.Millisecond) // a slow node (not synchronisation)
		if _, err := c.Write([]byte("* OK slow\r\n")); err != nil {
			return
		}
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
		// Leave the count before the last line: the client cannot finish
		// (and free its slot) before we do.
		c.Write([]byte("* BYE\r\n"))
		cur.Add(-1)
		done = true
		c.Write([]byte("z OK\r\n"))
	})
	rec := newRecorder()
	m := NewMonitor(Settings{Interval: 10 * time.Millisecond, Rise: 1, Fall: 1, Concurrency: 3}, nil, nil, rec)
	var targets []Target
	for i := range 20 {
		targets = append(targets, Target{ID: fmt.Sprint("t", i), Addr: srv.addr(), Probe: Probe{Kind: KindIMAP, Timeout: 5 * time.Second}})
	}
	m.Set(targets)
	runMonitor(t, m)
	total := func() int {
		n := 0
		for _, tg := range targets {
			n += rec.count(tg.ID)
		}
		return n
	}
	waitFor(t, 20*time.Second, "60 checks", func() bool { return total() >= 60 })
	if p := peak.Load(); p != 3 {
		t.Fatalf("peak concurrency %d, want exactly 3 (bound 3, 20 targets always due)", p)
	}
	m.UpdateSettings(Settings{Interval: 10 * time.Millisecond, Rise: 1, Fall: 1, Concurrency: 6})
	peak.Store(0)
	n := total()
	waitFor(t, 20*time.Second, "60 more checks", func() bool { return total() >= n+60 })
	if p := peak.Load(); p > 6 || p < 4 {
		t.Fatalf("peak concurrency %d after raising the bound to 6", p)
	}
	for _, tg := range targets {
		for _, r := range rec.resultsOf(tg.ID) {
			if r.err != nil {
				t.Fatalf("%s: %v", tg.ID, r.err)
			}
		}
	}
}

// Checks of a target come every Interval ± Jitter; new targets are checked
// within Jitter; a shorter interval takes effect at once.
func TestMonitorSchedule(t *testing.T) {
	srv := newFake(t, imapOK)
	rec := newRecorder()
	const interval, jitter = 60 * time.Millisecond, 20 * time.Millisecond
	m := NewMonitor(Settings{Interval: interval, Jitter: jitter, Concurrency: 8}, nil, nil, rec)
	runMonitor(t, m)
	added := time.Now()
	m.Set([]Target{{ID: "a", Addr: srv.addr(), Probe: Probe{Kind: KindIMAP}}, {ID: "b", Addr: srv.addr(), Probe: Probe{Kind: KindIMAP}}})
	waitFor(t, 10*time.Second, "10 checks of a", func() bool { return rec.count("a") >= 10 })
	for _, id := range []string{"a", "b"} {
		res := rec.resultsOf(id)
		if first := res[0].start().Sub(added); first > jitter+200*time.Millisecond {
			t.Errorf("%s: first check %v after Set, jitter is %v", id, first, jitter)
		}
		for i := 1; i < len(res); i++ {
			// The next check is due Interval ± Jitter after the start of
			// the previous one; it may start late (a busy machine), never
			// early.
			gap := res[i].start().Sub(res[i-1].start())
			if gap < interval-jitter-5*time.Millisecond || gap > interval+jitter+500*time.Millisecond {
				t.Errorf("%s: gap %v between checks %d and %d, want %v ± %v", id, gap, i-1, i, interval, jitter)
			}
		}
	}

	// A long interval, then a short one: checks resume promptly.
	m.UpdateSettings(Settings{Interval: time.Hour})
	waitFor(t, 5*time.Second, "both targets to be queued an hour ahead", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.queue.Len() != 2 {
			return false
		}
		for _, e := range m.queue {
			if time.Until(e.due) < 30*time.Minute {
				return false
			}
		}
		return true
	})
	m.UpdateSettings(Settings{Interval: 30 * time.Millisecond})
	n := rec.count("a")
	waitFor(t, 5*time.Second, "checks at the new interval", func() bool { return rec.count("a") >= n+3 })
}

// Set keeps the state of unchanged targets, drops removed ones and starts
// changed ones over.
func TestMonitorSetKeepsState(t *testing.T) {
	srv := newFake(t, imapOK)
	other := newFake(t, imapOK)
	rec := newRecorder()
	m := NewMonitor(Settings{Interval: 20 * time.Millisecond, Rise: 2, Fall: 2}, rec.change, nil, rec)
	conf := &tls.Config{}
	dialer := &net.Dialer{}
	a := Target{ID: "a", Addr: srv.addr(), Probe: Probe{Kind: KindIMAP, TLSConfig: conf, Dialer: dialer, Timeout: time.Second}}
	b := Target{ID: "b", Addr: srv.addr(), Probe: Probe{Kind: KindIMAP}}
	m.Set([]Target{a, b})
	runMonitor(t, m)
	waitState(t, m, "b", StateUp, 5*time.Second)
	waitFor(t, 5*time.Second, "a to pass 3 checks", func() bool {
		st, _ := m.Status("a")
		return st.State == StateUp && st.Successes >= 3
	})
	before, _ := m.Status("a")

	c := Target{ID: "c", Addr: srv.addr(), Probe: Probe{Kind: KindPOP3, Timeout: time.Second}}
	a2 := a // as a config reload would build it: an equal, new TLS config
	a2.Probe.TLSConfig = conf.Clone()
	m.Set([]Target{a2, c})
	if _, ok := m.Status("b"); ok {
		t.Fatal("b is still known after Set dropped it")
	}
	after, ok := m.Status("a")
	if !ok || after.State != StateUp || !after.Since.Equal(before.Since) || after.Successes < before.Successes {
		t.Fatalf("a lost its state: before %+v, after %+v", before, after)
	}
	if st, ok := m.Status("c"); !ok || st.State == StateUp {
		t.Fatalf("c: %+v %v", st, ok)
	}
	// c speaks POP3 to an IMAP server: DOWN at its first check.
	waitState(t, m, "c", StateDown, 5*time.Second)
	if got := len(m.Statuses()); got != 2 {
		t.Fatalf("%d statuses, want 2", got)
	}
	nb := rec.count("b")

	// A changed address starts over.
	a3 := a
	a3.Addr = other.addr()
	setAt := time.Now()
	m.Set([]Target{a3, c})
	// The running monitor may check the new entry at once (it is due
	// now), so "starts over" is: unknown, or a state entered after Set.
	if st, _ := m.Status("a"); st.State != StateUnknown && st.Since.Before(setAt) {
		t.Fatalf("a with a new address kept its state: %+v", st)
	}
	waitState(t, m, "a", StateUp, 5*time.Second)
	// b never checked again.
	waitFor(t, 5*time.Second, "a few checks of a", func() bool { st, _ := m.Status("a"); return st.Successes >= 3 })
	if rec.count("b") > nb+1 { // one check may have been in flight
		t.Fatalf("b was checked %d times after its removal", rec.count("b")-nb)
	}
	for _, ch := range rec.changesOf("b") {
		if ch.To != StateUp {
			t.Fatalf("b changed after removal: %+v", ch)
		}
	}
}

func TestSameTarget(t *testing.T) {
	pemA := []byte(testCertPEM(t))
	pool := func(pems ...[]byte) *x509.CertPool {
		p := x509.NewCertPool()
		for _, b := range pems {
			p.AppendCertsFromPEM(b)
		}
		return p
	}
	conf := &tls.Config{ServerName: "node-a1", RootCAs: pool(pemA), MinVersion: tls.VersionTLS12}
	nd := &net.Dialer{}
	base := Target{ID: "x", Addr: "127.0.0.1:143", Probe: Probe{Kind: KindIMAP, TLS: TLSStartTLS, TLSConfig: conf, Dialer: nd, Timeout: time.Second}}
	for _, tc := range []struct {
		name string
		mod  func(*Target)
		same bool
	}{
		{"identical", func(*Target) {}, true},
		{"addr", func(t *Target) { t.Addr = "127.0.0.1:993" }, false},
		{"kind", func(t *Target) { t.Probe.Kind = KindPOP3 }, false},
		{"tls mode", func(t *Target) { t.Probe.TLS = TLSImplicit }, false},
		{"timeout", func(t *Target) { t.Probe.Timeout = 2 * time.Second }, false},
		// TLS configs by value: a reload rebuilding them keeps the state.
		{"tls clone", func(t *Target) { t.Probe.TLSConfig = conf.Clone() }, true},
		{"tls rebuilt from the same CA file", func(t *Target) {
			t.Probe.TLSConfig = &tls.Config{ServerName: "node-a1", RootCAs: pool(pemA), MinVersion: tls.VersionTLS12}
		}, true},
		{"tls other CA", func(t *Target) {
			c := conf.Clone()
			c.RootCAs = pool()
			t.Probe.TLSConfig = c
		}, false},
		{"tls system roots", func(t *Target) {
			c := conf.Clone()
			c.RootCAs = nil
			t.Probe.TLSConfig = c
		}, false},
		{"tls server name", func(t *Target) {
			c := conf.Clone()
			c.ServerName = "node-a2"
			t.Probe.TLSConfig = c
		}, false},
		{"tls insecure", func(t *Target) {
			c := conf.Clone()
			c.InsecureSkipVerify = true
			t.Probe.TLSConfig = c
		}, false},
		{"tls callback", func(t *Target) {
			c := conf.Clone()
			c.VerifyConnection = func(tls.ConnectionState) error { return nil }
			t.Probe.TLSConfig = c
		}, false},
		{"tls nil", func(t *Target) { t.Probe.TLSConfig = nil }, false},
		// Dialers by ==.
		{"same dialer pointer", func(t *Target) { t.Probe.Dialer = nd }, true},
		{"other dialer pointer", func(t *Target) { t.Probe.Dialer = &net.Dialer{} }, false},
		{"nil dialer", func(t *Target) { t.Probe.Dialer = nil }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.mod(&o)
			if got := sameTarget(base, o); got != tc.same {
				t.Fatalf("sameTarget = %v, want %v", got, tc.same)
			}
		})
	}
	// Comparable dialer values compare by value; non-comparable ones never
	// panic and count as changed.
	for _, tc := range []struct {
		name string
		a, b Dialer
		same bool
	}{
		{"mark equal", MarkDialer{Mark: 5}, MarkDialer{Mark: 5}, true},
		{"mark differs", MarkDialer{Mark: 5}, MarkDialer{Mark: 6}, false},
		{"value equal", valueDialerT{"v"}, valueDialerT{"v"}, true},
		{"value differs", valueDialerT{"v"}, valueDialerT{"w"}, false},
		{"types differ", valueDialerT{"v"}, MarkDialer{}, false},
		{"func", dialFunc(nil), dialFunc(nil), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := base, base
			a.Probe.Dialer, b.Probe.Dialer = tc.a, tc.b
			if got := sameTarget(a, b); got != tc.same {
				t.Fatalf("sameTarget = %v, want %v", got, tc.same)
			}
		})
	}
}

type valueDialerT struct{ name string }

func (valueDialerT) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, net.ErrClosed
}

// Run leaves no goroutine behind and refuses to run twice at once.
func TestMonitorRunStops(t *testing.T) {
	slow := newFake(t, func(c net.Conn, r *bufio.Reader) { drain(r) }) // never greets: checks hang
	good := newFake(t, imapOK)
	base := runtime.NumGoroutine()

	// Five of the ten targets hang; six slots leave one for the others
	// whatever order the queue pops them in (with fewer, hung checks can
	// take every slot before a good target's turn: a correct starvation,
	// not what this test is about).
	m := NewMonitor(Settings{Interval: 10 * time.Millisecond, Concurrency: 6}, nil, nil, nil)
	var targets []Target
	for i := range 10 {
		addr := good.addr()
		if i%2 == 0 {
			addr = slow.addr()
		}
		targets = append(targets, Target{ID: fmt.Sprint(i), Addr: addr, Probe: Probe{Kind: KindIMAP, Timeout: time.Minute}})
	}
	m.Set(targets)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	waitState(t, m, "1", StateUp, 5*time.Second)
	if err := m.Run(context.Background()); err == nil {
		t.Fatal("a second concurrent Run succeeded")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return: hung checks are not cancelled")
	}
	// Hung checks were cancelled, not counted as failures.
	for _, id := range []string{"0", "2", "4"} {
		if st, _ := m.Status(id); st.State != StateUnknown {
			t.Fatalf("target %s on the hung server: %+v (a cancelled check must not count)", id, st)
		}
	}
	waitFor(t, 5*time.Second, "goroutines to return to the baseline", func() bool {
		return runtime.NumGoroutine() <= base
	})
	// It can run again.
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() { done <- m.Run(ctx2) }()
	waitState(t, m, "3", StateUp, 5*time.Second)
	cancel2()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "goroutines to return to the baseline", func() bool {
		return runtime.NumGoroutine() <= base
	})
}

// testCertPEM makes a throwaway self-signed certificate.
func testCertPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}
