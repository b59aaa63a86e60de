package dataplane_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/atoll-lb/atoll/bpf/packet"
	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/dataplane"
	"github.com/atoll-lb/atoll/userspace/dataplane/progrun"
)

// requireRoot skips loudly: these tests load BPF programs and create
// network namespaces, which needs root (as CI has).
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: needs root to load BPF programs and create network namespaces; run `make test` as root")
	}
}

// The test LB's world: progrun's lb0 on 198.51.100.0/24 and
// 2001:db8:1::/64, nodes with permanent neighbour entries, and a node
// behind a gateway (not on-link).
var (
	lbAddr4 = progrun.Addr4.Addr()
	lbAddr6 = progrun.Addr6.Addr()

	client4 = netip.MustParseAddr("192.0.2.10")
	client6 = netip.MustParseAddr("2001:db8:c::10")
	vip4    = netip.MustParseAddr("203.0.113.10")
	vip6    = netip.MustParseAddr("2001:db8:f::10")
	router4 = netip.MustParseAddr("192.0.2.254")
	router6 = netip.MustParseAddr("2001:db8:c::fe")

	offlink4 = netip.MustParseAddr("203.0.113.200") // via gw4
	gw4      = netip.MustParseAddr("198.51.100.254")
	noNeigh4 = netip.MustParseAddr("198.51.100.99") // on-link, never resolved

	clientMAC = net.HardwareAddr{0x02, 0xcc, 0, 0, 0, 0x10}
)

// testNode is a node known to the test LB.
type testNode struct {
	name   string
	id     uint32
	v4, v6 netip.Addr
	mac    net.HardwareAddr
}

var testNodes = []testNode{
	{"node-a1", 1, netip.MustParseAddr("198.51.100.11"), netip.MustParseAddr("2001:db8:1::11"), net.HardwareAddr{2, 0, 0, 0, 1, 0x11}},
	{"node-a2", 2, netip.MustParseAddr("198.51.100.12"), netip.MustParseAddr("2001:db8:1::12"), net.HardwareAddr{2, 0, 0, 0, 1, 0x12}},
	{"node-a3", 3, netip.MustParseAddr("198.51.100.13"), netip.MustParseAddr("2001:db8:1::13"), net.HardwareAddr{2, 0, 0, 0, 1, 0x13}},
}

// progEnv is a namespace the program runs in, so bpf_fib_lookup sees a
// routing table the test controls.
type progEnv struct {
	*progrun.Env
	lbMAC net.HardwareAddr
	prog  *ebpf.Program // the program tests run by default
}

func newProgEnv(t testing.TB) *progEnv {
	t.Helper()
	requireRoot(t)
	env, err := progrun.New("atl-prog")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Close() })
	for _, n := range testNodes {
		for _, a := range []netip.Addr{n.v4, n.v6} {
			if err := env.AddNeigh(a, n.mac); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := env.AddNeigh(gw4, net.HardwareAddr{2, 0, 0, 0, 0xfe, 0xfe}); err != nil {
		t.Fatal(err)
	}
	if err := env.NS.AddRoute(netip.MustParsePrefix("203.0.113.192/26"), progrun.Interface, gw4); err != nil {
		t.Fatal(err)
	}
	return &progEnv{Env: env, lbMAC: env.MAC}
}

// run runs prog once on frame inside the environment's namespace.
func (e *progEnv) run(t testing.TB, prog *ebpf.Program, frame []byte) (uint32, []byte) {
	t.Helper()
	v, out, err := e.Run(prog, frame)
	if err != nil {
		t.Fatal(err)
	}
	return v, out
}

// forwardTCP runs one TCP segment client:port → vip:143 with the given
// flags and returns the node it went to, failing the test unless it was
// forwarded (XDP_TX).
func (e *progEnv) forwardTCP(t testing.TB, prog *ebpf.Program, client netip.Addr, port uint16, vip netip.Addr, flags uint8) testNode {
	t.Helper()
	s := syn(client, port, vip, 143)
	s.Flags = flags
	v, out := e.run(t, prog, packet.TCP(s))
	if v != xdpTX {
		t.Fatalf("%v:%d flags %#x: %s", client, port, flags, verdict(v))
	}
	n, _ := nodeByMAC(out[0:6])
	return n
}

// setup loads a balancer with the test nodes as backends and the given
// services, each with a ring over every UP node.
func setup(t testing.TB, e *progEnv, svcs ...maps.Service) *dataplane.Balancer {
	t.Helper()
	return setupSized(t, e, 1<<16, svcs...)
}

// setupSized is setup with a conntrack of ctSize entries per family.
func setupSized(t testing.TB, e *progEnv, ctSize uint32, svcs ...maps.Service) *dataplane.Balancer {
	t.Helper()
	b, err := dataplane.LoadBalancer(dataplane.Options{ConntrackSize: ctSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if err := b.Maps.SetSources(lbAddr4, lbAddr6); err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if err := b.Maps.PutService(s); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// putNodes writes the test nodes as backends of the given family (and
// of the first service, for counting) and installs one ring over those
// in `up` for every service.
func putNodes(t testing.TB, m *maps.Maps, v6 bool, svcs []maps.Service, up ...int) []uint32 {
	t.Helper()
	var ring []maps.MaglevNode
	for i, n := range testNodes {
		a := n.v4
		if v6 {
			a = n.v6
		}
		if err := m.PutBackend(maps.Backend{ID: n.id, Addr: a, State: maps.StateUp, Service: svcs[0].ID}); err != nil {
			t.Fatal(err)
		}
		for _, u := range up {
			if u == i {
				ring = append(ring, maps.MaglevNode{Name: n.name, ID: n.id, Weight: 1})
			}
		}
	}
	table, err := maps.BuildMaglev(ring, 65537)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range svcs {
		if err := m.SetRing(s.ID, s.Island, table); err != nil {
			t.Fatal(err)
		}
	}
	return table
}

func nodeByID(id uint32) testNode {
	for _, n := range testNodes {
		if n.id == id {
			return n
		}
	}
	panic(fmt.Sprintf("no test node %d", id))
}

func nodeByMAC(mac net.HardwareAddr) (testNode, bool) {
	for _, n := range testNodes {
		if n.mac.String() == mac.String() {
			return n, true
		}
	}
	return testNode{}, false
}
