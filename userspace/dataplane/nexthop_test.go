package dataplane_test

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/atoll-lb/atoll/bpf"
	"github.com/atoll-lb/atoll/bpf/packet"
	"github.com/atoll-lb/atoll/maps"
)

// TestNextHopCacheExpires: a next-hop cache entry is used until it
// expires (counted in jiffies), and then the FIB is asked again. Every
// CPU's entry for node 0 is overwritten with a wrong MAC that expires 250
// jiffies after the real entry would (0.35 s after the first packet at
// HZ=1000, 1.4 s at 250, 3.5 s at 100): packets still go to that MAC
// 100 ms later — an expiry in other units, or a coarse clock that moved
// by a tick, would have ended it — and once it expires to the node's
// again.
func TestNextHopCacheExpires(t *testing.T) {
	e := newProgEnv(t)
	b := setup(t, e, svcL2v4)
	putNodes(t, b.Maps, false, []maps.Service{svcL2v4}, 0)
	node := testNodes[0]
	spec := syn(client4, 41000, vip4, 143)
	dst := func() net.HardwareAddr {
		t.Helper()
		v, out := e.run(t, b.Program, packet.TCP(spec))
		if v != xdpTX {
			t.Fatalf("verdict %s, want TX", verdict(v))
		}
		return net.HardwareAddr(bytes.Clone(out[0:6]))
	}
	if got := dst(); got.String() != node.mac.String() {
		t.Fatalf("first packet to %v, want node 0 (%v)", got, node.mac)
	}
	spec.Flags = packet.FlagACK

	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	entries := make([]bpf.BalancerNhEntry, cpus)
	if err := b.Maps.NextHops.Lookup(node.id, entries); err != nil {
		t.Fatal(err)
	}
	var warm *bpf.BalancerNhEntry
	for i := range entries {
		if entries[i].Expires != 0 {
			warm = &entries[i]
		}
	}
	if warm == nil {
		t.Fatal("no CPU has a next-hop cache entry for node 0 after a forwarded packet")
	}
	wrong := net.HardwareAddr{2, 0, 0, 0, 0xee, 0xee}
	bogus := *warm
	bogus.Expires += 250
	copy(bogus.Dmac[:], wrong)
	for i := range entries {
		entries[i] = bogus
	}
	if err := b.Maps.NextHops.Put(node.id, entries); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // not synchronisation: the entry must outlive this
	if got := dst(); got.String() != wrong.String() {
		t.Fatalf("with a live cache entry the packet went to %v, want the cached %v", got, wrong)
	}
	deadline := time.Now().Add(10 * time.Second)
	for dst().String() != node.mac.String() {
		if time.Now().After(deadline) {
			t.Fatal("the cache entry did not expire within 10 s (350 jiffies after the first packet: at most 3.5 s)")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
