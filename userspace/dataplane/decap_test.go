package dataplane_test

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/atoll-lb/atoll/bpf/packet"
	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/dataplane"
)

// TestDecap: what the balancer encapsulates, decap.c turns back into the
// client's packet, byte for byte; anything else passes untouched.
func TestDecap(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcIPIPv4, svcIPIPv6}
	decap, err := dataplane.LoadDecap([]netip.Addr{lbAddr4, lbAddr6})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { decap.Close() })
	open, err := dataplane.LoadDecap(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { open.Close() })

	for _, tc := range []struct {
		name   string
		spec   packet.TCPSpec
		nodeV6 bool
	}{
		{"4in4", syn(client4, 1, vip4, 993), false},
		{"6in6", syn(client6, 1, vip6, 993), true},
		{"4in6", syn(client4, 1, vip4, 993), true},
		{"6in4", syn(client6, 1, vip6, 993), false},
		{"4in4 VLAN", func() packet.TCPSpec { s := syn(client4, 1, vip4, 993); s.VLAN = 5; return s }(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := setup(t, e, svcs...)
			putNodes(t, b.Maps, tc.nodeV6, svcs, 0, 1, 2)
			in := packet.TCP(tc.spec)
			v, tunneled := e.run(t, b.Program, in)
			if v != xdpTX {
				t.Fatalf("balancer: %s", verdict(v))
			}
			before, _ := decap.ReadStats()
			v, out := e.run(t, decap.Program, tunneled)
			if v != xdpPass {
				t.Fatalf("decap: %s, want PASS", verdict(v))
			}
			// The tunnel's L2 header (node and LB MACs) with the inner
			// packet's ethertype, then the client's packet unchanged.
			want := append(append([]byte{}, tunneled[:12]...), in[12:]...)
			if !bytes.Equal(out, want) {
				t.Fatalf("decapsulated frame differs:\n got %x\nwant %x", out, want)
			}
			if _, err := packet.Parse(out); err != nil {
				t.Fatalf("decapsulated frame does not parse: %v", err)
			}
			after, _ := decap.ReadStats()
			if after[maps.DecapOK] != before[maps.DecapOK]+1 {
				t.Fatal("decap_ok not counted")
			}
		})
	}

	t.Run("foreign source passes untouched", func(t *testing.T) {
		b := setup(t, e, svcs...)
		putNodes(t, b.Maps, false, svcs, 0, 1, 2)
		if err := b.Maps.SetSources(netip.MustParseAddr("198.51.100.200"), lbAddr6); err != nil {
			t.Fatal(err)
		}
		_, tunneled := e.run(t, b.Program, packet.TCP(syn(client4, 2, vip4, 993)))
		before, _ := decap.ReadStats()
		v, out := e.run(t, decap.Program, tunneled)
		if v != xdpPass || !bytes.Equal(out, tunneled) {
			t.Fatalf("filtered decap: %s, changed=%v", verdict(v), !bytes.Equal(out, tunneled))
		}
		after, _ := decap.ReadStats()
		if after[maps.DecapForeign] != before[maps.DecapForeign]+1 {
			t.Fatal("decap_foreign not counted")
		}
		// Without a source filter the same packet is decapsulated.
		if v, out := e.run(t, open.Program, tunneled); v != xdpPass || bytes.Equal(out, tunneled) {
			t.Fatalf("unfiltered decap: %s, changed=%v", verdict(v), !bytes.Equal(out, tunneled))
		}
	})
	t.Run("plain traffic passes untouched", func(t *testing.T) {
		for _, f := range [][]byte{packet.TCP(syn(client4, 3, vip4, 993)), packet.TCP(syn(client6, 3, vip6, 993)), {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x88, 0xcc}} {
			if v, out := e.run(t, decap.Program, f); v != xdpPass || !bytes.Equal(out, f) {
				t.Fatalf("%x: %s, changed=%v", f, verdict(v), !bytes.Equal(out, f))
			}
		}
	})
}

// TestServiceChange: a service edit keeps established flows on their
// nodes; a deleted service forwards nothing any more.
func TestServiceChange(t *testing.T) {
	e := newProgEnv(t)
	svcs := []maps.Service{svcL2v4}
	b := setup(t, e, svcs...)
	putNodes(t, b.Maps, false, svcs, 0, 1, 2)
	send := func(port uint16, flags uint8) (uint32, []byte) {
		s := syn(client4, port, vip4, 143)
		s.Flags = flags
		return e.run(t, b.Program, packet.TCP(s))
	}
	nodes := map[uint16]string{}
	for port := uint16(100); port < 120; port++ {
		for _, flags := range []uint8{packet.FlagSYN, packet.FlagACK} { // the handshake
			v, out := send(port, flags)
			n, ok := nodeByMAC(out[0:6])
			if v != xdpTX || !ok || (nodes[port] != "" && nodes[port] != n.name) {
				t.Fatalf("port %d flags %#x: %s to %s, SYN to %q", port, flags, verdict(v), n.name, nodes[port])
			}
			nodes[port] = n.name
		}
	}
	// Switch the service to ipip and shrink its ring to one node: open
	// flows keep their nodes (now tunneled), as the ring no longer says.
	edited := svcL2v4
	edited.Forward = maps.ForwardIPIP
	if err := b.Maps.PutService(edited); err != nil {
		t.Fatal(err)
	}
	putNodes(t, b.Maps, false, []maps.Service{edited}, 0)
	for port, name := range nodes {
		v, out := send(port, packet.FlagACK)
		f, err := packet.Parse(out)
		if v != xdpTX || err != nil || f.Outer == nil {
			t.Fatalf("flow %d after edit: %s, %v, outer %v", port, verdict(v), err, f)
		}
		if n, _ := nodeByMAC(f.DstMAC); n.name != name {
			t.Fatalf("flow %d moved from %s to %s", port, name, n.name)
		}
	}
	// Delete it: nothing is forwarded, every packet passes to the stack.
	if err := b.Maps.DeleteService(vip4, 143); err != nil {
		t.Fatal(err)
	}
	for port := range nodes {
		if v, _ := send(port, packet.FlagACK); v != xdpPass {
			t.Fatalf("flow %d after delete: %s, want PASS", port, verdict(v))
		}
	}
}
