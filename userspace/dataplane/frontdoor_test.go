package dataplane_test

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/bpf/packet"
	"github.com/atoll-lb/atoll/maps"
)

// The front door of these tests: a login service on VIP4:110 and
// VIP6:110, with rings for island 1 (nodes 1, 2) and island 2 (node 3).
var (
	svcFront4 = maps.Service{VIP: vip4, Port: 110, ID: 5, Forward: maps.ForwardL2DSR, Route: maps.RouteLogin}
	svcFront6 = maps.Service{VIP: vip6, Port: 110, ID: 6, Forward: maps.ForwardL2DSR, Route: maps.RouteLogin}
)

const islandA, islandB = 1, 2

func frontDoor(t *testing.T, e *progEnv) (*maps.Maps, func(island uint32) []uint32, uint32) {
	t.Helper()
	b := setup(t, e, svcFront4, svcFront6)
	e.prog = b.Program
	m := b.Maps
	for _, n := range testNodes {
		island := uint32(islandA)
		if n.id == 3 {
			island = islandB
		}
		if err := m.PutBackend(maps.Backend{ID: n.id, Addr: n.v4, State: maps.StateUp, Island: island}); err != nil {
			t.Fatal(err)
		}
	}
	rings := map[uint32][]uint32{}
	for island, nodes := range map[uint32][]testNode{islandA: testNodes[:2], islandB: testNodes[2:]} {
		var ring []maps.MaglevNode
		for _, n := range nodes {
			ring = append(ring, maps.MaglevNode{Name: n.name, ID: n.id, Weight: 1})
		}
		table, err := maps.BuildMaglev(ring, 1009)
		if err != nil {
			t.Fatal(err)
		}
		rings[island] = table
		for _, s := range []maps.Service{svcFront4, svcFront6} {
			if err := m.SetRing(s.ID, island, table); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, a := range []maps.Affinity{
		{Prefix: netip.MustParsePrefix("192.0.2.0/25"), Island: islandA},
		{Prefix: netip.MustParsePrefix("192.0.2.10/32"), Island: islandB}, // more specific wins
		{Prefix: netip.MustParsePrefix("2001:db8:c::/64"), Island: islandA},
	} {
		if err := m.PutAffinity(a); err != nil {
			t.Fatal(err)
		}
	}
	return m, func(island uint32) []uint32 { return rings[island] }, b.HashSeed
}

func tcp(client netip.Addr, cport uint16, vip netip.Addr, flags uint8) []byte {
	s := syn(client, cport, vip, 110)
	s.Flags = flags
	return packet.TCP(s)
}

// TestFrontDoor: every branch of the login routing mode, with the exact
// verdicts.
func TestFrontDoor(t *testing.T) {
	e := newProgEnv(t)
	m, ring, seed := frontDoor(t, e)
	outcome := func(t *testing.T, frame []byte, wantVerdict uint32, wantStat maps.Stat) []byte {
		t.Helper()
		before := stat(t, m, wantStat)
		v, out := e.run(t, e.prog, frame)
		if v != wantVerdict {
			t.Fatalf("verdict %s, want %s", verdict(v), verdict(wantVerdict))
		}
		if got := stat(t, m, wantStat); got != before+1 {
			t.Fatalf("%s %d, want %d", maps.StatName(wantStat), got, before+1)
		}
		return out
	}
	flowOf := func(client netip.Addr, cport uint16, vip netip.Addr) (maps.Flow, bool) {
		f, ok, err := m.LookupFlow(maps.NewFlowKey(netip.AddrPortFrom(client, cport), netip.AddrPortFrom(vip, 110)))
		if err != nil {
			t.Fatal(err)
		}
		return f, ok
	}
	predicted := func(island uint32, client netip.Addr, cport uint16, vip netip.Addr) testNode {
		id, _ := maps.PickFromTable(ring(island), maps.NewFlowKey(netip.AddrPortFrom(client, cport), netip.AddrPortFrom(vip, 110)), seed)
		return nodeByID(id)
	}
	other := netip.MustParseAddr("192.0.2.200")

	t.Run("SYN without affinity: handed to the proxy, remembered LOCAL", func(t *testing.T) {
		in := tcp(other, 1000, vip4, packet.FlagSYN)
		out := outcome(t, in, xdpPass, maps.StatPassHandoff)
		if string(out) != string(in) {
			t.Fatal("handed-off packet changed")
		}
		if f, ok := flowOf(other, 1000, vip4); !ok || !f.Local {
			t.Fatalf("conntrack %+v %v, want LOCAL", f, ok)
		}
		outcome(t, tcp(other, 1000, vip4, packet.FlagACK), xdpPass, maps.StatPassLocal)
	})
	t.Run("SYN from an affinity prefix: straight to the island by XDP", func(t *testing.T) {
		client := netip.MustParseAddr("192.0.2.20")
		for port := uint16(2000); port < 2020; port++ {
			want := predicted(islandA, client, port, vip4)
			out := outcome(t, tcp(client, port, vip4, packet.FlagSYN), xdpTX, maps.StatFwdAffinity)
			if n, _ := nodeByMAC(out[0:6]); n.id != want.id {
				t.Fatalf("port %d to %s, Go predicts %s", port, n.name, want.name)
			}
			if f, ok := flowOf(client, port, vip4); !ok || f.Local || f.Backend != want.id {
				t.Fatalf("conntrack %+v %v", f, ok)
			}
		}
	})
	t.Run("a more specific prefix wins", func(t *testing.T) {
		out := outcome(t, tcp(client4, 3000, vip4, packet.FlagSYN), xdpTX, maps.StatFwdAffinity)
		if n, _ := nodeByMAC(out[0:6]); n.id != 3 {
			t.Fatalf("192.0.2.10 went to %s, want island b's node-a3", n.name)
		}
	})
	t.Run("IPv6 affinity", func(t *testing.T) {
		want := predicted(islandA, client6, 4000, vip6)
		out := outcome(t, tcp(client6, 4000, vip6, packet.FlagSYN), xdpTX, maps.StatFwdAffinity)
		if n, _ := nodeByMAC(out[0:6]); n.id != want.id {
			t.Fatalf("to %s, want %s", n.name, want.name)
		}
	})
	t.Run("changing affinity moves no established flow", func(t *testing.T) {
		client := netip.MustParseAddr("192.0.2.21")
		out := outcome(t, tcp(client, 5000, vip4, packet.FlagSYN), xdpTX, maps.StatFwdAffinity)
		first, _ := nodeByMAC(out[0:6])
		if err := m.PutAffinity(maps.Affinity{Prefix: netip.MustParsePrefix("192.0.2.0/25"), Island: islandB}); err != nil {
			t.Fatal(err)
		}
		defer m.PutAffinity(maps.Affinity{Prefix: netip.MustParsePrefix("192.0.2.0/25"), Island: islandA})
		out = outcome(t, tcp(client, 5000, vip4, packet.FlagACK), xdpTX, maps.StatFwdEstablished)
		if n, _ := nodeByMAC(out[0:6]); n.id != first.id {
			t.Fatalf("established flow moved from %s to %s", first.name, n.name)
		}
		// A handed-off flow stays with the proxy too.
		outcome(t, tcp(other, 1000, vip4, packet.FlagACK), xdpPass, maps.StatPassLocal)
	})
	t.Run("non-SYN miss: affinity decides as for a SYN", func(t *testing.T) {
		client := netip.MustParseAddr("192.0.2.22")
		want := predicted(islandA, client, 6000, vip4)
		out := outcome(t, tcp(client, 6000, vip4, packet.FlagACK), xdpTX, maps.StatFwdAffinity)
		if n, _ := nodeByMAC(out[0:6]); n.id != want.id {
			t.Fatalf("to %s, want %s", n.name, want.name)
		}
		// Without affinity and without a local socket: passed, not tracked.
		outcome(t, tcp(other, 6001, vip4, packet.FlagACK), xdpPass, maps.StatPassHandoff)
		if _, ok := flowOf(other, 6001, vip4); ok {
			t.Fatal("a stray ACK was tracked")
		}
	})
	t.Run("an expired learned entry counts as none", func(t *testing.T) {
		p := netip.MustParsePrefix("192.0.2.201/32")
		if err := m.PutAffinity(maps.Affinity{Prefix: p, Island: islandA, Learned: true, Expires: 1}); err != nil {
			t.Fatal(err)
		}
		outcome(t, tcp(netip.MustParseAddr("192.0.2.201"), 7000, vip4, packet.FlagSYN), xdpPass, maps.StatPassHandoff)
		if err := m.PutAffinity(maps.Affinity{Prefix: p, Island: islandA, Learned: true, Expires: time.Duration(1 << 62)}); err != nil {
			t.Fatal(err)
		}
		outcome(t, tcp(netip.MustParseAddr("192.0.2.201"), 7001, vip4, packet.FlagSYN), xdpTX, maps.StatFwdAffinity)
	})
	t.Run("a learned entry keeps probing through the proxy", func(t *testing.T) {
		client := netip.MustParseAddr("192.0.2.202")
		if err := m.PutAffinity(maps.Affinity{Prefix: netip.PrefixFrom(client, 32), Island: islandA, Learned: true,
			Expires: time.Duration(1 << 62), ProbeMask: 7}); err != nil {
			t.Fatal(err)
		}
		probed := 0
		for port := uint16(9000); port < 9064; port++ {
			k := maps.NewFlowKey(netip.AddrPortFrom(client, port), netip.AddrPortFrom(vip4, 110))
			if maps.FlowHash(k, seed)&7 == 0 {
				outcome(t, tcp(client, port, vip4, packet.FlagSYN), xdpPass, maps.StatPassProbe)
				probed++
			} else {
				outcome(t, tcp(client, port, vip4, packet.FlagSYN), xdpTX, maps.StatFwdAffinity)
			}
		}
		if probed == 0 || probed > 20 {
			t.Fatalf("%d of 64 flows probed, want about 8", probed)
		}
	})
	t.Run("an island without a ring falls back to the proxy", func(t *testing.T) {
		if err := m.ClearRing(svcFront4.ID, islandB); err != nil {
			t.Fatal(err)
		}
		defer m.SetRing(svcFront4.ID, islandB, ring(islandB))
		outcome(t, tcp(client4, 8000, vip4, packet.FlagSYN), xdpPass, maps.StatPassHandoff)
	})
	t.Run("a flow owned by a local socket stays local after an LRU eviction", func(t *testing.T) {
		// A real connection in the test's namespace: VIP and client
		// addresses on lo, a listener on the VIP.
		for _, p := range []netip.Prefix{netip.PrefixFrom(vip4, 32), netip.PrefixFrom(client4, 32)} {
			if err := e.NS.AddAddr("lo", p); err != nil {
				t.Fatal(err)
			}
		}
		ln, err := e.NS.Listen("tcp4", netip.AddrPortFrom(vip4, 110).String())
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err == nil {
				io.Copy(io.Discard, c) // held open until the client closes
				c.Close()
			}
		}()
		var c net.Conn
		if err := e.NS.Do(func() error {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: client4.AsSlice()}}
			var err error
			c, err = d.DialContext(context.Background(), "tcp4", netip.AddrPortFrom(vip4, 110).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		local := netip.MustParseAddrPort(c.LocalAddr().String())
		// 192.0.2.10 has an affinity for island b: without the socket this
		// ACK would go there.
		outcome(t, tcp(client4, local.Port(), vip4, packet.FlagACK), xdpPass, maps.StatPassLocalSocket)
		if f, ok := flowOf(client4, local.Port(), vip4); !ok || !f.Local {
			t.Fatalf("conntrack after the socket was found: %+v %v, want LOCAL again", f, ok)
		}
		outcome(t, tcp(client4, local.Port(), vip4, packet.FlagACK), xdpPass, maps.StatPassLocal)
		// A listener alone does not count: another port of the same
		// client follows the affinity.
		outcome(t, tcp(client4, local.Port()+1, vip4, packet.FlagACK), xdpTX, maps.StatFwdAffinity)
	})
}
