package proxy

import (
	"net/netip"
	"sync"
	"time"
)

// ThrottleSettings govern the failed-login throttle.
type ThrottleSettings struct {
	// Threshold: failures within Window from one address before answers
	// are delayed (default 5; -1 disables the throttle).
	Threshold int
	// Window: how long a failure counts (default 10m).
	Window time.Duration
	// BaseDelay is the first delay; each further failure doubles it
	// (default 1s), up to MaxDelay (default 30s).
	BaseDelay, MaxDelay time.Duration
}

// throttle counts failed logins per client address.
type throttle struct {
	s ThrottleSettings

	mu    sync.Mutex
	fails map[netip.Addr][]time.Time
	swept time.Time
}

func newThrottle(s ThrottleSettings) *throttle {
	if s.Threshold == 0 {
		s.Threshold = 5
	}
	if s.Window <= 0 {
		s.Window = 10 * time.Minute
	}
	if s.BaseDelay <= 0 {
		s.BaseDelay = time.Second
	}
	if s.MaxDelay <= 0 {
		s.MaxDelay = 30 * time.Second
	}
	return &throttle{s: s, fails: map[netip.Addr][]time.Time{}}
}

// fail records a failure at now and returns the delay to apply.
func (t *throttle) fail(client netip.Addr, now time.Time) time.Duration {
	if t.s.Threshold < 0 {
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	cut := now.Add(-t.s.Window)
	if now.Sub(t.swept) > t.s.Window {
		// Forget quiet addresses now and then: the map stays bounded by
		// the addresses that failed within one window.
		for a, ts := range t.fails {
			if len(ts) == 0 || ts[len(ts)-1].Before(cut) {
				delete(t.fails, a)
			}
		}
		t.swept = now
	}
	ts := t.fails[client]
	i := 0
	for i < len(ts) && ts[i].Before(cut) {
		i++
	}
	ts = append(ts[i:], now)
	if len(ts) > 64 {
		ts = ts[len(ts)-64:]
	}
	t.fails[client] = ts
	over := len(ts) - t.s.Threshold
	if over <= 0 {
		return 0
	}
	d := t.s.BaseDelay
	for i := 1; i < over && d < t.s.MaxDelay; i++ {
		d *= 2
	}
	return min(d, t.s.MaxDelay)
}
