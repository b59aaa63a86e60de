package main

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/atoll-lb/atoll/bpf/packet"
	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/dataplane"
	"github.com/atoll-lb/atoll/userspace/dataplane/progrun"
)

// xdpPath is one path through the balancer measured with BPF_PROG_RUN.
type xdpPath struct {
	Name  string
	Kind  string // "established", "new" or "pass": which goal applies
	Note  string
	frame []byte
	warm  []byte // sent once before measuring instead of frame, when set
	prog  func(*benchSet) *ebpf.Program
}

// benchSet holds the bench.c collections a path may need: the balancer
// alone (xdp_bench_plain, xdp_balancer's body), and the wrapper with the
// encapsulation undone, with a new flow per run, or both.
type benchSet struct {
	plain, restore, newFlows, restoreNew, newFlowsSmall *dataplane.Bench
}

var (
	benchClient4 = netip.MustParseAddr("192.0.2.10")
	benchClient6 = netip.MustParseAddr("2001:db8:c::10")
	benchVIP4    = netip.MustParseAddr("203.0.113.10")
	benchVIP6    = netip.MustParseAddr("2001:db8:f::10")
	benchMAC     = net.HardwareAddr{0x02, 0xcc, 0, 0, 0, 0x10}
)

// Services: port 143 is l2dsr, 993 ipip to IPv4 nodes, 995 ipip to IPv6
// nodes; on both VIP families.
var benchServices = []struct {
	svc     maps.Service
	nodesV6 bool
}{
	{maps.Service{VIP: benchVIP4, Port: 143, ID: 1, Forward: maps.ForwardL2DSR, Route: maps.RouteIsland}, false},
	{maps.Service{VIP: benchVIP6, Port: 143, ID: 2, Forward: maps.ForwardL2DSR, Route: maps.RouteIsland}, false},
	{maps.Service{VIP: benchVIP4, Port: 993, ID: 3, Forward: maps.ForwardIPIP, Route: maps.RouteIsland}, false},
	{maps.Service{VIP: benchVIP6, Port: 993, ID: 4, Forward: maps.ForwardIPIP, Route: maps.RouteIsland}, true},
	{maps.Service{VIP: benchVIP4, Port: 995, ID: 5, Forward: maps.ForwardIPIP, Route: maps.RouteIsland}, true},
	{maps.Service{VIP: benchVIP6, Port: 995, ID: 6, Forward: maps.ForwardIPIP, Route: maps.RouteIsland}, false},
	// The front door (login routing), l2dsr for affinity hits.
	{maps.Service{VIP: benchVIP4, Port: benchFrontPort, ID: 7, Forward: maps.ForwardL2DSR, Route: maps.RouteLogin}, false},
}

// The front door's port, the affinity prefix (island 0) and a client
// outside it. The "new flow per run" rewrite changes the low two bytes of
// the client address, so the prefix is a /16 and the other client is in
// another /16. These are map entries only: BPF_PROG_RUN sends nothing.
const benchFrontPort = 144

var (
	benchAffinity    = netip.MustParsePrefix("192.0.0.0/16")
	benchNoAffinity4 = netip.MustParseAddr("198.51.100.77")
)

const benchNodes = 8

func benchSyn(client, vip netip.Addr, port uint16, flags uint8) []byte {
	return packet.TCP(packet.TCPSpec{
		SrcMAC: benchMAC, Src: client, Dst: vip, SrcPort: 40000, DstPort: port,
		Flags: flags, DF: client.Is4(), Payload: make([]byte, 64),
	})
}

func xdpPaths() []xdpPath {
	ack := uint8(packet.FlagACK)
	syn := uint8(packet.FlagSYN)
	plain := func(s *benchSet) *ebpf.Program { return s.plain.Balancer }
	restore := func(s *benchSet) *ebpf.Program { return s.restore.Balancer }
	return []xdpPath{
		{Name: "pass: non-VIP TCP", Kind: "pass", frame: benchSyn(benchClient4, netip.MustParseAddr("203.0.113.99"), 143, ack), prog: plain},
		{Name: "l2dsr established v4", Kind: "established", frame: benchSyn(benchClient4, benchVIP4, 143, ack), prog: plain},
		{Name: "l2dsr established v6", Kind: "established", frame: benchSyn(benchClient6, benchVIP6, 143, ack), prog: plain},
		{Name: "ipip established 4in4", Kind: "established", Note: "undo step", frame: benchSyn(benchClient4, benchVIP4, 993, ack), prog: restore},
		{Name: "ipip established 6in6", Kind: "established", Note: "undo step", frame: benchSyn(benchClient6, benchVIP6, 993, ack), prog: restore},
		{Name: "ipip established 4in6", Kind: "established", Note: "undo step", frame: benchSyn(benchClient4, benchVIP4, 995, ack), prog: restore},
		{Name: "ipip established 6in4", Kind: "established", Note: "undo step", frame: benchSyn(benchClient6, benchVIP6, 995, ack), prog: restore},
		{Name: "l2dsr new flow v4", Kind: "new", Note: "SYN, new flow per run", frame: benchSyn(benchClient4, benchVIP4, 143, syn),
			prog: func(s *benchSet) *ebpf.Program { return s.newFlows.Balancer }},
		{Name: "l2dsr handshake ACK v4", Kind: "new", Note: "a new flow's first ACK, which conntrack learns (an insert into 1M); new flow per run", frame: benchSyn(benchClient4, benchVIP4, 143, ack),
			prog: func(s *benchSet) *ebpf.Program { return s.newFlows.Balancer }},
		{Name: "l2dsr handshake ACK v4, 64Ki flows", Kind: "new", Note: "as above, conntrack of 65,536", frame: benchSyn(benchClient4, benchVIP4, 143, ack),
			prog: func(s *benchSet) *ebpf.Program { return s.newFlowsSmall.Balancer }},
		{Name: "ipip new flow 4in4", Kind: "new", Note: "SYN, new flow per run, undo step", frame: benchSyn(benchClient4, benchVIP4, 993, syn),
			prog: func(s *benchSet) *ebpf.Program { return s.restoreNew.Balancer }},
		{Name: "ipip new flow 6in6", Kind: "new", Note: "SYN, new flow per run, undo step", frame: benchSyn(benchClient6, benchVIP6, 993, syn),
			prog: func(s *benchSet) *ebpf.Program { return s.restoreNew.Balancer }},
		{Name: "front door affinity hit v4", Kind: "new", Note: "SYN from a prefix in affinity, l2dsr to the island's ring; new flow per run", frame: benchSyn(benchClient4, benchVIP4, benchFrontPort, syn),
			prog: func(s *benchSet) *ebpf.Program { return s.newFlows.Balancer }},
		{Name: "front door handoff v4", Kind: "new", Note: "SYN without affinity, remembered LOCAL and passed to the proxy; new flow per run", frame: benchSyn(benchNoAffinity4, benchVIP4, benchFrontPort, syn),
			prog: func(s *benchSet) *ebpf.Program { return s.newFlows.Balancer }},
		{Name: "front door LOCAL flow v4", Kind: "established", Note: "conntrack hit on a LOCAL entry (left by the flow's SYN), passed", frame: benchSyn(benchNoAffinity4, benchVIP4, benchFrontPort, ack),
			warm: benchSyn(benchNoAffinity4, benchVIP4, benchFrontPort, syn), prog: plain},
	}
}

// setupBench loads one bench collection and gives it the services, eight
// nodes per family and their rings.
func setupBench(env *progrun.Env, opts dataplane.BenchOptions) (*dataplane.Bench, error) {
	b, err := dataplane.LoadBench(opts)
	if err != nil {
		return nil, err
	}
	m := b.Maps
	if err := m.SetSources(progrun.Addr4.Addr(), progrun.Addr6.Addr()); err != nil {
		b.Close()
		return nil, err
	}
	for _, s := range benchServices {
		var ring []maps.MaglevNode
		for i := range benchNodes {
			id := uint32(i + 1)
			if s.nodesV6 {
				id += 100
			}
			ring = append(ring, maps.MaglevNode{Name: fmt.Sprintf("node-%d", id), ID: id, Weight: 1})
		}
		table, err := maps.BuildMaglev(ring, maps.DefaultRingSize)
		if err == nil {
			err = m.PutService(s.svc)
		}
		if err == nil {
			err = m.SetRing(s.svc.ID, s.svc.Island, table)
		}
		if err != nil {
			b.Close()
			return nil, err
		}
	}
	if err := m.PutAffinity(maps.Affinity{Prefix: benchAffinity, Island: 0}); err != nil {
		b.Close()
		return nil, err
	}
	for i := range benchNodes {
		v4 := netip.AddrFrom4([4]byte{198, 51, 100, byte(11 + i)})
		v6 := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, 15: byte(0x11 + i)})
		for _, be := range []maps.Backend{{ID: uint32(i + 1), Addr: v4, State: maps.StateUp}, {ID: uint32(i + 101), Addr: v6, State: maps.StateUp}} {
			if err := m.PutBackend(be); err != nil {
				b.Close()
				return nil, err
			}
		}
	}
	return b, nil
}

func newBenchEnv() (*progrun.Env, *benchSet, error) {
	env, err := progrun.New("atl-bench")
	if err != nil {
		return nil, nil, err
	}
	for i := range benchNodes {
		mac := net.HardwareAddr{2, 0, 0, 0, 1, byte(0x11 + i)}
		v4 := netip.AddrFrom4([4]byte{198, 51, 100, byte(11 + i)})
		v6 := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, 15: byte(0x11 + i)})
		for _, a := range []netip.Addr{v4, v6} {
			if err := env.AddNeigh(a, mac); err != nil {
				env.Close()
				return nil, nil, err
			}
		}
	}
	set := &benchSet{}
	for dst, o := range map[**dataplane.Bench]dataplane.BenchOptions{
		&set.plain:         {},
		&set.restore:       {Restore: true},
		&set.newFlows:      {NewFlows: true},
		&set.restoreNew:    {Restore: true, NewFlows: true},
		&set.newFlowsSmall: {NewFlows: true, Options: dataplane.Options{ConntrackSize: 1 << 16}},
	} {
		if o.ConntrackSize == 0 {
			o.ConntrackSize = 1 << 20
		}
		if *dst, err = setupBench(env, o); err != nil {
			set.close()
			env.Close()
			return nil, nil, fmt.Errorf("bench collection: %w", err)
		}
	}
	return env, set, nil
}

func (s *benchSet) close() {
	for _, b := range []*dataplane.Bench{s.plain, s.restore, s.newFlows, s.restoreNew, s.newFlowsSmall} {
		if b != nil {
			b.Close()
		}
	}
}

// XDPResult is one path's figures.
type XDPResult struct {
	Path      string    `json:"path"`
	Kind      string    `json:"kind"`
	Note      string    `json:"note,omitempty"`
	Verdict   string    `json:"verdict"`
	NsPerPkt  float64   `json:"ns_per_packet"`  // median
	NsMin     float64   `json:"ns_min"`         // spread
	NsMax     float64   `json:"ns_max"`         //
	Baseline  float64   `json:"baseline_ns"`    // median of the baseline runs paired with this path
	Ratio     float64   `json:"ratio"`          // median of per-run path/baseline
	Goal      float64   `json:"goal,omitempty"` // maximum ratio, when one applies
	RatioRuns []float64 `json:"ratio_runs"`     //
}

var verdicts = map[uint32]string{0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}

// runXDP measures every path `runs` times, each run paired with a run of
// the baseline program on the same frame, and reports medians. A non-empty
// filter keeps only the paths whose name contains it.
func runXDP(repeat uint32, runs int, filter string, progress func(string)) ([]XDPResult, error) {
	env, set, err := newBenchEnv()
	if err != nil {
		return nil, err
	}
	defer env.Close()
	defer set.close()

	var out []XDPResult
	for _, p := range xdpPaths() {
		if !strings.Contains(p.Name, filter) {
			continue
		}
		prog := p.prog(set)
		// Warm up: first packets create the flow and fill the next-hop cache.
		warm := p.frame
		if p.warm != nil {
			warm = p.warm
		}
		if _, _, err := env.Run(prog, warm); err != nil {
			return nil, err
		}
		r := XDPResult{Path: p.Name, Kind: p.Kind, Note: p.Note}
		switch p.Kind {
		case "established":
			r.Goal = 2
		case "new":
			r.Goal = 3
		}
		var ns, base []float64
		for i := range runs {
			progress(fmt.Sprintf("xdp %-24s run %d/%d", p.Name, i+1, runs))
			bt, err := env.Benchmark(set.plain.Baseline, p.frame, repeat)
			if err != nil {
				return nil, err
			}
			pt, err := env.Benchmark(prog, p.frame, repeat)
			if err != nil {
				return nil, err
			}
			r.Verdict = verdicts[pt.Verdict]
			ns = append(ns, pt.NsPerRun)
			base = append(base, bt.NsPerRun)
			r.RatioRuns = append(r.RatioRuns, pt.NsPerRun/bt.NsPerRun)
		}
		r.NsPerPkt, r.NsMin, r.NsMax = median(ns), slices.Min(ns), slices.Max(ns)
		r.Baseline = median(base)
		r.Ratio = median(r.RatioRuns)
		out = append(out, r)
	}
	return out, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
