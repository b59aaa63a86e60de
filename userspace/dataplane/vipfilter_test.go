package dataplane_test

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/atoll-lb/atoll/bpf"
	"github.com/atoll-lb/atoll/bpf/packet"
	"github.com/atoll-lb/atoll/maps"
)

// filterBit reads bit VIPFilterBit(a) of the balancer's VIP filter.
func filterBit(t *testing.T, m *maps.Maps, a netip.Addr) bool {
	t.Helper()
	var f bpf.BalancerVipBits
	if err := m.VIPFilter.Lookup(uint32(0), &f); err != nil {
		t.Fatal(err)
	}
	bit := maps.VIPFilterBit(a)
	return f.Bits[bit/64]&(1<<(bit%64)) != 0
}

// addrIn6 returns the first address of 2001:db8:f::/48 (after vip6)
// whose VIP filter bit is (collide) or is not that of vip6.
func addrIn6(t *testing.T, collide bool) netip.Addr {
	t.Helper()
	want := maps.VIPFilterBit(vip6)
	for a, i := vip6.Next(), 0; i < 1<<20; a, i = a.Next(), i+1 {
		bit := maps.VIPFilterBit(a)
		if (bit == want) == collide && (collide || bit != maps.VIPFilterBit(vip4)) {
			return a
		}
	}
	t.Fatal("no such address in 2^20 tries")
	return netip.Addr{}
}

// TestVIPFilter: after a conntrack miss, a packet whose destination's
// filter bit is clear passes without a services lookup (a service planted
// in the services map behind the maps API's back is not found), one
// whose bit is set by collision is looked up (the planted service takes
// it: the bit Go computes is the one XDP tests), and the filter follows
// services as they come and go.
func TestVIPFilter(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcL2v4, svcL2v6, svcIPIPv4}
	b := setup(t, e, svcs...)
	putNodes(t, b.Maps, false, svcs, 0)

	plant := func(dst netip.Addr) []byte {
		k := bpf.BalancerSvcKey{Addr: dst.As16(), Port: 143 << 8, Proto: 6, Family: 10}
		v := bpf.BalancerService{Id: svcL2v6.ID, Fwd: uint8(maps.ForwardL2DSR), Route: uint8(maps.RouteIsland)}
		if err := b.Maps.Services.Put(&k, &v); err != nil {
			t.Fatal(err)
		}
		if err := b.Maps.SyncServiceTable(); err != nil {
			t.Fatal(err)
		}
		return packet.TCP(syn(client6, 4000, dst, 143))
	}

	clear := addrIn6(t, false)
	in := plant(clear)
	before := stat(t, b.Maps, maps.StatPassNonVIP)
	if v, out := e.run(t, b.Program, in); v != xdpPass || !bytes.Equal(out, in) {
		t.Fatalf("%v (filter bit clear, service planted): verdict %s, frame changed %v; want PASS untouched", clear, verdict(v), !bytes.Equal(out, in))
	}
	if got := stat(t, b.Maps, maps.StatPassNonVIP); got != before+1 {
		t.Fatalf("pass_non_vip %d, want %d", got, before+1)
	}

	collide := addrIn6(t, true)
	if v, out := e.run(t, b.Program, plant(collide)); v != xdpTX || !bytes.Equal(out[0:6], testNodes[0].mac) {
		t.Fatalf("%v (filter bit shared with %v, service planted): verdict %s to %x, want TX to node 0", collide, vip6, verdict(v), out[0:6])
	}

	// Two services on vip4: its bit stays until the last one goes.
	if !filterBit(t, b.Maps, vip4) || !filterBit(t, b.Maps, vip6) {
		t.Fatal("VIP filter bits of vip4/vip6 not set after PutService")
	}
	if err := b.Maps.DeleteService(vip4, svcL2v4.Port); err != nil {
		t.Fatal(err)
	}
	if !filterBit(t, b.Maps, vip4) {
		t.Fatal("vip4's bit cleared while a service remains on it")
	}
	if err := b.Maps.DeleteService(vip4, svcIPIPv4.Port); err != nil {
		t.Fatal(err)
	}
	if filterBit(t, b.Maps, vip4) {
		t.Fatal("vip4's bit still set after its last service went")
	}
	if err := b.Maps.PutService(svcL2v4); err != nil {
		t.Fatal(err)
	}
	if !filterBit(t, b.Maps, vip4) {
		t.Fatal("vip4's bit not set again by PutService")
	}
}
