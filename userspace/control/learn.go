package control

import (
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/config"
)

// Learner installs learned affinity: a client address whose logins all
// land in one island goes straight to that island by XDP. A login from
// that address into another island is a conflict: the entry goes at once
// and the address is barred from learning for a while (behind NAT many
// users share an address; see config.AffinityLearn).
type Learner struct {
	m      *maps.Maps
	log    *slog.Logger
	now    func() time.Time
	mono   func() time.Duration // the data plane's clock (CLOCK_MONOTONIC coarse)
	island func(name string) (uint32, bool)

	mu        sync.Mutex
	set       config.AffinityLearn
	static    map[netip.Prefix]bool
	addrs     map[netip.Addr]*learnState
	learned   int
	conflicts uint64
}

type learnState struct {
	island      string
	count       int
	installed   bool
	expires     time.Time
	barredUntil time.Time
	seen        time.Time
}

// NewLearner returns a learner writing m. island maps an island name to
// its id (the reconciler's); mono reads the data plane's clock.
func NewLearner(m *maps.Maps, log *slog.Logger, island func(string) (uint32, bool), mono func() time.Duration) *Learner {
	return &Learner{m: m, log: log, now: time.Now, mono: mono, island: island, addrs: map[netip.Addr]*learnState{}, static: map[netip.Prefix]bool{}}
}

// Adopt takes over the learned entries a previous daemon left in the
// pinned maps, so they are refreshed, expired and counted as ours.
func (l *Learner) Adopt() error {
	all, err := l.m.ListAffinity()
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now, mono := l.now(), l.mono()
	for _, a := range all {
		if !a.Learned || !a.Prefix.IsSingleIP() {
			continue
		}
		st := &learnState{installed: true, expires: now.Add(a.Expires - mono), seen: now}
		l.addrs[a.Prefix.Addr()] = st
		l.learned++
	}
	return nil
}

// Configure applies the settings and the static prefixes (a static /32 or
// /128 is never overridden by learning). Turning learning off removes the
// learned entries.
func (l *Learner) Configure(set config.AffinityLearn, static []config.AffinityPrefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.set = set
	l.static = map[netip.Prefix]bool{}
	for _, s := range static {
		l.static[s.Prefix] = true
	}
	if !set.Enabled {
		for a, st := range l.addrs {
			if st.installed {
				l.uninstall(a, st)
			}
		}
		l.addrs = map[netip.Addr]*learnState{}
	}
}

func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// Login hears of a successful login from client into island.
func (l *Learner) Login(client netip.Addr, island string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.set.Enabled || !client.IsValid() || l.static[hostPrefix(client)] {
		return
	}
	now := l.now()
	st := l.addrs[client]
	if st == nil {
		if len(l.addrs) >= 4*l.set.MaxEntries {
			l.sweep(now)
			if len(l.addrs) >= 4*l.set.MaxEntries {
				return // bounded memory: learn nothing new until entries age out
			}
		}
		st = &learnState{island: island}
		l.addrs[client] = st
	}
	st.seen = now
	if now.Before(st.barredUntil) {
		// Logins while barred only set where counting starts again.
		st.island, st.count = island, 0
		return
	}
	if st.island != island {
		l.conflicts++
		if st.installed {
			l.uninstall(client, st)
		}
		l.log.Info("affinity: logins from one address into two islands; not learned", "client", client, "islands", []string{st.island, island}, "barred_for", l.set.Bar)
		*st = learnState{island: island, barredUntil: now.Add(l.set.Bar), seen: now}
		return
	}
	st.count++
	if st.count < l.set.Logins {
		return
	}
	id, ok := l.island(island)
	if !ok {
		return
	}
	if !st.installed && l.learned >= l.set.MaxEntries {
		return
	}
	// Each login refreshes the entry's lifetime.
	var probe uint16
	if l.set.VerifyOneIn > 1 {
		probe = uint16(l.set.VerifyOneIn - 1)
	}
	err := l.m.PutAffinity(maps.Affinity{Prefix: hostPrefix(client), Island: id, Learned: true, Expires: l.mono() + l.set.TTL, ProbeMask: probe})
	if err != nil {
		l.log.Warn("affinity: cannot install a learned entry", "client", client, "err", err)
		return
	}
	if !st.installed {
		l.learned++
		l.log.Info("affinity: learned", "client", client, "island", island, "after_logins", st.count)
	}
	st.installed = true
	st.expires = now.Add(l.set.TTL)
}

func (l *Learner) uninstall(a netip.Addr, st *learnState) {
	if err := l.m.DeleteAffinity(hostPrefix(a)); err != nil {
		l.log.Warn("affinity: cannot remove a learned entry", "client", a, "err", err)
	}
	st.installed = false
	l.learned--
}

// sweep forgets expired learned entries and idle addresses.
func (l *Learner) sweep(now time.Time) {
	for a, st := range l.addrs {
		if st.installed && now.After(st.expires) {
			l.uninstall(a, st)
		}
		if !st.installed && now.After(st.barredUntil) && now.Sub(st.seen) > l.set.TTL {
			delete(l.addrs, a)
		}
	}
}

// Sweep removes expired learned entries from the maps (the data plane
// already ignores them) and forgets idle addresses; call it now and then.
func (l *Learner) Sweep() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(l.now())
}

// Stats returns the learned entries and the conflicts seen so far.
func (l *Learner) Stats() (learned int, conflicts uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.learned, l.conflicts
}
