package maps

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/atoll-lb/atoll/bpf"
)

// Traffic is one reading of the data plane's counters. The data plane
// counts a forwarded packet once, on its backend (a (service, node) pair);
// a service's counters are the sum of its backends' and of those it has
// had since removed, and the fwd_established outcome the sum over all
// backends. Each sum is of counters that only grow, so a later reading
// is never lower than an earlier one.
type Traffic struct {
	Outcomes [NumStats]uint64
	Services map[uint32]Counters // by service id: every id with a backend or a removed one's counts
	Backends map[uint32]Counters // by backend id, for every backend in use
}

// ReadTraffic reads every counter.
func (m *Maps) ReadTraffic() (Traffic, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := Traffic{Services: map[uint32]Counters{}, Backends: map[uint32]Counters{}}
	for i := range t.Outcomes {
		var per []uint64
		if err := m.Stats.Lookup(uint32(i), &per); err != nil {
			return t, fmt.Errorf("maps: stats %s: %w", StatName(Stat(i)), err)
		}
		for _, v := range per {
			t.Outcomes[i] += v
		}
	}
	backends := make([]bpf.BalancerBackend, MaxBackends)
	if err := lookupFirst(m.Backends, len(backends), backends); err != nil {
		return t, fmt.Errorf("maps: read backends: %w", err)
	}
	// Only the ids up to the highest in use: the control plane hands out
	// low ids, and each entry is one value per CPU.
	used := 0
	for id, b := range backends {
		if b.State != uint8(StateUnused) {
			used = id + 1
		}
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return t, err
	}
	per := make([]bpf.BalancerCounters, used*cpus)
	if err := lookupFirst(m.BackendTraffic, used, per); err != nil {
		return t, fmt.Errorf("maps: read backend counters: %w", err)
	}
	retired := make([]bpf.BalancerCounters, MaxServices+1)
	if err := lookupFirst(m.RetiredTraffic, len(retired), retired); err != nil {
		return t, fmt.Errorf("maps: read retired counters: %w", err)
	}
	all := retired[RetiredAll]
	services := map[uint32]bpf.BalancerCounters{}
	for id, r := range retired[:MaxServices] {
		if r != (bpf.BalancerCounters{}) {
			services[uint32(id)] = r
		}
	}
	for id, b := range backends[:used] {
		if b.State == uint8(StateUnused) {
			continue
		}
		c := total(per[id*cpus : (id+1)*cpus])
		add(&all, c)
		t.Backends[uint32(id)] = counters(c)
		svc := services[uint32(b.Service)]
		add(&svc, c)
		services[uint32(b.Service)] = svc
	}
	for id, c := range services {
		t.Services[id] = counters(c)
	}
	t.Outcomes[StatFwdEstablished] = all.Established
	return t, nil
}

// ReadStats returns every outcome counter summed over CPUs.
func (m *Maps) ReadStats() ([NumStats]uint64, error) {
	t, err := m.ReadTraffic()
	return t.Outcomes, err
}

// ServiceCounters returns a service's counters: its backends', present
// and removed, summed over CPUs.
func (m *Maps) ServiceCounters(id uint32) (Counters, error) {
	t, err := m.ReadTraffic()
	if err != nil {
		return Counters{}, fmt.Errorf("maps: service %d counters: %w", id, err)
	}
	return t.Services[id], nil
}

// BackendCounters returns a backend's counters summed over CPUs.
func (m *Maps) BackendCounters(id uint32) (Counters, error) {
	c, err := m.backendTotal(id)
	return counters(c), err
}

// backendTotal reads a backend's counters, summed over CPUs.
func (m *Maps) backendTotal(id uint32) (bpf.BalancerCounters, error) {
	var per []bpf.BalancerCounters
	if err := m.BackendTraffic.Lookup(id, &per); err != nil {
		return bpf.BalancerCounters{}, fmt.Errorf("maps: backend %d counters: %w", id, err)
	}
	return total(per), nil
}

// retire moves a removed backend's counts to its service's and the
// overall retired counters, then zeroes them. The caller holds m.mu, as
// readers do, so no reading sees the counts twice or not at all; a packet
// counted between the two writes (by a CPU still forwarding to the
// backend as it goes) is lost.
func (m *Maps) retire(id, service uint32) error {
	c, err := m.backendTotal(id)
	if err != nil {
		return err
	}
	for _, idx := range []uint32{service, RetiredAll} {
		var r bpf.BalancerCounters
		if err := m.RetiredTraffic.Lookup(idx, &r); err != nil {
			return fmt.Errorf("maps: retired counters %d: %w", idx, err)
		}
		add(&r, c)
		if err := m.RetiredTraffic.Put(idx, &r); err != nil {
			return fmt.Errorf("maps: retired counters %d: %w", idx, err)
		}
	}
	return m.zeroTraffic(id)
}

// zeroTraffic zeroes a backend's counters on every CPU.
func (m *Maps) zeroTraffic(id uint32) error {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	if err := m.BackendTraffic.Put(id, make([]bpf.BalancerCounters, cpus)); err != nil {
		return fmt.Errorf("maps: zero backend %d counters: %w", id, err)
	}
	return nil
}

// lookupFirst reads entries 0..n-1 of an array map (values: one per
// entry, or one per entry and CPU for a per-CPU array) in one batch.
func lookupFirst[V any](mp *ebpf.Map, n int, values []V) error {
	if n == 0 {
		return nil
	}
	keys := make([]uint32, n)
	var cursor ebpf.MapBatchCursor
	got, err := mp.BatchLookup(&cursor, keys, values, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	if got != n {
		return fmt.Errorf("batch lookup gave %d of %d entries", got, n)
	}
	return nil
}

// total sums one entry's per-CPU counters.
func total(per []bpf.BalancerCounters) bpf.BalancerCounters {
	var c bpf.BalancerCounters
	for _, v := range per {
		add(&c, v)
	}
	return c
}

func add(dst *bpf.BalancerCounters, v bpf.BalancerCounters) {
	dst.Packets += v.Packets
	dst.Bytes += v.Bytes
	dst.NewFlows += v.NewFlows
	dst.Established += v.Established
}

func counters(c bpf.BalancerCounters) Counters {
	return Counters{Packets: c.Packets, Bytes: c.Bytes, NewFlows: c.NewFlows}
}
