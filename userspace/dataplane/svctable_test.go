package dataplane_test

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/atoll-lb/atoll/bpf"
	"github.com/atoll-lb/atoll/bpf/packet"
	"github.com/atoll-lb/atoll/maps"
)

// TestServiceTable: SYNs find their service in the direct-mapped services
// table at the slot Go computes (maps.SvcSlot); two services that share a
// slot are both found, through the services hash, and a slot left alone
// again holds its one service.
func TestServiceTable(t *testing.T) {
	e := newProgEnv(t)
	key := func(port uint16) bpf.BalancerSvcKey {
		k := bpf.BalancerSvcKey{Port: port<<8 | port>>8, Proto: 6, Family: 2} // network order; IPv4 in the first four bytes
		copy(k.Addr[:], vip4.AsSlice())
		return k
	}
	var other uint16
	for p := uint16(1); p != 0; p++ {
		if p != 143 && maps.SvcSlot(key(p)) == maps.SvcSlot(key(143)) {
			other = p
			break
		}
	}
	if other == 0 {
		t.Fatal("no port shares vip4:143's slot")
	}
	second := maps.Service{VIP: vip4, Port: other, ID: 5, Forward: maps.ForwardL2DSR, Route: maps.RouteIsland}
	svcs := []maps.Service{svcL2v4, second}
	b := setup(t, e, svcs...)
	table := putNodes(t, b.Maps, false, svcs, 0, 1, 2)

	slot := func() (k bpf.BalancerSvcKey, v bpf.BalancerService) {
		t.Helper()
		var inner *ebpf.Map
		mustDo(t, b.Maps.SvcTable.Lookup(uint32(0), &inner))
		defer inner.Close()
		var raw struct {
			K bpf.BalancerSvcKey
			V bpf.BalancerService
		}
		mustDo(t, inner.Lookup(maps.SvcSlot(key(143)), &raw))
		return raw.K, raw.V
	}
	synTo := func(port uint16) {
		t.Helper()
		for cport := uint16(42000); cport < 42010; cport++ {
			want := expectNode(t, table, b.HashSeed, client4, cport, vip4, port)
			s := syn(client4, cport, vip4, port)
			v, out := e.run(t, b.Program, packet.TCP(s))
			if v != xdpTX || string(out[0:6]) != string(want.mac) {
				t.Fatalf("SYN to %v:%d: %s to %x, want TX to %s", vip4, port, verdict(v), out[0:6], want.name)
			}
		}
	}
	if k, _ := slot(); k.Family != 0xff {
		t.Fatalf("slot of two services holds %+v, want it marked shared", k)
	}
	synTo(143)
	synTo(other)

	mustDo(t, b.Maps.DeleteService(vip4, other))
	if k, v := slot(); k != key(143) || v.Id != svcL2v4.ID {
		t.Fatalf("slot left to vip4:143 holds %+v %+v", k, v)
	}
	synTo(143)
	before := stat(t, b.Maps, maps.StatPassNonVIP)
	s := syn(client4, 42000, vip4, other)
	if v, _ := e.run(t, b.Program, packet.TCP(s)); v != xdpPass || stat(t, b.Maps, maps.StatPassNonVIP) != before+1 {
		t.Fatalf("SYN to the removed service: %s, want PASS counted as pass_non_vip", verdict(v))
	}
}
