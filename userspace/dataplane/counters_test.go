package dataplane_test

import (
	"net/netip"
	"testing"

	"github.com/atoll-lb/atoll/bpf/packet"
	"github.com/atoll-lb/atoll/maps"
)

// TestTrafficCounters: the data plane counts a forwarded packet once, on
// its backend (a (service, node) pair); a service's counters are the sum
// of its backends', fwd_established the sum over all backends, and
// neither goes down when a backend is removed, reused, or handed to
// another service, or when a service id is reused.
func TestTrafficCounters(t *testing.T) {
	e := newProgEnv(t)
	b := setup(t, e, svcL2v4, svcL2v6)
	m := b.Maps
	// svcL2v4's pairs are backends 1–3; svcL2v6's the same nodes as 11–13.
	putNodes(t, m, false, []maps.Service{svcL2v4}, 0, 1, 2)
	var ring []maps.MaglevNode
	for _, n := range testNodes {
		mustDo(t, m.PutBackend(maps.Backend{ID: n.id + 10, Addr: n.v4, State: maps.StateUp, Service: svcL2v6.ID}))
		ring = append(ring, maps.MaglevNode{Name: n.name, ID: n.id + 10, Weight: 1})
	}
	table, err := maps.BuildMaglev(ring, 1009)
	mustDo(t, err)
	mustDo(t, m.SetRing(svcL2v6.ID, 0, table))

	read := func() maps.Traffic {
		t.Helper()
		tr, err := m.ReadTraffic()
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	// Each flow: SYN (fwd_new), handshake ACK (fwd_learned), then three
	// established segments (a conntrack hit, then flow cache copies).
	const flows, established = 20, 3
	bytes := map[uint32]uint64{}
	for _, c := range []struct {
		client, vip netip.Addr
		svc         uint32
	}{{client4, vip4, svcL2v4.ID}, {client6, vip6, svcL2v6.ID}} {
		for port := uint16(41000); port < 41000+flows; port++ {
			for _, flags := range []uint8{packet.FlagSYN, packet.FlagACK, packet.FlagACK, packet.FlagACK, packet.FlagACK} {
				if n := e.forwardTCP(t, b.Program, c.client, port, c.vip, flags); n.name == "" {
					t.Fatalf("%v:%d went to no test node", c.client, port)
				}
				s := syn(c.client, port, c.vip, 143)
				s.Flags = flags
				bytes[c.svc] += uint64(len(packet.TCP(s)))
			}
		}
	}
	tr := read()
	for _, svc := range []uint32{svcL2v4.ID, svcL2v6.ID} {
		want := maps.Counters{Packets: flows * (2 + established), Bytes: bytes[svc], NewFlows: flows}
		if got := tr.Services[svc]; got != want {
			t.Fatalf("service %d counters %+v, want %+v", svc, got, want)
		}
		var sum maps.Counters
		for id, c := range tr.Backends {
			if id/10 == svc-1 { // 1–3 for service 1, 11–13 for service 2
				sum.Packets, sum.Bytes, sum.NewFlows = sum.Packets+c.Packets, sum.Bytes+c.Bytes, sum.NewFlows+c.NewFlows
			}
		}
		if sum != want {
			t.Fatalf("service %d's backends sum to %+v, want %+v", svc, sum, want)
		}
	}
	for s, want := range map[maps.Stat]uint64{
		maps.StatFwdNew:         2 * flows,
		maps.StatFwdLearned:     2 * flows,
		maps.StatFwdEstablished: 2 * flows * established,
	} {
		if got := tr.Outcomes[s]; got != want {
			t.Fatalf("%s = %d, want %d", maps.StatName(s), got, want)
		}
	}
	if got, _ := m.ReadStats(); got != tr.Outcomes {
		t.Fatalf("ReadStats %v differs from ReadTraffic's outcomes %v", got, tr.Outcomes)
	}

	// No packet moves from here on: every total must stay as it is.
	same := func(step string, wantBackends map[uint32]maps.Counters) {
		t.Helper()
		now := read()
		for _, svc := range []uint32{svcL2v4.ID, svcL2v6.ID} {
			if now.Services[svc] != tr.Services[svc] {
				t.Fatalf("%s: service %d counters %+v, were %+v", step, svc, now.Services[svc], tr.Services[svc])
			}
		}
		if now.Outcomes != tr.Outcomes {
			t.Fatalf("%s: outcomes %v, were %v", step, now.Outcomes, tr.Outcomes)
		}
		for id, want := range wantBackends {
			if got := now.Backends[id]; got != want {
				t.Fatalf("%s: backend %d counters %+v, want %+v", step, id, got, want)
			}
		}
	}
	if tr.Backends[1] == (maps.Counters{}) {
		t.Fatal("backend 1 got no flow: the test proves nothing about its removal")
	}
	mustDo(t, m.DeleteBackend(1))
	if _, ok := read().Backends[1]; ok {
		t.Fatal("a removed backend is still listed")
	}
	same("backend 1 removed", nil)
	mustDo(t, m.PutBackend(maps.Backend{ID: 1, Addr: testNodes[0].v4, State: maps.StateUp, Service: svcL2v4.ID}))
	same("backend 1 back", map[uint32]maps.Counters{1: {}})
	if c, _ := m.BackendCounters(1); c != (maps.Counters{}) {
		t.Fatalf("a backend taken into use again starts at %+v, want zero", c)
	}
	// Backend 2 becomes a pair of the other service: its counts stay
	// svcL2v4's, its own restart.
	mustDo(t, m.PutBackend(maps.Backend{ID: 2, Addr: testNodes[1].v4, State: maps.StateUp, Service: svcL2v6.ID}))
	same("backend 2 handed to service 2", map[uint32]maps.Counters{2: {}})
	// svcL2v6 goes with its pairs; its id, reused, starts from zero.
	mustDo(t, m.DeleteService(vip6, 143))
	for _, n := range testNodes {
		mustDo(t, m.DeleteBackend(n.id+10))
	}
	same("service 2's backends removed", nil)
	mustDo(t, m.PutService(svcL2v6))
	if got := read().Services[svcL2v6.ID]; got != (maps.Counters{}) {
		t.Fatalf("a reused service id starts at %+v, want zero", got)
	}
	if got := read().Outcomes; got != tr.Outcomes {
		t.Fatalf("outcomes %v after the service id was reused, were %v", got, tr.Outcomes)
	}
}
