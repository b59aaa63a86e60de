package dataplane_test

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/atoll-lb/atoll/bpf"
	"github.com/atoll-lb/atoll/bpf/packet"
	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/dataplane"
)

// flowCacheCPU is the CPU the flow cache tests run the program on: the
// cache is per CPU, as a NIC queue's flows stay on the CPU serving it.
const flowCacheCPU = 0

// cacheProbe sends packets of test flows on flowCacheCPU and reads that
// CPU's flow cache.
type cacheProbe struct {
	t *testing.T
	e *progEnv
	b *dataplane.Balancer
}

// send runs one packet of the flow client:port -> vip:143 and returns the
// verdict and, for a forwarded packet, the node it went to.
func (c cacheProbe) send(client netip.Addr, port uint16, vip netip.Addr, flags uint8) (uint32, testNode) {
	c.t.Helper()
	s := syn(client, port, vip, 143)
	s.Flags = flags
	v, out, err := c.e.RunOn(flowCacheCPU, c.b.Program, packet.TCP(s))
	if err != nil {
		c.t.Fatal(err)
	}
	n, _ := nodeByMAC(out[0:6])
	return v, n
}

// slot returns flowCacheCPU's entry of the slot the flow maps to.
func (c cacheProbe) slot(k maps.FlowKey) bpf.BalancerFcEntry {
	c.t.Helper()
	var all []bpf.BalancerFcEntry
	if err := c.b.Maps.FlowCache.Lookup(maps.FlowCacheSlot(k, c.b.HashSeed), &all); err != nil {
		c.t.Fatal(err)
	}
	return all[flowCacheCPU]
}

func flowKey(client netip.Addr, port uint16, vip netip.Addr) maps.FlowKey {
	return maps.NewFlowKey(netip.AddrPortFrom(client, port), netip.AddrPortFrom(vip, 143))
}

// TestFlowCache: a flow's second packet copies its conntrack entry into
// the CPU's flow cache (in the slot Go predicts); later packets are
// forwarded from that copy, which follows conntrack again within
// FLOW_CACHE_TTL_JIFFIES, goes stale with a conntrack flush, gives way at
// once to its node going DOWN or readdressed or its service going away,
// and shares its slot with a colliding flow without either losing its
// node.
func TestFlowCache(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcL2v4, svcL2v6}
	b := setup(t, e, svcs...)
	table := putNodes(t, b.Maps, false, svcs, 0, 1, 2)
	c := cacheProbe{t: t, e: e, b: b}
	// SYNs leave no state, whatever ring changes the subtests make (see
	// TestRingChangeHandshake).
	b.Maps.RingGrace = time.Nanosecond

	// open sends a flow's SYN and two ACKs, checks all reach the
	// predicted node, that the first ACK (which conntrack learns) left no
	// copy and the second (a conntrack hit) did, and returns the node.
	open := func(client netip.Addr, port uint16, vip netip.Addr) testNode {
		t.Helper()
		want := expectNode(t, table, b.HashSeed, client, port, vip, 143)
		k := flowKey(client, port, vip)
		for i, flags := range []uint8{packet.FlagSYN, packet.FlagACK, packet.FlagACK} {
			if v, n := c.send(client, port, vip, flags); v != xdpTX || n.id != want.id {
				t.Fatalf("packet %d of %v:%d: %s to %s, want %s", i, client, port, verdict(v), n.name, want.name)
			}
			if got := c.slot(k); i < 2 && got.Key == k {
				t.Fatalf("flow %v:%d cached by its packet %d", client, port, i)
			}
		}
		got := c.slot(k)
		if got.Key != k || got.Backend != want.id || got.Flags&0xff != 0 {
			t.Fatalf("flow %v:%d: slot holds %+v, want its key and backend %d", client, port, got, want.id)
		}
		return want
	}

	t.Run("served from the copy until it expires", func(t *testing.T) {
		for i, client := range []netip.Addr{client4, client6} {
			vip := []netip.Addr{vip4, vip6}[i]
			// Move a cached flow to another node behind the data plane's
			// back: its next packet still goes to the cached node. (If this
			// machine was too slow and the copy expired first, the packet
			// goes to the new node: try another flow.)
			var port uint16
			var n, other testNode
			for port = 21000; ; port++ {
				n = open(client, port, vip)
				other = nodeByID(n.id%3 + 1)
				setConntrackBackend(t, b.Maps, flowKey(client, port, vip), other.id)
				v, got := c.send(client, port, vip, packet.FlagACK)
				if v != xdpTX || (got.id != n.id && got.id != other.id) {
					t.Fatalf("%v: %s to %s after the change, want %s (cached) or %s", client, verdict(v), got.name, n.name, other.name)
				}
				if got.id == n.id {
					break
				}
				if port == 21004 {
					t.Fatalf("%v: five flows were not served from their copy", client)
				}
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				v, got := c.send(client, port, vip, packet.FlagACK)
				if v != xdpTX {
					t.Fatalf("%v: %s", client, verdict(v))
				}
				if got.id == other.id {
					break
				}
				if got.id != n.id || time.Now().After(deadline) {
					t.Fatalf("%v: to %s, want %s once the copy expired (within 5 s)", client, got.name, other.name)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	})

	t.Run("stale after a conntrack flush", func(t *testing.T) {
		port := uint16(22000)
		open(client4, port, vip4)
		gen, err := b.Maps.FlowCacheGeneration()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Maps.FlushConntrack(); err != nil {
			t.Fatal(err)
		}
		if got, err := b.Maps.FlowCacheGeneration(); err != nil || got != gen+1 {
			t.Fatalf("flow cache generation %d → %d after the flush (%v), want one more", gen, got, err)
		}
		before := stat(t, b.Maps, maps.StatFwdLearned)
		if v, _ := c.send(client4, port, vip4, packet.FlagACK); v != xdpTX {
			t.Fatalf("ACK after flush: %s", verdict(v))
		}
		if got := stat(t, b.Maps, maps.StatFwdLearned); got != before+1 {
			t.Fatalf("fwd_learned moved by %d after the flush, want 1 (learned anew, not from a copy)", got-before)
		}
	})

	t.Run("node DOWN", func(t *testing.T) {
		port := uint16(23000)
		n := open(client4, port, vip4)
		var up []int
		for i, tn := range testNodes[:3] {
			if tn.id != n.id {
				up = append(up, i)
			}
		}
		table2 := putNodes(t, b.Maps, false, svcs, up...)
		if err := b.Maps.SetBackendState(n.id, maps.StateDown); err != nil {
			t.Fatal(err)
		}
		want := expectNode(t, table2, b.HashSeed, client4, port, vip4, 143)
		resched := stat(t, b.Maps, maps.StatFwdRescheduled)
		if v, got := c.send(client4, port, vip4, packet.FlagACK); v != xdpTX || got.id != want.id {
			t.Fatalf("flow of the DOWN node: %s to %s, want %s", verdict(v), got.name, want.name)
		}
		if got := stat(t, b.Maps, maps.StatFwdRescheduled); got != resched+1 {
			t.Fatalf("fwd_rescheduled moved by %d, want 1", got-resched)
		}
		// The node returns: the flow stays where it was re-placed (the
		// stale copy was dropped, not revived), and from the copy of its
		// new entry.
		if err := b.Maps.SetBackendState(n.id, maps.StateUp); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if v, got := c.send(client4, port, vip4, packet.FlagACK); v != xdpTX || got.id != want.id {
				t.Fatalf("re-placed flow after its old node returned: %s to %s, want %s", verdict(v), got.name, want.name)
			}
		}
		if got := c.slot(flowKey(client4, port, vip4)); got.Backend != want.id {
			t.Fatalf("slot holds backend %d, want %d", got.Backend, want.id)
		}
		if got := stat(t, b.Maps, maps.StatFwdRescheduled); got != resched+1 {
			t.Fatalf("fwd_rescheduled moved by %d, want 1", got-resched)
		}
		table = putNodes(t, b.Maps, false, svcs, 0, 1, 2)
	})

	t.Run("node DOWN and back, flow re-placed on another CPU", func(t *testing.T) {
		ncpu, err := ebpf.PossibleCPU()
		if err != nil {
			t.Fatal(err)
		}
		if ncpu < 2 || runtime.NumCPU() < 2 {
			t.Fatalf("%d CPUs (%d online): the case needs a second CPU's flow cache (CI has two)", ncpu, runtime.NumCPU())
		}
		other := (flowCacheCPU + 1) % ncpu
		port := uint16(27000)
		n := open(client4, port, vip4) // copied on flowCacheCPU
		var up []int
		for i, tn := range testNodes[:3] {
			if tn.id != n.id {
				up = append(up, i)
			}
		}
		putNodes(t, b.Maps, false, svcs, up...)
		if err := b.Maps.SetBackendState(n.id, maps.StateDown); err != nil {
			t.Fatal(err)
		}
		defer func() { table = putNodes(t, b.Maps, false, svcs, 0, 1, 2) }()
		// Re-placed on the other CPU, while flowCacheCPU's copy is fresh.
		s := syn(client4, port, vip4, 143)
		s.Flags = packet.FlagACK
		v, out, err := e.RunOn(other, b.Program, packet.TCP(s))
		moved, _ := nodeByMAC(out[0:6])
		if err != nil || v != xdpTX || moved.id == n.id {
			t.Fatalf("flow of the DOWN node on CPU %d: %s to %s (%v)", other, verdict(v), moved.name, err)
		}
		if err := b.Maps.SetBackendState(n.id, maps.StateUp); err != nil {
			t.Fatal(err)
		}
		// Back on flowCacheCPU: its copy predates the DOWN (an older
		// flow cache generation).
		if v, got := c.send(client4, port, vip4, packet.FlagACK); v != xdpTX || got.id != moved.id {
			t.Fatalf("re-placed flow on CPU %d after its old node returned: %s to %s, want %s (re-placed)", flowCacheCPU, verdict(v), got.name, moved.name)
		}
	})

	t.Run("node readdressed", func(t *testing.T) {
		// A copy's packets skip the next-hop cache's address check: a
		// backend given another address must make them stale.
		port := uint16(28000)
		n := open(client4, port, vip4)
		other := nodeByID(n.id%3 + 1)
		if err := b.Maps.PutBackend(maps.Backend{ID: n.id, Addr: other.v4, State: maps.StateUp}); err != nil {
			t.Fatal(err)
		}
		defer func() { table = putNodes(t, b.Maps, false, svcs, 0, 1, 2) }()
		if v, got := c.send(client4, port, vip4, packet.FlagACK); v != xdpTX || got.name != other.name {
			t.Fatalf("flow of backend %d readdressed to %v: %s to %s, want %s's MAC", n.id, other.v4, verdict(v), got.name, other.name)
		}
	})

	t.Run("colliding flows", func(t *testing.T) {
		// Two flows in one slot, on different nodes.
		first := uint16(24000)
		slot := maps.FlowCacheSlot(flowKey(client4, first, vip4), b.HashSeed)
		home := expectNode(t, table, b.HashSeed, client4, first, vip4, 143)
		second := uint16(0)
		for p := first + 1; p != 0; p++ {
			if maps.FlowCacheSlot(flowKey(client4, p, vip4), b.HashSeed) == slot &&
				expectNode(t, table, b.HashSeed, client4, p, vip4, 143).id != home.id {
				second = p
				break
			}
		}
		if second == 0 {
			t.Fatal("no colliding flow on another node")
		}
		nodes := map[uint16]testNode{first: open(client4, first, vip4), second: open(client4, second, vip4)}
		for range 3 {
			for _, p := range []uint16{first, second} {
				if v, got := c.send(client4, p, vip4, packet.FlagACK); v != xdpTX || got.id != nodes[p].id {
					t.Fatalf("port %d: %s to %s, want %s", p, verdict(v), got.name, nodes[p].name)
				}
				if got := c.slot(flowKey(client4, p, vip4)); got.Key != flowKey(client4, p, vip4) {
					t.Fatalf("port %d: slot holds %+v, want the last flow sent", p, got)
				}
			}
		}
	})

	t.Run("a copy serves only its whole key", func(t *testing.T) {
		// A copy planted in a flow's slot for another node serves the
		// flow when its key is the flow's, and never when the key differs
		// in any one 64-bit word the program compares (an IPv4 key's
		// words 1 and 3 are always zero: no IPv4 copy differs there).
		plant := func(k maps.FlowKey, e bpf.BalancerFcEntry) {
			t.Helper()
			var all []bpf.BalancerFcEntry
			slot := maps.FlowCacheSlot(k, b.HashSeed)
			if err := b.Maps.FlowCache.Lookup(slot, &all); err != nil {
				t.Fatal(err)
			}
			all[flowCacheCPU] = e
			if err := b.Maps.FlowCache.Put(slot, all); err != nil {
				t.Fatal(err)
			}
		}
		for i, client := range []netip.Addr{client4, client6} {
			vip := []netip.Addr{vip4, vip6}[i]
			words := [][]int{{0, 2, 4}, {0, 1, 2, 3, 4}}[i]
			port := uint16(26000)
			k := flowKey(client, port, vip)
			n := open(client, port, vip)
			other := nodeByID(n.id%3 + 1)
			for _, w := range append([]int{-1}, words...) {
				e := c.slot(k)
				if e.Key != k {
					t.Fatalf("%v word %d: slot holds %+v, want the flow's copy", client, w, e.Key)
				}
				e.Backend = other.id
				copy(e.Dmac[:], other.mac)
				kb := (*[40]byte)(unsafe.Pointer(&e.Key))
				if w >= 0 {
					kb[w*8] ^= 1 // the word's lowest byte as the program reads it
				}
				plant(k, e)
				want := n
				if w < 0 {
					want = other // the control: the planted copy is used
				}
				if v, got := c.send(client, port, vip, packet.FlagACK); v != xdpTX || got.id != want.id {
					t.Fatalf("%v, copy's key word %d changed: %s to %s, want %s", client, w, verdict(v), got.name, want.name)
				}
				if w < 0 {
					// Back to the flow's own copy for the next word.
					plant(k, bpf.BalancerFcEntry{})
					c.send(client, port, vip, packet.FlagACK)
				}
			}
		}
	})

	t.Run("service removed", func(t *testing.T) {
		port := uint16(25000)
		open(client4, port, vip4)
		if err := b.Maps.DeleteService(vip4, 143); err != nil {
			t.Fatal(err)
		}
		if v, _ := c.send(client4, port, vip4, packet.FlagACK); v != xdpPass {
			t.Fatalf("cached flow of a removed service: %s, want PASS", verdict(v))
		}
	})
}

// setConntrackBackend rewrites the backend of a flow's conntrack entry
// (an IPv4 flow's key as the program writes it: addresses as stored, in
// little-endian words).
func setConntrackBackend(t *testing.T, m *maps.Maps, k maps.FlowKey, backend uint32) {
	t.Helper()
	ct, key := m.Conntrack6, any(&k)
	if k.Family == 2 {
		ct, key = m.Conntrack4, &bpf.BalancerFlow4Key{
			Src: binary.LittleEndian.Uint32(k.Src[:4]), Dst: binary.LittleEndian.Uint32(k.Dst[:4]),
			Sport: k.Sport, Dport: k.Dport, Proto: k.Proto,
		}
	}
	var v bpf.BalancerCtEntry
	if err := ct.Lookup(key, &v); err != nil {
		t.Fatalf("conntrack entry of %+v: %v", k, err)
	}
	v.Backend = backend
	if err := ct.Put(key, &v); err != nil {
		t.Fatal(err)
	}
}
