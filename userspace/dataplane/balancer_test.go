package dataplane_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/atoll-lb/atoll/bpf/packet"
	"github.com/atoll-lb/atoll/maps"
)

const (
	xdpAborted  = 0
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

var verdictNames = map[uint32]string{0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}

func verdict(v uint32) string { return verdictNames[v] }

// Services of the prog-run tests: one per forwarding mode and family.
var (
	svcL2v4   = maps.Service{VIP: vip4, Port: 143, ID: 1, Island: 0, Forward: maps.ForwardL2DSR, Route: maps.RouteIsland}
	svcL2v6   = maps.Service{VIP: vip6, Port: 143, ID: 2, Island: 0, Forward: maps.ForwardL2DSR, Route: maps.RouteIsland}
	svcIPIPv4 = maps.Service{VIP: vip4, Port: 993, ID: 3, Island: 0, Forward: maps.ForwardIPIP, Route: maps.RouteIsland}
	svcIPIPv6 = maps.Service{VIP: vip6, Port: 993, ID: 4, Island: 0, Forward: maps.ForwardIPIP, Route: maps.RouteIsland}
)

func syn(client netip.Addr, cport uint16, vip netip.Addr, vport uint16) packet.TCPSpec {
	return packet.TCPSpec{
		SrcMAC: clientMAC, Src: client, Dst: vip, SrcPort: cport, DstPort: vport,
		Flags: packet.FlagSYN, Seq: 1000, DF: client.Is4(), Payload: []byte("hello"),
	}
}

func stat(t *testing.T, m *maps.Maps, s maps.Stat) uint64 {
	t.Helper()
	all, err := m.ReadStats()
	if err != nil {
		t.Fatal(err)
	}
	return all[s]
}

func TestNonVIPPassesUntouched(t *testing.T) {
	e := newProgEnv(t)
	b := setup(t, e, svcL2v4, svcL2v6)
	putNodes(t, b.Maps, false, []maps.Service{svcL2v4, svcL2v6}, 0, 1)

	arp := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x06}, make([]byte, 28)...)
	udp := packet.TCP(syn(client4, 4000, vip4, 143))
	udp[14+9] = 17 // protocol UDP (checksums are not the balancer's business here)
	cases := []struct {
		name  string
		frame []byte
		stat  maps.Stat
	}{
		{"other address", packet.TCP(syn(client4, 4000, netip.MustParseAddr("203.0.113.99"), 143)), maps.StatPassNonVIP},
		{"VIP other port", packet.TCP(syn(client4, 4000, vip4, 25)), maps.StatPassNonVIP},
		{"VIP v6 other port", packet.TCP(syn(client6, 4000, vip6, 25)), maps.StatPassNonVIP},
		{"ARP", arp, maps.StatPassNotIP},
		{"UDP to VIP", udp, maps.StatPassNonVIP},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := stat(t, b.Maps, c.stat)
			v, out := e.run(t, b.Program, c.frame)
			if v != xdpPass {
				t.Fatalf("verdict %s, want PASS", verdict(v))
			}
			if !bytes.Equal(out, c.frame) {
				t.Fatalf("frame changed:\n in %x\nout %x", c.frame, out)
			}
			if got := stat(t, b.Maps, c.stat); got != before+1 {
				t.Fatalf("%s = %d, want %d", maps.StatName(c.stat), got, before+1)
			}
		})
	}
}

// expectNode returns the node the Go side predicts for a flow.
func expectNode(t *testing.T, table []uint32, seed uint32, client netip.Addr, cport uint16, vip netip.Addr, vport uint16) testNode {
	t.Helper()
	id, ok := maps.PickFromTable(table, maps.NewFlowKey(netip.AddrPortFrom(client, cport), netip.AddrPortFrom(vip, vport)), seed)
	if !ok {
		t.Fatal("empty table")
	}
	return nodeByID(id)
}

func TestL2DSR(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcL2v4, svcL2v6}
	for _, tc := range []struct {
		name   string
		spec   packet.TCPSpec
		svc    maps.Service
		nodeV6 bool
	}{
		{"v4", syn(client4, 40001, vip4, 143), svcL2v4, false},
		{"v6", syn(client6, 40001, vip6, 143), svcL2v6, false},
		{"v6 VIP on v4-addressed nodes", syn(client6, 40002, vip6, 143), svcL2v6, false},
		{"v4 VIP on v6-addressed nodes", syn(client4, 40002, vip4, 143), svcL2v4, true},
		{"v4 options", func() packet.TCPSpec {
			s := syn(client4, 40003, vip4, 143)
			s.IPv4Options = []byte{1, 1, 1, 0, 7, 7, 4, 0, 0, 0, 0, 0}
			return s
		}(), svcL2v4, false},
		{"v4 VLAN", func() packet.TCPSpec { s := syn(client4, 40004, vip4, 143); s.VLAN = 100; return s }(), svcL2v4, false},
		{"v6 VLAN", func() packet.TCPSpec { s := syn(client6, 40004, vip6, 143); s.VLAN = 100; return s }(), svcL2v6, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := setup(t, e, svcs...)
			table := putNodes(t, b.Maps, tc.nodeV6, []maps.Service{tc.svc}, 0, 1, 2)
			want := expectNode(t, table, b.HashSeed, tc.spec.Src, tc.spec.SrcPort, tc.spec.Dst, tc.spec.DstPort)
			in := packet.TCP(tc.spec)
			v, out := e.run(t, b.Program, in)
			if v != xdpTX {
				t.Fatalf("verdict %s, want TX", verdict(v))
			}
			// Only the MACs change: destination the node's, source the LB's.
			wantOut := append([]byte{}, in...)
			copy(wantOut[0:6], want.mac)
			copy(wantOut[6:12], e.lbMAC)
			if !bytes.Equal(out, wantOut) {
				t.Fatalf("output differs:\n got %x\nwant %x", out, wantOut)
			}
			if c, _ := b.Maps.BackendCounters(want.id); c.Packets != 1 || c.NewFlows != 1 || c.Bytes != uint64(len(in)) {
				t.Fatalf("backend %d counters %+v, want 1 packet, 1 new flow, %d bytes", want.id, c, len(in))
			}
			if c, _ := b.Maps.ServiceCounters(tc.svc.ID); c.Packets != 1 {
				t.Fatalf("service counters %+v, want 1 packet", c)
			}
		})
	}
}

func TestIPIP(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcIPIPv4, svcIPIPv6}
	for _, tc := range []struct {
		name   string
		spec   packet.TCPSpec
		nodeV6 bool
	}{
		{"4in4", syn(client4, 50001, vip4, 993), false},
		{"6in6", syn(client6, 50001, vip6, 993), true},
		{"4in6", syn(client4, 50002, vip4, 993), true},
		{"6in4", syn(client6, 50002, vip6, 993), false},
		{"4in4 options", func() packet.TCPSpec {
			s := syn(client4, 50003, vip4, 993)
			s.IPv4Options = []byte{1, 1, 1, 0}
			return s
		}(), false},
		// Tagged, with a TOS: the inner header is read behind the tag.
		{"4in4 VLAN", func() packet.TCPSpec { s := syn(client4, 50004, vip4, 993); s.VLAN = 7; s.TOS = 0x68; return s }(), false},
		{"6in6 VLAN", func() packet.TCPSpec { s := syn(client6, 50004, vip6, 993); s.VLAN = 7; s.TOS = 0x8a; return s }(), true},
		{"4in4 no DF", func() packet.TCPSpec { s := syn(client4, 50005, vip4, 993); s.DF = false; s.TOS = 0xb8; return s }(), false},
		// The traffic class and flow label share the outer IPv6 header's
		// first word.
		{"6in6 traffic class", func() packet.TCPSpec { s := syn(client6, 50006, vip6, 993); s.TOS = 0xb9; return s }(), true},
		{"4in6 TOS", func() packet.TCPSpec { s := syn(client4, 50006, vip4, 993); s.TOS = 0x2e; return s }(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := setup(t, e, svcs...)
			table := putNodes(t, b.Maps, tc.nodeV6, svcs, 0, 1, 2)
			want := expectNode(t, table, b.HashSeed, tc.spec.Src, tc.spec.SrcPort, tc.spec.Dst, tc.spec.DstPort)
			in := packet.TCP(tc.spec)
			v, out := e.run(t, b.Program, in)
			if v != xdpTX {
				t.Fatalf("verdict %s, want TX", verdict(v))
			}
			f, err := packet.Parse(out)
			if err != nil {
				t.Fatalf("output does not parse: %v\n%x", err, out)
			}
			if f.DstMAC.String() != want.mac.String() || f.SrcMAC.String() != e.lbMAC.String() {
				t.Fatalf("MACs %v -> %v, want %v -> %v", f.SrcMAC, f.DstMAC, e.lbMAC, want.mac)
			}
			if f.VLAN != tc.spec.VLAN {
				t.Fatalf("VLAN %d, want %d", f.VLAN, tc.spec.VLAN)
			}
			if f.Outer == nil {
				t.Fatal("not encapsulated")
			}
			wantSrc, wantDst := lbAddr4, want.v4
			if tc.nodeV6 {
				wantSrc, wantDst = lbAddr6, want.v6
			}
			if f.Outer.Src != wantSrc || f.Outer.Dst != wantDst {
				t.Fatalf("outer %v -> %v, want %v -> %v", f.Outer.Src, f.Outer.Dst, wantSrc, wantDst)
			}
			if f.Outer.TTL != 64 {
				t.Fatalf("outer TTL %d", f.Outer.TTL)
			}
			if f.Outer.TOS != tc.spec.TOS {
				t.Fatalf("outer TOS %#x, want inner's %#x", f.Outer.TOS, tc.spec.TOS)
			}
			key := maps.NewFlowKey(netip.AddrPortFrom(tc.spec.Src, tc.spec.SrcPort), netip.AddrPortFrom(tc.spec.Dst, tc.spec.DstPort))
			if tc.nodeV6 && f.Outer.FlowLabel != maps.FlowLabel(key) {
				t.Fatalf("flow label %#x, want %#x", f.Outer.FlowLabel, maps.FlowLabel(key))
			}
			if !tc.nodeV6 && tc.spec.Src.Is4() && f.Outer.DF != tc.spec.DF {
				t.Fatalf("outer DF %v, want inner's %v", f.Outer.DF, tc.spec.DF)
			}
			// The inner packet is the client's, byte for byte.
			l2 := 14
			if tc.spec.VLAN != 0 {
				l2 = 18
			}
			outerLen := 20
			if tc.nodeV6 {
				outerLen = 40
			}
			if !bytes.Equal(out[l2+outerLen:], in[l2:]) {
				t.Fatalf("inner packet changed:\n got %x\nwant %x", out[l2+outerLen:], in[l2:])
			}
		})
	}
}

// TestSticky: a flow stays on its node when the ring changes, a DOWN node's
// flows are re-placed, a DRAINING node keeps its flows and gets no new ones.
func TestStickyDownDraining(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcL2v4}
	b := setup(t, e, svcs...)
	table := putNodes(t, b.Maps, false, svcs, 0, 1, 2)

	// Find flows on each node.
	flows := map[uint32][]uint16{}
	for port := uint16(10000); len(flows) < 3 || len(flows[1]) < 5 || len(flows[2]) < 5 || len(flows[3]) < 5; port++ {
		n := expectNode(t, table, b.HashSeed, client4, port, vip4, 143)
		flows[n.id] = append(flows[n.id], port)
	}
	// On any CPU: the test thread moves between CPUs, so a flow's copies
	// in two CPUs' flow caches meet a node going DOWN and returning (a
	// fresh-clone CI run caught a stale copy here before copies carried a
	// generation).
	send := func(port uint16, flags uint8) (uint32, testNode) {
		s := syn(client4, port, vip4, 143)
		s.Flags = flags
		v, out := e.run(t, b.Program, packet.TCP(s))
		n, _ := nodeByMAC(out[0:6])
		return v, n
	}
	// Open 5 flows on each node: SYN, then the handshake's ACK, which
	// conntrack remembers.
	for id, ports := range flows {
		for _, p := range ports[:5] {
			for _, flags := range []uint8{packet.FlagSYN, packet.FlagACK} {
				if v, n := send(p, flags); v != xdpTX || n.id != id {
					t.Fatalf("port %d flags %#x: %s to %s, want node %d", p, flags, verdict(v), n.name, id)
				}
			}
		}
	}
	// Ring without node 1 (index 0) and node 2 draining: established flows stay.
	if err := b.Maps.SetBackendState(2, maps.StateDraining); err != nil {
		t.Fatal(err)
	}
	table2 := putNodes(t, b.Maps, false, svcs, 2) // only node-a3 takes new flows
	if err := b.Maps.SetBackendState(2, maps.StateDraining); err != nil {
		t.Fatal(err)
	}
	for id, ports := range flows {
		for _, p := range ports[:5] {
			if v, n := send(p, packet.FlagACK); v != xdpTX || n.id != id {
				t.Fatalf("established port %d after ring change: %s to %s, want node %d", p, verdict(v), n.name, id)
			}
		}
	}
	// New flows only reach node 3.
	for port := uint16(30000); port < 30200; port++ {
		if v, n := send(port, packet.FlagSYN); v != xdpTX || n.id != 3 {
			t.Fatalf("new flow %d: %s to %s, want node-a3", port, verdict(v), n.name)
		}
	}
	// Node 1 DOWN: its flows are re-placed (to node 3, the only ring member).
	before := stat(t, b.Maps, maps.StatFwdRescheduled)
	if err := b.Maps.SetBackendState(1, maps.StateDown); err != nil {
		t.Fatal(err)
	}
	for _, p := range flows[1][:5] {
		want := expectNode(t, table2, b.HashSeed, client4, p, vip4, 143)
		if v, n := send(p, packet.FlagACK); v != xdpTX || n.id != want.id {
			t.Fatalf("flow of DOWN node, port %d: %s to %s, want %s", p, verdict(v), n.name, want.name)
		}
	}
	if got := stat(t, b.Maps, maps.StatFwdRescheduled); got != before+5 {
		t.Fatalf("fwd_rescheduled %d, want %d", got, before+5)
	}
	// The re-placed flows stay on their new node even when node 1 returns.
	if err := b.Maps.SetBackendState(1, maps.StateUp); err != nil {
		t.Fatal(err)
	}
	for _, p := range flows[1][:5] {
		if v, n := send(p, packet.FlagACK); v != xdpTX || n.id != 3 {
			t.Fatalf("re-placed flow %d moved again: %s to %s", p, verdict(v), n.name)
		}
	}
	// Draining node 2 still has its flows.
	for _, p := range flows[2][:5] {
		if v, n := send(p, packet.FlagACK); v != xdpTX || n.id != 2 {
			t.Fatalf("draining node lost flow %d: %s to %s", p, verdict(v), n.name)
		}
	}
}

// TestPredictionMatches: the Go side predicts the XDP choice of 10,000
// random flows.
func TestPredictionMatches(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcL2v4, svcL2v6}
	b := setup(t, e, svcs...)
	table := putNodes(t, b.Maps, false, svcs, 0, 1, 2)
	r := rand.New(rand.NewPCG(1, 2))
	count := map[uint32]int{}
	for i := 0; i < 10000; i++ {
		var client, vip netip.Addr
		if i%2 == 0 {
			client = netip.AddrFrom4([4]byte{192, 0, 2, byte(r.IntN(256))})
			vip = vip4
		} else {
			var a [16]byte
			copy(a[:], client6.AsSlice())
			a[14], a[15] = byte(r.IntN(256)), byte(r.IntN(256))
			client = netip.AddrFrom16(a)
			vip = vip6
		}
		port := uint16(1024 + r.IntN(60000))
		want := expectNode(t, table, b.HashSeed, client, port, vip, 143)
		v, out := e.run(t, b.Program, packet.TCP(syn(client, port, vip, 143)))
		got, ok := nodeByMAC(out[0:6])
		if v != xdpTX || !ok || got.id != want.id {
			t.Fatalf("flow %d (%v:%d): %s to %x, Go predicts %s", i, client, port, verdict(v), out[0:6], want.name)
		}
		count[got.id]++
	}
	t.Logf("10,000 flows per node: %v", count)
	for _, n := range testNodes {
		if count[n.id] < 3000 {
			t.Fatalf("node %s got only %d of 10,000 flows", n.name, count[n.id])
		}
	}
}

func TestDropsAndPasses(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcL2v4, svcL2v6, svcIPIPv4}
	b := setup(t, e, svcs...)
	putNodes(t, b.Maps, false, svcs, 0, 1, 2)

	frag := syn(client4, 1, vip4, 143)
	frag.MF = true
	fragOther := frag
	fragOther.Dst = netip.MustParseAddr("203.0.113.99")
	later := syn(client4, 1, vip4, 143)
	later.FragOffset = 100
	ext := syn(client6, 1, vip6, 143)
	ext.IPv6ExtHeader = true
	extOther := ext
	extOther.Dst = netip.MustParseAddr("2001:db8:f::99")
	badIHL := packet.TCP(syn(client4, 1, vip4, 143))
	badIHL[14] = 0x44
	longTot := packet.TCP(syn(client4, 1, vip4, 143))
	longTot[16], longTot[17] = 0x05, 0xdc
	shortTot := packet.TCP(syn(client4, 1, vip4, 143))
	shortTot[16], shortTot[17] = 0, 30 // header + 10 bytes: TCP cut short
	badIHLOther := packet.TCP(syn(client4, 1, netip.MustParseAddr("203.0.113.99"), 143))
	badIHLOther[14] = 0x44
	v6zero := packet.TCP(syn(client6, 1, vip6, 143))
	v6zero[14+4], v6zero[14+5] = 0, 0

	for _, c := range []struct {
		name    string
		frame   []byte
		verdict uint32
		stat    maps.Stat
	}{
		{"v4 first fragment to VIP", packet.TCP(frag), xdpDrop, maps.StatDropFragment},
		{"v4 later fragment to VIP", packet.TCP(later), xdpDrop, maps.StatDropFragment},
		{"v4 fragment elsewhere", packet.TCP(fragOther), xdpPass, maps.StatPassNonVIP},
		{"v6 extension header to VIP", packet.TCP(ext), xdpDrop, maps.StatDropIPv6ExtHdr},
		{"v6 extension header elsewhere", packet.TCP(extOther), xdpPass, maps.StatPassNonVIP},
		{"v4 IHL 4 to VIP", badIHL, xdpDrop, maps.StatDropMalformed},
		{"v4 IHL 4 elsewhere", badIHLOther, xdpPass, maps.StatPassMalformed},
		{"v4 total length beyond frame", longTot, xdpDrop, maps.StatDropMalformed},
		{"v4 total length cuts TCP", shortTot, xdpDrop, maps.StatDropMalformed},
		{"v6 payload length 0", v6zero, xdpDrop, maps.StatDropMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := stat(t, b.Maps, c.stat)
			v, out := e.run(t, b.Program, c.frame)
			if v != c.verdict {
				t.Fatalf("verdict %s, want %s", verdict(v), verdict(c.verdict))
			}
			if v == xdpPass && !bytes.Equal(out, c.frame) {
				t.Fatal("passed frame was changed")
			}
			if got := stat(t, b.Maps, c.stat); got != before+1 {
				t.Fatalf("%s = %d, want %d", maps.StatName(c.stat), got, before+1)
			}
		})
	}
}

func TestNoBackendNoRouteNoSource(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcL2v4, svcIPIPv4}
	b := setup(t, e, svcs...)

	t.Run("no ring", func(t *testing.T) {
		v, _ := e.run(t, b.Program, packet.TCP(syn(client4, 1, vip4, 143)))
		if v != xdpDrop || stat(t, b.Maps, maps.StatDropNoBackend) != 1 {
			t.Fatalf("verdict %s, drop_no_backend %d", verdict(v), stat(t, b.Maps, maps.StatDropNoBackend))
		}
	})
	onlyNode := func(t *testing.T, addr netip.Addr) {
		if err := b.Maps.PutBackend(maps.Backend{ID: 9, Addr: addr, State: maps.StateUp}); err != nil {
			t.Fatal(err)
		}
		table, err := maps.BuildMaglev([]maps.MaglevNode{{Name: "x", ID: 9, Weight: 1}}, 251)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range svcs {
			if err := b.Maps.SetRing(s.ID, s.Island, table); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, c := range []struct {
		name string
		node netip.Addr
		svc  maps.Service
		stat maps.Stat
	}{
		{"l2dsr node behind a gateway", offlink4, svcL2v4, maps.StatDropNotOnlink},
		{"neighbour unresolved", noNeigh4, svcL2v4, maps.StatDropNoNeigh},
		{"no route", netip.MustParseAddr("192.0.2.77"), svcIPIPv4, maps.StatDropFIB},
	} {
		t.Run(c.name, func(t *testing.T) {
			onlyNode(t, c.node)
			before := stat(t, b.Maps, c.stat)
			v, _ := e.run(t, b.Program, packet.TCP(syn(client4, 2, vip4, c.svc.Port)))
			if v != xdpDrop || stat(t, b.Maps, c.stat) != before+1 {
				t.Fatalf("verdict %s, %s %d (was %d)", verdict(v), maps.StatName(c.stat), stat(t, b.Maps, c.stat), before)
			}
			// The flow's ACKs (conntrack learns it from the first) are
			// dropped too: a copy is never made from a dropped packet,
			// whose next hop an l2dsr copy would carry.
			ack := syn(client4, 2, vip4, c.svc.Port)
			ack.Flags = packet.FlagACK
			for i := range 3 {
				before := stat(t, b.Maps, c.stat)
				v, _, err := e.RunOn(0, b.Program, packet.TCP(ack))
				if err != nil || v != xdpDrop || stat(t, b.Maps, c.stat) != before+1 {
					t.Fatalf("ACK %d: verdict %s, %s moved by %d (%v)", i, verdict(v), maps.StatName(c.stat), stat(t, b.Maps, c.stat)-before, err)
				}
			}
		})
	}
	t.Run("ipip without an LB address of the node's family", func(t *testing.T) {
		onlyNode(t, testNodes[0].v4)
		if err := b.Maps.SetSources(netip.Addr{}, lbAddr6); err != nil {
			t.Fatal(err)
		}
		v, _ := e.run(t, b.Program, packet.TCP(syn(client4, 3, vip4, 993)))
		if v != xdpDrop || stat(t, b.Maps, maps.StatDropNoSource) != 1 {
			t.Fatalf("verdict %s, drop_no_source %d", verdict(v), stat(t, b.Maps, maps.StatDropNoSource))
		}
	})
}

// TestTruncatedAndRandom: no prefix of a valid VIP packet, and no random
// frame, is ever forwarded.
func TestTruncatedAndRandom(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcL2v4, svcL2v6, svcIPIPv4, svcIPIPv6}
	b := setup(t, e, svcs...)
	putNodes(t, b.Maps, false, svcs, 0, 1, 2)

	opts := syn(client4, 7, vip4, 993)
	opts.IPv4Options = []byte{1, 1, 1, 0}
	vlan := syn(client6, 7, vip6, 993)
	vlan.VLAN = 9
	for name, spec := range map[string]packet.TCPSpec{
		"v4": syn(client4, 7, vip4, 143), "v6": syn(client6, 7, vip6, 143),
		"v4 ipip options": opts, "v6 ipip VLAN": vlan,
	} {
		full := packet.TCP(spec)
		if v, _ := e.run(t, b.Program, full); v != xdpTX {
			t.Fatalf("%s: full packet %s, want TX", name, verdict(v))
		}
		for n := 14; n < len(full); n++ {
			if v, _ := e.run(t, b.Program, full[:n]); v == xdpTX || v == xdpRedirect {
				t.Fatalf("%s truncated to %d bytes was forwarded (%s)", name, n, verdict(v))
			}
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 5000; i++ {
		frame := make([]byte, 14+r.IntN(200))
		for j := range frame {
			frame[j] = byte(r.UintN(256))
		}
		// Half of them claim to be IP, a quarter aim at a VIP address.
		if i%2 == 0 {
			frame[12], frame[13] = 0x08, 0x00
			if i%4 == 0 && len(frame) >= 34 {
				copy(frame[30:34], vip4.AsSlice())
			}
		}
		if v, _ := e.run(t, b.Program, frame); v == xdpTX || v == xdpRedirect {
			t.Fatalf("random frame %d forwarded (%s): %x", i, verdict(v), frame)
		}
	}
}

// TestTooBig: a packet that would not fit the tunnel is answered with an
// ICMP too-big from the VIP (DF set / IPv6) or dropped (no DF).
func TestTooBig(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcIPIPv4, svcIPIPv6}
	for _, tc := range []struct {
		name    string
		spec    packet.TCPSpec
		nodeV6  bool
		wantMTU uint32
	}{
		{"4in4", syn(client4, 1, vip4, 993), false, 1480},
		{"4in6", syn(client4, 1, vip4, 993), true, 1460},
		{"6in6", syn(client6, 1, vip6, 993), true, 1460},
		{"6in4", syn(client6, 1, vip6, 993), false, 1480},
		{"4in4 options VLAN", func() packet.TCPSpec {
			s := syn(client4, 1, vip4, 993)
			s.IPv4Options = []byte{1, 1, 1, 1, 1, 1, 1, 0}
			s.VLAN = 3
			return s
		}(), false, 1480},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := setup(t, e, svcs...)
			putNodes(t, b.Maps, tc.nodeV6, svcs, 0, 1, 2)
			spec := tc.spec
			hdr := 40 + 20
			if spec.Src.Is4() {
				hdr = 20 + len(spec.IPv4Options) + 20
			}
			// Fits exactly: forwarded.
			spec.Payload = make([]byte, int(tc.wantMTU)-hdr)
			if v, _ := e.run(t, b.Program, packet.TCP(spec)); v != xdpTX {
				t.Fatalf("packet of exactly the room left: %s", verdict(v))
			}
			// One byte more: ICMP back to the client.
			spec.Payload = make([]byte, int(tc.wantMTU)-hdr+1)
			in := packet.TCP(spec)
			v, out := e.run(t, b.Program, in)
			if v != xdpTX {
				t.Fatalf("verdict %s, want TX (ICMP)", verdict(v))
			}
			f, err := packet.Parse(out)
			if err != nil {
				t.Fatalf("ICMP does not parse: %v\n%x", err, out)
			}
			if f.ICMP == nil || f.Outer != nil {
				t.Fatalf("not an ICMP error: %+v", f)
			}
			if f.IP.Src != spec.Dst || f.IP.Dst != spec.Src {
				t.Fatalf("ICMP %v -> %v, want VIP -> client", f.IP.Src, f.IP.Dst)
			}
			if f.ICMP.MTU != tc.wantMTU {
				t.Fatalf("MTU %d, want %d", f.ICMP.MTU, tc.wantMTU)
			}
			if f.DstMAC.String() != clientMAC.String() || f.VLAN != spec.VLAN {
				t.Fatalf("ICMP to %v VLAN %d, want back to %v VLAN %d", f.DstMAC, f.VLAN, clientMAC, spec.VLAN)
			}
			l2 := 14
			if spec.VLAN != 0 {
				l2 = 18
			}
			ipLen := hdr - 20
			if !bytes.Equal(f.ICMP.Quoted, in[l2:l2+ipLen+8]) {
				t.Fatalf("quoted %x, want %x", f.ICMP.Quoted, in[l2:l2+ipLen+8])
			}
			if stat(t, b.Maps, maps.StatICMPPTBSent) != 1 {
				t.Fatal("icmp_ptb_sent not counted")
			}
			if spec.Src.Is4() {
				spec.DF = false
				if v, _ := e.run(t, b.Program, packet.TCP(spec)); v != xdpDrop || stat(t, b.Maps, maps.StatDropTooBig) != 1 {
					t.Fatalf("no DF: %s, drop_too_big %d", verdict(v), stat(t, b.Maps, maps.StatDropTooBig))
				}
			}
		})
	}
}

// TestICMPToNode: an ICMP too-big about a VIP flow goes to the flow's node,
// with or without a conntrack entry.
func TestICMPToNode(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcL2v4, svcL2v6}
	b := setup(t, e, svcs...)
	table := putNodes(t, b.Maps, false, svcs, 0, 1, 2)
	for _, tc := range []struct {
		name        string
		client, vip netip.Addr
		router      netip.Addr
	}{
		{"v4", client4, vip4, router4},
		{"v6", client6, vip6, router6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i, port := range []uint16{20001, 20002, 20003, 20004, 20005, 20006} {
				want := expectNode(t, table, b.HashSeed, tc.client, port, tc.vip, 143)
				if i%2 == 0 { // half the flows have a conntrack entry
					ack := syn(tc.client, port, tc.vip, 143)
					ack.Flags = packet.FlagACK
					if v, _ := e.run(t, b.Program, packet.TCP(ack)); v != xdpTX {
						t.Fatal("ACK not forwarded")
					}
				}
				reply := packet.TCP(packet.TCPSpec{Src: tc.vip, Dst: tc.client, SrcPort: 143, DstPort: port, Flags: packet.FlagACK, Payload: make([]byte, 1400), DF: tc.vip.Is4()})
				icmp := packet.ICMPTooBig(clientMAC, e.lbMAC, tc.router, 1400, reply)
				before := stat(t, b.Maps, maps.StatICMPPTBForwarded)
				v, out := e.run(t, b.Program, icmp)
				n, _ := nodeByMAC(out[0:6])
				if v != xdpTX || n.id != want.id {
					t.Fatalf("port %d: ICMP %s to %q, want node %s", port, verdict(v), n.name, want.name)
				}
				if !bytes.Equal(out[12:], icmp[12:]) {
					t.Fatal("ICMP packet changed beyond its MACs")
				}
				if stat(t, b.Maps, maps.StatICMPPTBForwarded) != before+1 {
					t.Fatal("icmp_ptb_forwarded not counted")
				}
			}
		})
	}
	// An ICMP error about something else passes.
	other := packet.TCP(packet.TCPSpec{Src: netip.MustParseAddr("203.0.113.99"), Dst: client4, SrcPort: 143, DstPort: 1, Flags: packet.FlagACK})
	if v, _ := e.run(t, b.Program, packet.ICMPTooBig(clientMAC, e.lbMAC, router4, 1400, other)); v != xdpPass {
		t.Fatalf("ICMP about a non-VIP flow: %s, want PASS", verdict(v))
	}
}

// TestFlowsAndFlush: the Go side lists and flushes the flows of both
// families exactly as the data plane wrote them.
func TestFlowsAndFlush(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcL2v4, svcL2v6}
	b := setup(t, e, svcs...)
	table := putNodes(t, b.Maps, false, svcs, 0, 1, 2)
	want := map[netip.AddrPort]uint32{}
	for i, c := range []netip.Addr{client4, client6} {
		for port := uint16(7000); port < 7010; port++ {
			vip := []netip.Addr{vip4, vip6}[i]
			s := syn(c, port, vip, 143)
			for _, flags := range []uint8{packet.FlagSYN, packet.FlagACK} {
				s.Flags = flags
				if v, _ := e.run(t, b.Program, packet.TCP(s)); v != xdpTX {
					t.Fatalf("flags %#x: %s", flags, verdict(v))
				}
			}
			want[netip.AddrPortFrom(c, port)] = expectNode(t, table, b.HashSeed, c, port, vip, 143).id
		}
	}
	flows, err := b.Maps.Flows(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(flows) != len(want) {
		t.Fatalf("%d flows, want %d", len(flows), len(want))
	}
	for _, f := range flows {
		if id, ok := want[f.Client]; !ok || f.Backend != id || f.VIP.Port() != 143 || f.Local || f.Created == 0 {
			t.Fatalf("flow %+v: want backend %d of a known client", f, id)
		}
		wantSvc := svcL2v4.ID
		if f.Client.Addr().Is6() {
			wantSvc = svcL2v6.ID
		}
		if f.Service != wantSvc {
			t.Fatalf("flow %+v: service %d, want %d", f, f.Service, wantSvc)
		}
	}
	if few, _ := b.Maps.Flows(5); len(few) != 5 {
		t.Fatalf("Flows(5) gave %d", len(few))
	}
	n, err := b.Maps.FlushConntrack()
	if err != nil || n != len(want) {
		t.Fatalf("flushed %d (%v), want %d", n, err, len(want))
	}
	if left, _ := b.Maps.Flows(0); len(left) != 0 {
		t.Fatalf("%d flows left after flush", len(left))
	}
}

// TestSYNStateless: a SYN to an island service is placed by Maglev
// without touching conntrack (a SYN flood neither fills it nor evicts
// established flows); the flow's first packet without SYN, the
// handshake's ACK, reaches the same node and is remembered; later packets
// are conntrack hits. Service counters count a new flow at each SYN (a
// retransmitted one too: nothing remembers the first), not at the ACK.
func TestSYNStateless(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcL2v4, svcL2v6}
	b := setup(t, e, svcs...)
	const flows = 100
	send := func(client netip.Addr, port uint16, vip netip.Addr, flags uint8) testNode {
		t.Helper()
		return e.forwardTCP(t, b.Program, client, port, vip, flags)
	}
	counted := func(s maps.Stat, before [maps.NumStats]uint64, want uint64) {
		t.Helper()
		if got := stat(t, b.Maps, s) - before[s]; got != want {
			t.Fatalf("%s moved by %d, want %d", maps.StatName(s), got, want)
		}
	}
	for i, client := range []netip.Addr{client4, client6} {
		vip := []netip.Addr{vip4, vip6}[i]
		// The nodes' backends become this service's pairs (for its
		// counters); the ring is the same.
		table := putNodes(t, b.Maps, false, svcs[i:i+1], 0, 1, 2)
		before, err := b.Maps.ReadStats()
		if err != nil {
			t.Fatal(err)
		}
		svcBefore, _ := b.Maps.ServiceCounters(svcs[i].ID)
		want := map[uint16]uint32{}
		for port := uint16(50000); port < 50000+flows; port++ {
			want[port] = expectNode(t, table, b.HashSeed, client, port, vip, 143).id
			for range 2 { // a retransmitted SYN goes where the first went
				if n := send(client, port, vip, packet.FlagSYN); n.id != want[port] {
					t.Fatalf("SYN %v:%d to %s, want node %d", client, port, n.name, want[port])
				}
			}
		}
		counted(maps.StatFwdNew, before, 2*flows)
		if v4, v6, err := b.Maps.CountFlows(); err != nil || v4+v6 != i*flows {
			t.Fatalf("conntrack holds %d+%d flows after SYNs (%v), want %d", v4, v6, err, i*flows)
		}
		for port, id := range want {
			for range 2 {
				if n := send(client, port, vip, packet.FlagACK); n.id != id {
					t.Fatalf("ACK %v:%d to %s, want node %d", client, port, n.name, id)
				}
			}
			if f, ok, err := b.Maps.LookupFlow(flowKey(client, port, vip)); err != nil || !ok || f.Backend != id {
				t.Fatalf("%v:%d: conntrack %+v %v (%v), want backend %d", client, port, f, ok, err, id)
			}
		}
		counted(maps.StatFwdLearned, before, flows)
		counted(maps.StatFwdEstablished, before, flows)
		svcAfter, _ := b.Maps.ServiceCounters(svcs[i].ID)
		if got := svcAfter.NewFlows - svcBefore.NewFlows; got != 2*flows {
			t.Fatalf("service new flows moved by %d, want %d (one per SYN)", got, 2*flows)
		}
		if got := svcAfter.Packets - svcBefore.Packets; got != 4*flows {
			t.Fatalf("service packets moved by %d, want %d", got, 4*flows)
		}
	}
}

// TestRingChangeHandshake: for maps.RingGrace after a ring change, an ACK
// that conntrack does not know goes where the previous ring sent its SYN
// (if that node is UP or DRAINING, not DOWN), and SYNs placed on the new ring are
// remembered at once; once the grace is over, the data plane clears it
// and SYNs leave no state again.
func TestRingChangeHandshake(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcL2v4}
	b := setup(t, e, svcs...)
	old := putNodes(t, b.Maps, false, svcs, 0, 1, 2)
	slot := maps.RingSlot(svcL2v4.ID, svcL2v4.Island)
	send := func(port uint16, flags uint8) testNode {
		t.Helper()
		return e.forwardTCP(t, b.Program, client4, port, vip4, flags)
	}
	flows := func() int {
		t.Helper()
		v4, _, err := b.Maps.CountFlows()
		if err != nil {
			t.Fatal(err)
		}
		return v4
	}
	// Three handshakes begun on the old ring, one per node.
	port := map[uint32]uint16{}
	for p := uint16(52000); len(port) < 3; p++ {
		if id := expectNode(t, old, b.HashSeed, client4, p, vip4, 143).id; port[id] == 0 {
			port[id] = p
			if n := send(p, packet.FlagSYN); n.id != id {
				t.Fatalf("SYN %d to %s, want node %d", p, n.name, id)
			}
		}
	}
	if n := flows(); n != 0 {
		t.Fatalf("%d flows after SYNs outside a grace, want 0", n)
	}
	// The ring changes to node 1 alone: node 2 goes DOWN, node 3 drains.
	putNodes(t, b.Maps, false, svcs, 0)
	if err := b.Maps.SetBackendState(2, maps.StateDown); err != nil {
		t.Fatal(err)
	}
	if err := b.Maps.SetBackendState(3, maps.StateDraining); err != nil {
		t.Fatal(err)
	}
	before := stat(t, b.Maps, maps.StatFwdLearned)
	for _, id := range []uint32{1, 3} {
		if n := send(port[id], packet.FlagACK); n.id != id {
			t.Fatalf("ACK of a handshake begun on node %d went to %s after the ring change", id, n.name)
		}
	}
	if f, ok, err := b.Maps.LookupFlow(flowKey(client4, port[1], vip4)); err != nil || !ok || f.Backend != 1 {
		t.Fatalf("flow of node 1: conntrack %+v %v (%v)", f, ok, err)
	}
	if n := send(port[2], packet.FlagACK); n.id != 1 {
		t.Fatalf("ACK of a handshake begun on DOWN node 2 went to %s, want node-a1", n.name)
	}
	if got := stat(t, b.Maps, maps.StatFwdLearned); got != before+3 {
		t.Fatalf("fwd_learned moved by %d, want 3", got-before)
	}
	// A SYN within the grace is remembered on the new ring.
	fresh := uint16(53000)
	if n := send(fresh, packet.FlagSYN); n.id != 1 {
		t.Fatalf("SYN after the change to %s, want node-a1", n.name)
	}
	if f, ok, err := b.Maps.LookupFlow(flowKey(client4, fresh, vip4)); err != nil || !ok || f.Backend != 1 {
		t.Fatalf("SYN within the grace: conntrack %+v %v (%v), want node 1", f, ok, err)
	}

	// A short grace: once past, the first SYN clears it and leaves no state.
	for _, id := range []uint32{2, 3} {
		if err := b.Maps.SetBackendState(id, maps.StateUp); err != nil {
			t.Fatal(err)
		}
	}
	b.Maps.RingGrace = 20 * time.Millisecond
	cur := putNodes(t, b.Maps, false, svcs, 0, 1, 2)
	var end uint64
	if err := b.Maps.RingGraceEnd.Lookup(slot, &end); err != nil || end == 0 {
		t.Fatalf("grace end %d (%v) after a ring change", end, err)
	}
	for {
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
			t.Fatal(err)
		}
		if uint64(ts.Nano()) > end {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	n0 := flows()
	later := uint16(54000)
	if n := send(later, packet.FlagSYN); n.id != expectNode(t, cur, b.HashSeed, client4, later, vip4, 143).id {
		t.Fatalf("SYN after the grace to %s", n.name)
	}
	if n := flows(); n != n0 {
		t.Fatalf("a SYN after the grace left %d flows, had %d", n, n0)
	}
	if err := b.Maps.RingGraceEnd.Lookup(slot, &end); err != nil || end != 0 {
		t.Fatalf("grace end %d (%v) once past, want it cleared", end, err)
	}
	// ClearRing drops the previous ring too.
	if err := b.Maps.ClearRing(svcL2v4.ID, svcL2v4.Island); err != nil {
		t.Fatal(err)
	}
	var id uint32
	if err := b.Maps.RingsPrev.Lookup(slot, &id); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("previous ring after ClearRing: %d (%v), want none", id, err)
	}
}

// TestSYNFlood: twice conntrack's size in SYNs from distinct spoofed
// clients (none completing a handshake) leaves conntrack holding exactly
// the established flows it held before.
func TestSYNFlood(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcL2v4}
	b := setupSized(t, e, 4096, svcs...)
	putNodes(t, b.Maps, false, svcs, 0, 1, 2)
	const established = 100
	for port := uint16(20000); port < 20000+established; port++ {
		for _, flags := range []uint8{packet.FlagSYN, packet.FlagACK} {
			e.forwardTCP(t, b.Program, client4, port, vip4, flags)
		}
	}
	size := int(b.Maps.Conntrack4.MaxEntries())
	for i := range 2 * size {
		src := netip.AddrFrom4([4]byte{198, 51, byte(i >> 16), byte(i >> 8)})
		e.forwardTCP(t, b.Program, src, uint16(1024+i%256), vip4, packet.FlagSYN)
	}
	if v4, _, err := b.Maps.CountFlows(); err != nil || v4 != established {
		t.Fatalf("conntrack holds %d flows after the flood (%v), want the %d established", v4, err, established)
	}
	for port := uint16(20000); port < 20000+established; port++ {
		if _, ok, err := b.Maps.LookupFlow(flowKey(client4, port, vip4)); err != nil || !ok {
			t.Fatalf("flow %d lost in the flood (%v)", port, err)
		}
	}
}

// TestFlowCacheGen: the flow cache's generation moves by one after every
// write that can change where an established flow goes (a service, a
// backend, a conntrack flush) and stays put for writes that change
// nothing or only new flows (a ring).
func TestFlowCacheGen(t *testing.T) {
	e := newProgEnv(t)
	b := setup(t, e)
	node := func(s maps.BackendState) func() error {
		return func() error { return b.Maps.PutBackend(maps.Backend{ID: 1, Addr: testNodes[0].v4, State: s}) }
	}
	svc := svcL2v4
	steps := []struct {
		what  string
		write func() error
		bump  bool
	}{
		{"new backend", node(maps.StateUp), true},
		{"same backend", node(maps.StateUp), false},
		{"DRAINING", node(maps.StateDraining), true},
		{"DOWN", node(maps.StateDown), true},
		{"UP", node(maps.StateUp), true},
		{"readdressed", func() error {
			return b.Maps.PutBackend(maps.Backend{ID: 1, Addr: testNodes[1].v4, State: maps.StateUp})
		}, true},
		{"deleted", func() error { return b.Maps.DeleteBackend(1) }, true},
		{"new service", func() error { return b.Maps.PutService(svc) }, true},
		{"same service", func() error { return b.Maps.PutService(svc) }, false},
		{"ring", func() error { return b.Maps.SetRing(svc.ID, svc.Island, []uint32{2, 2, 2}) }, false},
		{"service changed", func() error {
			s := svc
			s.Forward = maps.ForwardIPIP
			return b.Maps.PutService(s)
		}, true},
		{"service deleted", func() error { return b.Maps.DeleteService(svc.VIP, svc.Port) }, true},
		{"conntrack flushed", func() error { _, err := b.Maps.FlushConntrack(); return err }, true},
	}
	for _, step := range steps {
		before, err := b.Maps.FlowCacheGeneration()
		if err != nil {
			t.Fatal(err)
		}
		if err := step.write(); err != nil {
			t.Fatalf("%s: %v", step.what, err)
		}
		after, err := b.Maps.FlowCacheGeneration()
		if err != nil {
			t.Fatal(err)
		}
		if want := before + map[bool]uint32{true: 1}[step.bump]; after != want {
			t.Fatalf("%s: generation %d → %d, want %d", step.what, before, after, want)
		}
	}
}
