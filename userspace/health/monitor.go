package health

import (
	"container/heap"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"sync"
	"time"
)

// Target is one thing to check: a node's address for one service (through
// the VIP or directly) with the probe that fits it.
type Target struct {
	ID    string // unique, e.g. "imap-a/dbmail-left-a/vip4"
	Addr  string // host:port
	Probe Probe
}

// State of a target.
type State int

const (
	StateUnknown State = iota // not checked yet
	StateUp
	StateDown
)

func (s State) String() string {
	switch s {
	case StateUnknown:
		return "unknown"
	case StateUp:
		return "up"
	case StateDown:
		return "down"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// MarshalText makes states readable in JSON and logs.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Status is what the monitor knows about a target.
type Status struct {
	State       State
	Since       time.Time // when State was entered (zero while unknown)
	LastErr     error     // error of the last check (nil if it passed)
	LastLatency time.Duration
	LastCheck   time.Time
	Successes   int // consecutive
	Failures    int // consecutive
}

// Change is a state transition of one target.
type Change struct {
	ID       string
	From, To State
	Err      error // the failure that brought the target down (nil when up)
	At       time.Time
}

// Settings tune a Monitor. Zero fields take the defaults below.
type Settings struct {
	// Interval between two checks of a target (default 2 s).
	Interval time.Duration
	// Jitter: each interval is Interval ± a uniform random amount up to
	// Jitter, so targets do not fall into lockstep. At most Interval/2.
	// New targets are first checked within Jitter of being added.
	Jitter time.Duration
	// Rise: consecutive successes that bring a DOWN target UP (default 2).
	Rise int
	// Fall: consecutive failures that bring an UP target DOWN (default 3).
	Fall int
	// Concurrency: most checks in flight at once (default 32).
	Concurrency int
}

// Defaults for zero Settings fields.
const (
	DefaultInterval    = 2 * time.Second
	DefaultRise        = 2
	DefaultFall        = 3
	DefaultConcurrency = 32
)

func (s Settings) normalized() Settings {
	if s.Interval <= 0 {
		s.Interval = DefaultInterval
	}
	s.Jitter = min(max(s.Jitter, 0), s.Interval/2)
	if s.Rise <= 0 {
		s.Rise = DefaultRise
	}
	if s.Fall <= 0 {
		s.Fall = DefaultFall
	}
	if s.Concurrency <= 0 {
		s.Concurrency = DefaultConcurrency
	}
	return s
}

// Observer sees every check's outcome (metrics).
type Observer interface {
	ObserveCheck(id string, latency time.Duration, err error)
}

// Monitor checks targets periodically and reports state changes. The
// first result of a new target decides its state at once (an LB restart
// does not wait Rise intervals); afterwards UP needs Rise consecutive
// successes and DOWN needs Fall consecutive failures. One scheduler
// goroutine keeps the targets in a queue ordered by due time and starts
// each check on its own goroutine, at most Concurrency at a time; a
// target's next check is scheduled only once its previous result has been
// applied and announced.
//
// onChange is called exactly once per transition, in order for each
// target, from the goroutine that ran the check; calls are serialised.
// It may call Status, Statuses, Set and UpdateSettings, but not CheckNow.
type Monitor struct {
	onChange func(Change)
	log      *slog.Logger
	obs      Observer

	notifyMu sync.Mutex // held while a result is applied and announced

	mu       sync.Mutex
	settings Settings
	targets  map[string]*entry
	queue    queue
	inflight int  // scheduled checks running
	running  bool // Run is active
	wake     chan struct{}
}

// entry is one target's state. A target replaced by Set gets a new entry;
// the old one is marked gone, so a check still in flight for it is
// discarded.
type entry struct {
	t     Target
	st    Status
	due   time.Time
	index int // in queue; -1 when not queued (check in flight, or gone)
	gone  bool
}

// NewMonitor makes a monitor; call Set to give it targets and Run to start
// it. onChange, log and obs may be nil.
func NewMonitor(s Settings, onChange func(Change), log *slog.Logger, obs Observer) *Monitor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Monitor{
		onChange: onChange,
		log:      log,
		obs:      obs,
		settings: s.normalized(),
		targets:  map[string]*entry{},
		wake:     make(chan struct{}, 1),
	}
}

// poke wakes the scheduler.
func (m *Monitor) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// sameTarget compares two targets by value, so a config reload that
// rebuilds equal probes keeps the targets' state: TLS configs are compared
// field by field (sameTLS), Dialers by ==. A Dialer that cannot be
// compared (a func type, a struct holding a func) or two distinct pointers
// count as different: use comparable Dialer values such as MarkDialer, or
// reuse the same pointer.
func sameTarget(a, b Target) bool {
	if a.ID != b.ID || a.Addr != b.Addr {
		return false
	}
	pa, pb := a.Probe, b.Probe
	if pa.Kind != pb.Kind || pa.TLS != pb.TLS || pa.Timeout != pb.Timeout || !sameTLS(pa.TLSConfig, pb.TLSConfig) {
		return false
	}
	if pa.Dialer == nil || pb.Dialer == nil {
		return pa.Dialer == nil && pb.Dialer == nil
	}
	va, vb := reflect.ValueOf(pa.Dialer), reflect.ValueOf(pb.Dialer)
	if va.Type() != vb.Type() || !va.Comparable() || !vb.Comparable() {
		return false
	}
	return va.Equal(vb)
}

var certPoolType = reflect.TypeFor[*x509.CertPool]()

// sameTLS reports whether two TLS configs would make the same handshake:
// the same pointer, or equal exported fields, with cert pools compared by
// content (CertPool.Equal) and any callback (VerifyConnection, …) making
// them different.
func sameTLS(a, b *tls.Config) bool {
	if a == b {
		return true
	}
	if a == nil || b == nil {
		return false
	}
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	for i := range va.NumField() {
		f := va.Type().Field(i)
		if !f.IsExported() {
			continue
		}
		fa, fb := va.Field(i), vb.Field(i)
		switch {
		case f.Type.Kind() == reflect.Func:
			if !fa.IsNil() || !fb.IsNil() {
				return false
			}
		case f.Type == certPoolType:
			pa, pb := fa.Interface().(*x509.CertPool), fb.Interface().(*x509.CertPool)
			if (pa == nil) != (pb == nil) || (pa != nil && !pa.Equal(pb)) {
				return false
			}
		default:
			if !reflect.DeepEqual(fa.Interface(), fb.Interface()) {
				return false
			}
		}
	}
	return true
}

// uniform returns a random duration in [lo, hi].
func uniform(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(rand.Int64N(int64(hi-lo)+1))
}

// Set makes targets the monitored set: new IDs are added (first check
// within Jitter), missing ones dropped, and targets whose Addr or Probe
// changed start over as new. A target whose ID, Addr and Probe are
// unchanged keeps its state and schedule; probes are compared by value
// (see sameTarget: equal TLS configs match, Dialers must be comparable
// values like MarkDialer or the same pointer). Duplicate IDs: the first
// wins.
// Safe to call at any time.
func (m *Monitor) Set(targets []Target) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	seen := make(map[string]bool, len(targets))
	for _, t := range targets {
		if seen[t.ID] {
			m.log.Warn("health: duplicate target ID ignored", "id", t.ID, "addr", t.Addr)
			continue
		}
		seen[t.ID] = true
		if old, ok := m.targets[t.ID]; ok {
			if sameTarget(old.t, t) {
				continue
			}
			m.drop(old)
		}
		e := &entry{t: t, index: -1, due: now.Add(uniform(0, m.settings.Jitter))}
		m.targets[t.ID] = e
		heap.Push(&m.queue, e)
	}
	for id, e := range m.targets {
		if !seen[id] {
			m.drop(e)
		}
	}
	m.poke()
}

// drop removes e (m.mu held).
func (m *Monitor) drop(e *entry) {
	e.gone = true
	if e.index >= 0 {
		heap.Remove(&m.queue, e.index)
	}
	delete(m.targets, e.t.ID)
}

// UpdateSettings changes the settings; a shorter interval takes effect at
// once (queued checks due later than one new interval are pulled in).
func (m *Monitor) UpdateSettings(s Settings) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s = s.normalized()
	m.settings = s
	now := time.Now()
	latest := now.Add(s.Interval + s.Jitter)
	for _, e := range m.queue {
		if e.due.After(latest) {
			e.due = now.Add(uniform(0, s.Interval))
		}
	}
	heap.Init(&m.queue)
	m.poke()
}

// Settings returns the settings in force (defaults filled in).
func (m *Monitor) Settings() Settings {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.settings
}

// Status returns a target's status.
func (m *Monitor) Status(id string) (Status, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.targets[id]
	if !ok {
		return Status{}, false
	}
	return e.st, true
}

// Statuses returns every target's status by ID.
func (m *Monitor) Statuses() map[string]Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]Status, len(m.targets))
	for id, e := range m.targets {
		out[id] = e.st
	}
	return out
}

// ErrUnknownTarget is returned by CheckNow for an ID that is not set.
var ErrUnknownTarget = errors.New("health: unknown target")

// CheckNow runs one check of target id at once, whether or not Run is
// active and outside the Concurrency bound, applies it like a scheduled
// one (rise/fall, onChange, log, observer) and returns the new status.
// The check's own failure is in Status.LastErr; the error is for an
// unknown target, or one removed or replaced while the check ran.
func (m *Monitor) CheckNow(ctx context.Context, id string) (Status, error) {
	m.mu.Lock()
	e, ok := m.targets[id]
	m.mu.Unlock()
	if !ok {
		return Status{}, fmt.Errorf("%w %q", ErrUnknownTarget, id)
	}
	lat, err := e.t.Probe.Check(ctx, e.t.Addr)
	st, ok := m.apply(e, lat, err, time.Now())
	if !ok {
		return st, fmt.Errorf("health: target %q was removed or replaced during the check", id)
	}
	return st, nil
}

// apply records a result, and logs and announces a state change.
func (m *Monitor) apply(e *entry, lat time.Duration, err error, at time.Time) (Status, bool) {
	m.notifyMu.Lock()
	defer m.notifyMu.Unlock()
	m.mu.Lock()
	if e.gone {
		st := e.st
		m.mu.Unlock()
		return st, false
	}
	set := m.settings
	s := &e.st
	s.LastCheck, s.LastLatency, s.LastErr = at, lat, err
	if err == nil {
		s.Successes++
		s.Failures = 0
	} else {
		s.Failures++
		s.Successes = 0
	}
	from, to := s.State, s.State
	switch {
	case from == StateUnknown && err == nil:
		to = StateUp
	case from == StateUnknown:
		to = StateDown
	case from == StateUp && s.Failures >= set.Fall:
		to = StateDown
	case from == StateDown && s.Successes >= set.Rise:
		to = StateUp
	}
	if to != from {
		s.State, s.Since = to, at
	}
	st := *s
	m.mu.Unlock()

	if m.obs != nil {
		m.obs.ObserveCheck(e.t.ID, lat, err)
	}
	if to == from {
		return st, true
	}
	if to == StateUp {
		m.log.Info("health: target up", "id", e.t.ID, "addr", e.t.Addr, "from", from, "to", to)
	} else {
		m.log.Warn("health: target down", "id", e.t.ID, "addr", e.t.Addr, "from", from, "to", to, "error", err)
	}
	if m.onChange != nil {
		var cerr error
		if to == StateDown {
			cerr = err
		}
		m.onChange(Change{ID: e.t.ID, From: from, To: to, Err: cerr, At: at})
	}
	return st, true
}

// Run checks the targets until ctx is done, then waits for the checks in
// flight (they are cancelled; their results are dropped) and returns nil.
// Only one Run may be active at a time.
func (m *Monitor) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.running {
		m.mu.Unlock()
		return errors.New("health: Monitor.Run is already running")
	}
	m.running = true
	m.mu.Unlock()

	var wg sync.WaitGroup
	defer func() {
		wg.Wait()
		m.mu.Lock()
		m.running = false
		m.mu.Unlock()
	}()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		wait := time.Duration(-1) // until poked
		m.mu.Lock()
		now := time.Now()
		for m.queue.Len() > 0 {
			e := m.queue[0]
			if d := e.due.Sub(now); d > 0 {
				wait = d
				break
			}
			if m.inflight >= m.settings.Concurrency {
				break // a finishing check pokes us
			}
			heap.Pop(&m.queue)
			m.inflight++
			wg.Add(1)
			go func() {
				defer wg.Done()
				m.runCheck(ctx, e)
			}()
		}
		m.mu.Unlock()
		if wait >= 0 {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// runCheck runs one scheduled check and queues the target's next one.
func (m *Monitor) runCheck(ctx context.Context, e *entry) {
	start := time.Now()
	lat, err := e.t.Probe.Check(ctx, e.t.Addr)
	cancelled := ctx.Err() != nil
	if !cancelled {
		m.apply(e, lat, err, time.Now())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.inflight--
	if !e.gone && e.index < 0 {
		if cancelled {
			e.due = time.Now() // a later Run checks it first
		} else {
			s := m.settings
			e.due = start.Add(s.Interval + uniform(-s.Jitter, s.Jitter))
		}
		heap.Push(&m.queue, e)
	}
	m.poke()
}

// queue is a min-heap of entries by due time.
type queue []*entry

func (q queue) Len() int           { return len(q) }
func (q queue) Less(i, j int) bool { return q[i].due.Before(q[j].due) }
func (q queue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *queue) Push(x any) {
	e := x.(*entry)
	e.index = len(*q)
	*q = append(*q, e)
}
func (q *queue) Pop() any {
	old := *q
	e := old[len(old)-1]
	old[len(old)-1] = nil
	e.index = -1
	*q = old[:len(old)-1]
	return e
}
