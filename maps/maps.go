// Package maps is the Go side of atoll's BPF maps: key and value types
// mirroring bpf/types.h, a typed API to put services, backends and Maglev
// rings and to read the counters, the Maglev table builder, and the flow
// hash mirrored from the data plane so Go can predict every choice.
//
// One Maps value owns the maps of one loaded balancer (or benchmark)
// collection. It is the only writer; it serialises its own calls.
package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/atoll-lb/atoll/bpf"
)

// Names of the maps a balancer collection must have.
const (
	MapServices       = "services"
	MapSvcTable       = "svc_table"
	MapServiceState   = "service_state"
	MapVIPAddrs       = "vip_addrs"
	MapVIPFilter      = "vip_filter"
	MapBackends       = "backends"
	MapRings          = "rings"
	MapRingsPrev      = "rings_prev"
	MapRingGrace      = "ring_grace"
	MapConntrack4     = "conntrack4"
	MapConntrack6     = "conntrack6"
	MapNextHops       = "nh_cache"
	MapFlowCache      = "flow_cache"
	MapFlowCacheGen   = "flow_cache_gen"
	MapConfig         = "config"
	MapStats          = "stats"
	MapBackendTraffic = "backend_traffic"
	MapRetiredTraffic = "retired_traffic"
)

// Service is one VIP:port served by the balancer (TCP).
type Service struct {
	VIP     netip.Addr
	Port    uint16
	ID      uint32 // 0..MaxServices-1, indexes rings and counters
	Island  uint32 // the island of a RouteIsland service
	Forward ForwardMode
	Route   RouteMode
}

// Backend is one (service, node) pair as the data plane sees it.
type Backend struct {
	ID      uint32 // 0..MaxBackends-1
	Addr    netip.Addr
	State   BackendState
	Island  uint32
	Service uint32 // the service whose counters include this backend's
}

// Counters are the traffic counters of a service or a backend, summed
// over CPUs (a service's: over its backends, present and removed).
type Counters struct {
	Packets  uint64
	Bytes    uint64
	NewFlows uint64
}

// Flow is one conntrack entry.
type Flow struct {
	Client  netip.AddrPort
	VIP     netip.AddrPort
	Backend uint32
	Service uint32
	Local   bool          // owned by the local stack (proxy)
	Created time.Duration // CLOCK_MONOTONIC (coarse) at creation
}

// Maps is a typed handle on a balancer collection's maps.
type Maps struct {
	Services     *ebpf.Map
	SvcTable     *ebpf.Map // one inner array: the services table, rebuilt from Services
	ServiceState *ebpf.Map
	VIPAddrs     *ebpf.Map
	VIPFilter    *ebpf.Map // a bit per hashed VIP address, rebuilt from VIPAddrs
	Backends     *ebpf.Map
	Rings        *ebpf.Map
	RingsPrev    *ebpf.Map // per ring slot: the ring before its last change
	RingGraceEnd *ebpf.Map // per ring slot: until when that change is recent (CLOCK_MONOTONIC ns)
	Conntrack4   *ebpf.Map // IPv4 flows, keyed by bpf.BalancerFlow4Key
	Conntrack6   *ebpf.Map // IPv6 flows, keyed by FlowKey
	NextHops     *ebpf.Map
	FlowCache    *ebpf.Map // per CPU: copies of busy flows' conntrack entries
	FlowCacheGen *ebpf.Map // one u32: copies made under another value are stale
	Config       *ebpf.Map
	Stats        *ebpf.Map
	// BackendTraffic counts each forwarded packet once, per backend (per
	// CPU); RetiredTraffic holds what removed backends had counted, per
	// service and in all (RetiredAll), written only here.
	BackendTraffic *ebpf.Map
	RetiredTraffic *ebpf.Map
	Names          *ebpf.Map // control-plane ids by name (never read by XDP)
	Affinity4      *ebpf.Map // client IPv4 prefix -> island (front door)
	Affinity6      *ebpf.Map // client IPv6 prefix -> island (front door)

	// RingGrace is how long a ring change counts as recent (zero:
	// DefaultRingGrace): meanwhile the data plane remembers SYNs placed on
	// the new ring and sends the ACKs it does not know where the previous
	// ring did, so handshakes begun before the change keep their node.
	RingGrace time.Duration

	mu    sync.Mutex
	genMu sync.Mutex // orders bumpFlowCacheGen's read and write
}

// DefaultRingGrace covers a handshake's round trip and a few of its
// retransmissions.
const DefaultRingGrace = 5 * time.Second

// New takes the maps of a loaded balancer or benchmark collection, brings
// the VIP filter in line with vip_addrs (pinned state from an earlier
// load may have either without the other) and empties the next-hop and
// flow caches (they are only caches, and an earlier program's entries may
// count expiry in another clock: nanoseconds before the next-hop cache
// counted jiffies).
func New(coll *ebpf.Collection) (*Maps, error) {
	m := &Maps{}
	for name, dst := range map[string]**ebpf.Map{
		MapServices:       &m.Services,
		MapSvcTable:       &m.SvcTable,
		MapServiceState:   &m.ServiceState,
		MapVIPAddrs:       &m.VIPAddrs,
		MapVIPFilter:      &m.VIPFilter,
		MapBackends:       &m.Backends,
		MapRings:          &m.Rings,
		MapRingsPrev:      &m.RingsPrev,
		MapRingGrace:      &m.RingGraceEnd,
		MapConntrack4:     &m.Conntrack4,
		MapConntrack6:     &m.Conntrack6,
		MapNextHops:       &m.NextHops,
		MapFlowCache:      &m.FlowCache,
		MapFlowCacheGen:   &m.FlowCacheGen,
		MapConfig:         &m.Config,
		MapStats:          &m.Stats,
		MapBackendTraffic: &m.BackendTraffic,
		MapRetiredTraffic: &m.RetiredTraffic,
		MapNames:          &m.Names,
		MapAffinity4:      &m.Affinity4,
		MapAffinity6:      &m.Affinity6,
	} {
		mp, ok := coll.Maps[name]
		if !ok {
			return nil, fmt.Errorf("maps: collection has no map %q", name)
		}
		*dst = mp
	}
	if err := m.syncVIPFilter(); err != nil {
		return nil, err
	}
	if err := m.syncSvcTable(); err != nil {
		return nil, err
	}
	// The next packet to each node asks the FIB again.
	if err := clearPerCPU[bpf.BalancerNhEntry](m.NextHops); err != nil {
		return nil, fmt.Errorf("maps: clear next-hop cache: %w", err)
	}
	if err := m.clearFlowCache(); err != nil {
		return nil, err
	}
	return m, nil
}

// clearFlowCache empties every CPU's flow cache: the next packet of each
// flow asks conntrack again.
func (m *Maps) clearFlowCache() error {
	if err := clearPerCPU[bpf.BalancerFcEntry](m.FlowCache); err != nil {
		return fmt.Errorf("maps: clear flow cache: %w", err)
	}
	return nil
}

// clearPerCPU zeroes every CPU's copy of every entry of a per-CPU array
// whose values are V, in one batch update.
func clearPerCPU[V any](mp *ebpf.Map) error {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	keys := indexes(int(mp.MaxEntries()))
	_, err = mp.BatchUpdate(keys, make([]V, len(keys)*cpus), nil)
	return err
}

// indexes returns the keys 0..n-1 of an array map, for a batch update.
func indexes(n int) []uint32 {
	keys := make([]uint32, n)
	for i := range keys {
		keys[i] = uint32(i)
	}
	return keys
}

func svcKey(vip netip.Addr, port uint16) bpf.BalancerSvcKey {
	var k bpf.BalancerSvcKey
	putAddr(&k.Addr, vip)
	k.Port = htons(port)
	k.Proto = ipprotoTCP
	k.Family = family(vip)
	return k
}

func vipKey(vip netip.Addr) bpf.BalancerAddrKey {
	var k bpf.BalancerAddrKey
	putAddr(&k.Addr, vip)
	k.Family = family(vip)
	return k
}

func checkAddr(what string, a netip.Addr) error {
	if !a.IsValid() || a.IsUnspecified() {
		return fmt.Errorf("maps: %s address %v is not usable", what, a)
	}
	if a.Is4In6() {
		return fmt.Errorf("maps: %s address %v is IPv4-mapped; use the IPv4 form", what, a)
	}
	return nil
}

// PutService adds or replaces a service.
func (m *Maps) PutService(s Service) error {
	if err := checkAddr("VIP", s.VIP); err != nil {
		return err
	}
	if s.ID >= MaxServices {
		return fmt.Errorf("maps: service id %d out of range (max %d)", s.ID, MaxServices-1)
	}
	if s.Island >= MaxIslands {
		return fmt.Errorf("maps: island id %d out of range (max %d)", s.Island, MaxIslands-1)
	}
	if s.Forward != ForwardL2DSR && s.Forward != ForwardIPIP {
		return fmt.Errorf("maps: service %v:%d: unknown forwarding mode %d", s.VIP, s.Port, s.Forward)
	}
	if s.Route != RouteIsland && s.Route != RouteLogin {
		return fmt.Errorf("maps: service %v:%d: unknown routing mode %d", s.VIP, s.Port, s.Route)
	}
	m.mu.Lock()
	defer m.mu.Unlock()

	key := svcKey(s.VIP, s.Port)
	val := bpf.BalancerService{Id: s.ID, Island: s.Island, Fwd: uint8(s.Forward), Route: uint8(s.Route)}
	var old bpf.BalancerService
	existed := m.Services.Lookup(&key, &old) == nil
	if existed && old == val {
		return nil
	}
	if existed && old.Id != s.ID {
		// The VIP:port moves to another id: the old id's flows must not
		// match any more.
		if err := m.bumpState(old.Id, nil); err != nil {
			return err
		}
	}
	if !existed {
		if err := m.adjustVIP(s.VIP, +1); err != nil {
			return err
		}
	}
	var st bpf.BalancerSvcState
	if err := m.ServiceState.Lookup(s.ID, &st); err != nil {
		return fmt.Errorf("maps: service %d state: %w", s.ID, err)
	}
	if st.Fwd == 0 {
		// The id held no service: what an earlier holder's backends
		// counted is not this service's.
		if err := m.RetiredTraffic.Put(s.ID, &bpf.BalancerCounters{}); err != nil {
			return fmt.Errorf("maps: service %d retired counters: %w", s.ID, err)
		}
	}
	// New generation first: flows of the old one take the full path,
	// which then finds the new value.
	if err := m.bumpState(s.ID, &val); err != nil {
		return err
	}
	if err := m.Services.Put(&key, &val); err != nil {
		if !existed {
			_ = m.adjustVIP(s.VIP, -1)
		}
		return fmt.Errorf("maps: put service %v:%d: %w", s.VIP, s.Port, err)
	}
	return m.syncSvcTable()
}

// bumpState gives service id a new generation, with the forwarding and
// routing modes of val, or as "no service" when val is nil, and makes the
// flow cache's copies stale.
func (m *Maps) bumpState(id uint32, val *bpf.BalancerService) error {
	var st bpf.BalancerSvcState
	if err := m.ServiceState.Lookup(id, &st); err != nil {
		return fmt.Errorf("maps: service %d state: %w", id, err)
	}
	next := bpf.BalancerSvcState{Gen: st.Gen + 1}
	if next.Gen == 0 {
		next.Gen = 1
	}
	if val != nil {
		next.Fwd, next.Route = val.Fwd, val.Route
	}
	if err := m.ServiceState.Put(id, &next); err != nil {
		return fmt.Errorf("maps: service %d state: %w", id, err)
	}
	return m.bumpFlowCacheGen()
}

// bumpFlowCacheGen makes every CPU's flow cache copies stale at once. It
// follows each write that can change where an established flow goes (a
// service's state, a backend, a conntrack flush): a copy is used without
// the checks a conntrack entry gets (service generation, node state,
// next-hop address), and the data plane reads the generation before what
// it copies, so a copy made while a write was going on carries the older
// generation. The next packet of each flow then asks conntrack, whose
// checks see the write, and copies the result.
func (m *Maps) bumpFlowCacheGen() error {
	m.genMu.Lock()
	defer m.genMu.Unlock()
	gen, err := m.FlowCacheGeneration()
	if err != nil {
		return err
	}
	if err := m.FlowCacheGen.Put(uint32(0), gen+1); err != nil {
		return fmt.Errorf("maps: flow cache generation: %w", err)
	}
	return nil
}

// FlowCacheGeneration reads the flow cache's generation.
func (m *Maps) FlowCacheGeneration() (uint32, error) {
	var gen uint32
	if err := m.FlowCacheGen.Lookup(uint32(0), &gen); err != nil {
		return 0, fmt.Errorf("maps: flow cache generation: %w", err)
	}
	return gen, nil
}

// DeleteService removes a service; removing a missing one is not an error.
func (m *Maps) DeleteService(vip netip.Addr, port uint16) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	key := svcKey(vip, port)
	var old bpf.BalancerService
	if err := m.Services.Lookup(&key, &old); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return fmt.Errorf("maps: delete service %v:%d: %w", vip, port, err)
	}
	if err := m.Services.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("maps: delete service %v:%d: %w", vip, port, err)
	}
	if err := m.syncSvcTable(); err != nil {
		return err
	}
	if err := m.bumpState(old.Id, nil); err != nil {
		return err
	}
	return m.adjustVIP(vip, -1)
}

// adjustVIP keeps vip_addrs counting the services on each VIP address,
// and the VIP filter in line when an address comes or goes.
func (m *Maps) adjustVIP(vip netip.Addr, delta int) error {
	key := vipKey(vip)
	var old uint32
	if err := m.VIPAddrs.Lookup(&key, &old); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("maps: vip address %v: %w", vip, err)
	}
	n := uint32(int(old) + delta)
	if int(n) <= 0 {
		if err := m.VIPAddrs.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("maps: delete vip address %v: %w", vip, err)
		}
		return m.syncVIPFilter()
	}
	if err := m.VIPAddrs.Put(&key, &n); err != nil {
		return fmt.Errorf("maps: put vip address %v: %w", vip, err)
	}
	if old == 0 {
		return m.syncVIPFilter()
	}
	return nil
}

// ListServices lists the services in the map.
func (m *Maps) ListServices() ([]Service, error) {
	var (
		out []Service
		k   bpf.BalancerSvcKey
		v   bpf.BalancerService
	)
	it := m.Services.Iterate()
	for it.Next(&k, &v) {
		out = append(out, Service{
			VIP: getAddr(k.Addr, k.Family), Port: ntohs(k.Port), ID: v.Id, Island: v.Island,
			Forward: ForwardMode(v.Fwd), Route: RouteMode(v.Route),
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("maps: list services: %w", err)
	}
	return out, nil
}

// PutBackend writes a backend slot.
func (m *Maps) PutBackend(b Backend) error {
	if err := checkAddr("backend", b.Addr); err != nil {
		return err
	}
	if b.ID >= MaxBackends {
		return fmt.Errorf("maps: backend id %d out of range (max %d)", b.ID, MaxBackends-1)
	}
	if b.State > StateDown {
		return fmt.Errorf("maps: backend %d: unknown state %d", b.ID, b.State)
	}
	if b.Service >= MaxServices {
		return fmt.Errorf("maps: backend %d: service id %d out of range (max %d)", b.ID, b.Service, MaxServices-1)
	}
	var v bpf.BalancerBackend
	putAddr(&v.Addr, b.Addr)
	v.Family = family(b.Addr)
	v.State = uint8(b.State)
	v.Service = uint16(b.Service)
	v.Island = b.Island
	m.mu.Lock()
	defer m.mu.Unlock()
	var old bpf.BalancerBackend
	if err := m.Backends.Lookup(b.ID, &old); err != nil {
		return fmt.Errorf("maps: read backend %d: %w", b.ID, err)
	}
	if old == v {
		return nil
	}
	switch {
	case old.State == uint8(StateUnused):
		// A slot taken into use counts from zero (an earlier version
		// left a removed backend's counts in place).
		if err := m.zeroTraffic(b.ID); err != nil {
			return err
		}
	case old.Service != v.Service:
		// Another pair now: what it counted stays its service's.
		if err := m.retire(b.ID, uint32(old.Service)); err != nil {
			return err
		}
	}
	if err := m.Backends.Put(b.ID, &v); err != nil {
		return fmt.Errorf("maps: put backend %d (%v): %w", b.ID, b.Addr, err)
	}
	return m.bumpFlowCacheGen()
}

// Backend reads a backend slot.
func (m *Maps) Backend(id uint32) (Backend, error) {
	var v bpf.BalancerBackend
	if err := m.Backends.Lookup(id, &v); err != nil {
		return Backend{}, fmt.Errorf("maps: backend %d: %w", id, err)
	}
	b := Backend{ID: id, State: BackendState(v.State), Island: v.Island, Service: uint32(v.Service)}
	if v.State != uint8(StateUnused) {
		b.Addr = getAddr(v.Addr, v.Family)
	}
	return b, nil
}

// SetBackendState changes the state of an existing backend.
func (m *Maps) SetBackendState(id uint32, s BackendState) error {
	b, err := m.Backend(id)
	if err != nil {
		return err
	}
	if b.State == StateUnused {
		return fmt.Errorf("maps: backend %d is not in use", id)
	}
	b.State = s
	return m.PutBackend(b)
}

// DeleteBackend frees a backend slot. Flows still pinned to it are
// re-placed on their next packet. Its counts move to its service's
// retired ones, so the service's totals do not go down.
func (m *Maps) DeleteBackend(id uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var old, v bpf.BalancerBackend
	if err := m.Backends.Lookup(id, &old); err != nil {
		return fmt.Errorf("maps: delete backend %d: %w", id, err)
	}
	if err := m.Backends.Put(id, &v); err != nil {
		return fmt.Errorf("maps: delete backend %d: %w", id, err)
	}
	if err := m.bumpFlowCacheGen(); err != nil {
		return err
	}
	if old.State == uint8(StateUnused) {
		return nil
	}
	return m.retire(id, uint32(old.Service))
}

// RingSlot is the index of (service, island) in the outer rings map.
func RingSlot(serviceID, island uint32) uint32 {
	return serviceID*MaxIslands + island
}

// SetRing installs a Maglev table for (service, island). The table goes
// into a fresh inner map that is switched in with one update of the outer
// map, so the data plane sees the old ring or the new one, never a mix.
// An empty table removes the ring: new flows of that pair are dropped.
func (m *Maps) SetRing(serviceID, island uint32, table []uint32) error {
	if serviceID >= MaxServices || island >= MaxIslands {
		return fmt.Errorf("maps: ring (%d, %d) out of range", serviceID, island)
	}
	slot := RingSlot(serviceID, island)
	if len(table) == 0 {
		return m.ClearRing(serviceID, island)
	}
	for i, id := range table {
		if id >= MaxBackends {
			return fmt.Errorf("maps: ring (%d, %d) entry %d: backend id %d out of range", serviceID, island, i, id)
		}
	}
	if err := m.keepPreviousRing(slot); err != nil {
		return fmt.Errorf("maps: ring (%d, %d): %w", serviceID, island, err)
	}
	inner, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "ring",
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  4,
		MaxEntries: uint32(len(table)) + 1,
		Flags:      unix.BPF_F_INNER_MAP,
	})
	if err != nil {
		return fmt.Errorf("maps: create ring (%d, %d) of %d: %w", serviceID, island, len(table), err)
	}
	defer inner.Close()

	keys := indexes(len(table) + 1)
	vals := make([]uint32, len(table)+1)
	vals[0] = uint32(len(table))
	copy(vals[1:], table)
	if _, err := inner.BatchUpdate(keys, vals, nil); err != nil {
		return fmt.Errorf("maps: fill ring (%d, %d): %w", serviceID, island, err)
	}
	if err := m.Rings.Put(slot, inner); err != nil {
		return fmt.Errorf("maps: switch ring (%d, %d): %w", serviceID, island, err)
	}
	return nil
}

// keepPreviousRing makes the slot's current ring, if any, its previous
// ring, recent for RingGrace from now. Both are written before the new
// ring is switched in: until then the "previous" ring is the current one.
func (m *Maps) keepPreviousRing(slot uint32) error {
	cur, err := m.currentRing(slot)
	if err != nil || cur == nil {
		return err
	}
	defer cur.Close()
	if err := m.RingsPrev.Put(slot, cur); err != nil {
		return fmt.Errorf("keep previous ring: %w", err)
	}
	grace := m.RingGrace
	if grace == 0 {
		grace = DefaultRingGrace
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return fmt.Errorf("clock: %w", err)
	}
	if err := m.RingGraceEnd.Put(slot, uint64(ts.Nano()+grace.Nanoseconds())); err != nil {
		return fmt.Errorf("set ring grace: %w", err)
	}
	return nil
}

// currentRing opens the inner map the slot holds now, or returns nil if
// it holds none (or the ring was replaced between lookup and open).
func (m *Maps) currentRing(slot uint32) (*ebpf.Map, error) {
	var id ebpf.MapID
	if err := m.Rings.Lookup(slot, &id); errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("maps: ring slot %d: %w", slot, err)
	}
	inner, err := ebpf.NewMapFromID(id)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("maps: open ring slot %d: %w", slot, err)
	}
	return inner, nil
}

// ClearRing removes the ring of (service, island), and its previous one.
func (m *Maps) ClearRing(serviceID, island uint32) error {
	slot := RingSlot(serviceID, island)
	if err := m.Rings.Delete(slot); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("maps: clear ring (%d, %d): %w", serviceID, island, err)
	}
	if err := m.RingGraceEnd.Put(slot, uint64(0)); err != nil {
		return fmt.Errorf("maps: clear ring (%d, %d) grace: %w", serviceID, island, err)
	}
	if err := m.RingsPrev.Delete(slot); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("maps: clear ring (%d, %d) previous: %w", serviceID, island, err)
	}
	return nil
}

// Ring reads back the table of (service, island); nil if there is none.
func (m *Maps) Ring(serviceID, island uint32) ([]uint32, error) {
	inner, err := m.currentRing(RingSlot(serviceID, island))
	if err != nil || inner == nil {
		return nil, err
	}
	defer inner.Close()
	var size uint32
	if err := inner.Lookup(uint32(0), &size); err != nil {
		return nil, fmt.Errorf("maps: ring (%d, %d) size: %w", serviceID, island, err)
	}
	// One batch call per chunk instead of a syscall per slot: a restarted
	// daemon reads every ring.
	out := make([]uint32, 0, size)
	keys := make([]uint32, 4096)
	vals := make([]uint32, 4096)
	var cursor ebpf.MapBatchCursor
	all := make([]uint32, size+1)
	for {
		n, err := inner.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			if keys[i] <= size {
				all[keys[i]] = vals[i]
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("maps: ring (%d, %d): %w", serviceID, island, err)
		}
	}
	out = append(out, all[1:]...)
	return out, nil
}

// SetSources sets the LB's own addresses, the outer source of ipip
// packets. An invalid address disables ipip toward that family.
func (m *Maps) SetSources(v4, v6 netip.Addr) error {
	var c bpf.BalancerLbConfig
	if v4.IsValid() {
		if !v4.Is4() {
			return fmt.Errorf("maps: IPv4 source %v is not IPv4", v4)
		}
		c.Src4 = v4.As4()
	}
	if v6.IsValid() {
		if !v6.Is6() || v6.Is4In6() {
			return fmt.Errorf("maps: IPv6 source %v is not IPv6", v6)
		}
		c.Src6 = v6.As16()
	}
	if err := m.Config.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("maps: put config: %w", err)
	}
	return nil
}

// flow4Key is the IPv4 conntrack key of k.
func flow4Key(k *FlowKey) bpf.BalancerFlow4Key {
	return bpf.BalancerFlow4Key{
		Src:   binary.LittleEndian.Uint32(k.Src[:4]),
		Dst:   binary.LittleEndian.Uint32(k.Dst[:4]),
		Sport: k.Sport,
		Dport: k.Dport,
		Proto: k.Proto,
	}
}

// flowKeyOf4 turns an IPv4 conntrack key back into a FlowKey.
func flowKeyOf4(k4 *bpf.BalancerFlow4Key) FlowKey {
	var k FlowKey
	binary.LittleEndian.PutUint32(k.Src[:4], k4.Src)
	binary.LittleEndian.PutUint32(k.Dst[:4], k4.Dst)
	k.Sport, k.Dport, k.Proto, k.Family = k4.Sport, k4.Dport, k4.Proto, familyV4
	return k
}

// LookupFlow returns the conntrack entry of a flow.
func (m *Maps) LookupFlow(k FlowKey) (Flow, bool, error) {
	var (
		v   bpf.BalancerCtEntry
		err error
	)
	if k.Family == familyV4 {
		k4 := flow4Key(&k)
		err = m.Conntrack4.Lookup(&k4, &v)
	} else {
		err = m.Conntrack6.Lookup(&k, &v)
	}
	if err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Flow{}, false, nil
		}
		return Flow{}, false, fmt.Errorf("maps: conntrack lookup: %w", err)
	}
	return flowOf(&k, &v), true, nil
}

func flowOf(k *FlowKey, v *bpf.BalancerCtEntry) Flow {
	return Flow{
		Client:  netip.AddrPortFrom(getAddr(k.Src, k.Family), ntohs(k.Sport)),
		VIP:     netip.AddrPortFrom(getAddr(k.Dst, k.Family), ntohs(k.Dport)),
		Backend: v.Backend,
		Service: uint32(v.Service),
		Local:   v.Flags&CTLocal != 0,
		Created: time.Duration(v.CreatedNs),
	}
}

// Flows returns up to max conntrack entries of both families (all if
// max <= 0).
func (m *Maps) Flows(max int) ([]Flow, error) {
	var (
		out []Flow
		v   bpf.BalancerCtEntry
		k4  bpf.BalancerFlow4Key
		k   FlowKey
	)
	full := func() bool { return max > 0 && len(out) >= max }
	it := m.Conntrack4.Iterate()
	for !full() && it.Next(&k4, &v) {
		fk := flowKeyOf4(&k4)
		out = append(out, flowOf(&fk, &v))
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("maps: iterate conntrack4: %w", err)
	}
	it = m.Conntrack6.Iterate()
	for !full() && it.Next(&k, &v) {
		out = append(out, flowOf(&k, &v))
	}
	if err := it.Err(); err != nil {
		return out, fmt.Errorf("maps: iterate conntrack6: %w", err)
	}
	return out, nil
}

// FlushConntrack deletes every conntrack entry and returns how many. The
// flow cache generation moves after conntrack, so that no copy outlives
// its entry (one write, where emptying every CPU's cache would be
// thousands).
func (m *Maps) FlushConntrack() (int, error) {
	n4, err := flush[bpf.BalancerFlow4Key](m.Conntrack4)
	if err != nil {
		return n4, fmt.Errorf("maps: flush conntrack4: %w", err)
	}
	n6, err := flush[FlowKey](m.Conntrack6)
	if err != nil {
		return n4 + n6, fmt.Errorf("maps: flush conntrack6: %w", err)
	}
	return n4 + n6, m.bumpFlowCacheGen()
}

// flush deletes every key of a hash map.
func flush[K any](mp *ebpf.Map) (int, error) {
	var (
		keys []K
		k    K
		v    bpf.BalancerCtEntry
	)
	it := mp.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return 0, err
	}
	n := 0
	for i := range keys {
		if err := mp.Delete(&keys[i]); err == nil {
			n++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, err
		}
	}
	return n, nil
}

// MapNames is the pinned map of control-plane ids by name.
const MapNames = "names"

// NameLen is the longest name the names map holds.
const NameLen = 127

func nameKey(name string) (bpf.BalancerNameKey, error) {
	var k bpf.BalancerNameKey
	if len(name) == 0 || len(name) > NameLen {
		return k, fmt.Errorf("maps: name %q must be 1..%d bytes", name, NameLen)
	}
	copy(k.Name[:], name)
	return k, nil
}

// PutName records the id of a control-plane object.
func (m *Maps) PutName(name string, id uint32) error {
	k, err := nameKey(name)
	if err != nil {
		return err
	}
	if err := m.Names.Put(&k, id); err != nil {
		return fmt.Errorf("maps: put name %q: %w", name, err)
	}
	return nil
}

// DeleteName forgets a name; a missing name is not an error.
func (m *Maps) DeleteName(name string) error {
	k, err := nameKey(name)
	if err != nil {
		return err
	}
	if err := m.Names.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("maps: delete name %q: %w", name, err)
	}
	return nil
}

// ListNames returns every recorded name and its id.
func (m *Maps) ListNames() (map[string]uint32, error) {
	out := map[string]uint32{}
	var (
		k  bpf.BalancerNameKey
		id uint32
	)
	it := m.Names.Iterate()
	for it.Next(&k, &id) {
		n := 0
		for n < len(k.Name) && k.Name[n] != 0 {
			n++
		}
		out[string(k.Name[:n])] = id
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("maps: list names: %w", err)
	}
	return out, nil
}

// CountFlows counts the conntrack entries of each family, walking the
// keys in batches.
func (m *Maps) CountFlows() (v4, v6 int, err error) {
	if v4, err = countKeys[bpf.BalancerFlow4Key](m.Conntrack4); err != nil {
		return 0, 0, fmt.Errorf("maps: count conntrack4: %w", err)
	}
	if v6, err = countKeys[FlowKey](m.Conntrack6); err != nil {
		return v4, 0, fmt.Errorf("maps: count conntrack6: %w", err)
	}
	return v4, v6, nil
}

func countKeys[K any](mp *ebpf.Map) (int, error) {
	const chunk = 4096
	var (
		cursor ebpf.MapBatchCursor
		keys   = make([]K, chunk)
		vals   = make([]bpf.BalancerCtEntry, chunk)
		total  int
	)
	for {
		n, err := mp.BatchLookup(&cursor, keys, vals, nil)
		total += n
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// Sources reads the LB's own addresses (invalid when unset).
func (m *Maps) Sources() (v4, v6 netip.Addr, err error) {
	var c bpf.BalancerLbConfig
	if err := m.Config.Lookup(uint32(0), &c); err != nil {
		return v4, v6, fmt.Errorf("maps: read config: %w", err)
	}
	if c.Src4 != [4]byte{} {
		v4 = netip.AddrFrom4(c.Src4)
	}
	if c.Src6 != [16]byte{} {
		v6 = netip.AddrFrom16(c.Src6)
	}
	return v4, v6, nil
}
