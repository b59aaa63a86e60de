// Package dataplane loads atoll's XDP programs into the kernel and
// attaches them to interfaces: the balancer (with its maps behind a
// maps.Maps), the node-side decapsulator, and the benchmark programs.
package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/atoll-lb/atoll/bpf"
	"github.com/atoll-lb/atoll/maps"
)

// Options shape a balancer collection at load time.
type Options struct {
	// ConntrackSize is the number of flows each conntrack LRU (IPv4,
	// IPv6) holds; 0 keeps the object's default (maps.DefaultConntrackSize).
	ConntrackSize uint32
	// HashSeed seeds the flow hash. LB hosts that back each other up must
	// use the same seed. 0 keeps the object's default.
	HashSeed uint32
	// PinPath, when set, is a bpffs directory where the maps are pinned
	// by name (and found again by a later load), but for the caches.
	PinPath string
}

// caches are the maps that are never pinned: a new load starts them
// empty anyway (maps.New clears them), so their layouts may change
// between versions without `atoll reset`.
var caches = []string{maps.MapFlowCache, maps.MapNextHops}

// superseded are maps an earlier version pinned that this one has no
// more: a load removes them. service_stats and backend_stats were the
// per-service and per-backend counters before a packet was counted once,
// per backend (backend_traffic): the counters restart at the upgrade.
var superseded = []string{"service_stats", "backend_stats"}

func prepare(spec *ebpf.CollectionSpec, opts Options) (*ebpf.CollectionOptions, error) {
	if opts.ConntrackSize != 0 {
		for _, name := range []string{maps.MapConntrack4, maps.MapConntrack6} {
			ct, ok := spec.Maps[name]
			if !ok {
				return nil, fmt.Errorf("dataplane: object has no %s map", name)
			}
			ct.MaxEntries = opts.ConntrackSize
		}
	}
	if opts.HashSeed != 0 {
		v, ok := spec.Variables["hash_seed"]
		if !ok {
			return nil, errors.New("dataplane: object has no hash_seed")
		}
		if err := v.Set(opts.HashSeed); err != nil {
			return nil, fmt.Errorf("dataplane: set hash seed: %w", err)
		}
	}
	co := &ebpf.CollectionOptions{}
	if opts.PinPath != "" {
		for name, m := range spec.Maps {
			// Data sections (.rodata) are per object, never pinned.
			if strings.HasPrefix(name, ".") || slices.Contains(caches, name) {
				continue
			}
			m.Pinning = ebpf.PinByName
		}
		if err := EnsureBPFFS(opts.PinPath); err != nil {
			return nil, err
		}
		// Caches and maps an earlier version pinned: their memory goes
		// with them.
		for _, name := range slices.Concat(caches, superseded) {
			if err := os.Remove(filepath.Join(opts.PinPath, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("dataplane: remove the earlier pinned %s: %w", name, err)
			}
		}
		if err := checkPinned(spec, opts.PinPath); err != nil {
			return nil, err
		}
		co.Maps.PinPath = opts.PinPath
	}
	return co, nil
}

// Balancer is a loaded balancer program and its maps.
type Balancer struct {
	Program *ebpf.Program
	Maps    *maps.Maps
	// HashSeed is the seed the program was loaded with.
	HashSeed uint32

	coll *ebpf.Collection
}

// LoadBalancer loads bpf/balancer.c.
func LoadBalancer(opts Options) (*Balancer, error) {
	spec, err := bpf.LoadBalancer()
	if err != nil {
		return nil, fmt.Errorf("dataplane: balancer spec: %w", err)
	}
	co, err := prepare(spec, opts)
	if err != nil {
		return nil, err
	}
	var seed uint32
	if err := spec.Variables["hash_seed"].Get(&seed); err != nil {
		return nil, fmt.Errorf("dataplane: read hash seed: %w", err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, *co)
	if err != nil {
		return nil, fmt.Errorf("dataplane: load balancer: %w", err)
	}
	m, err := maps.New(coll)
	if err != nil {
		coll.Close()
		return nil, err
	}
	return &Balancer{Program: coll.Programs[bpf.BalancerProgXdpBalancer], Maps: m, HashSeed: seed, coll: coll}, nil
}

// Close releases the program and map handles (pinned maps stay).
func (b *Balancer) Close() error {
	b.coll.Close()
	return nil
}

// AttachXDP attaches a program to an interface of the calling thread's
// network namespace in native (driver) mode.
func AttachXDP(prog *ebpf.Program, ifindex int) (link.Link, error) {
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: link.XDPDriverMode})
	if err != nil {
		return nil, fmt.Errorf("dataplane: attach XDP to ifindex %d: %w", ifindex, err)
	}
	return l, nil
}

// Decap is a loaded decap.c, the node side of ipip forwarding.
type Decap struct {
	Program *ebpf.Program
	Sources *ebpf.Map
	Stats   *ebpf.Map

	coll *ebpf.Collection
}

// LoadDecap loads bpf/decap.c. With sources given, only packets whose
// outer source is one of them are decapsulated (the LB hosts'
// addresses); without, every IP-in-IP packet is.
func LoadDecap(sources []netip.Addr) (*Decap, error) {
	spec, err := bpf.LoadDecap()
	if err != nil {
		return nil, fmt.Errorf("dataplane: decap spec: %w", err)
	}
	if len(sources) > 0 {
		if err := spec.Variables["filter_sources"].Set(uint8(1)); err != nil {
			return nil, fmt.Errorf("dataplane: decap filter: %w", err)
		}
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return nil, fmt.Errorf("dataplane: load decap: %w", err)
	}
	d := &Decap{
		Program: coll.Programs[bpf.DecapProgXdpDecap],
		Sources: coll.Maps[bpf.DecapMapDecapSources],
		Stats:   coll.Maps[bpf.DecapMapDecapStats],
		coll:    coll,
	}
	for _, a := range sources {
		var k bpf.DecapAddrKey
		if a.Is4() {
			b := a.As4()
			copy(k.Addr[:], b[:])
			k.Family = 2
		} else {
			k.Addr = a.As16()
			k.Family = 10
		}
		if err := d.Sources.Put(&k, uint32(1)); err != nil {
			coll.Close()
			return nil, fmt.Errorf("dataplane: decap source %v: %w", a, err)
		}
	}
	return d, nil
}

// ReadStats returns decap.c's counters summed over CPUs.
func (d *Decap) ReadStats() ([maps.NumDecapStats]uint64, error) {
	var out [maps.NumDecapStats]uint64
	for i := range out {
		var per []uint64
		if err := d.Stats.Lookup(uint32(i), &per); err != nil {
			return out, fmt.Errorf("dataplane: decap stats: %w", err)
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return out, nil
}

// Close releases the decap program.
func (d *Decap) Close() error {
	d.coll.Close()
	return nil
}

// BenchOptions shape the benchmark collection.
type BenchOptions struct {
	Options
	// Restore undoes an encapsulation after each run.
	Restore bool
	// NewFlows gives each run a new client port/address.
	NewFlows bool
}

// Bench is a loaded bench.c: the baseline program and the balancer, as
// xdp_balancer runs it or, with Restore or NewFlows, wrapped in the steps
// that let repeated BPF_PROG_RUN take its output again.
type Bench struct {
	Baseline *ebpf.Program
	Balancer *ebpf.Program
	Maps     *maps.Maps
	HashSeed uint32

	coll *ebpf.Collection
}

// LoadBench loads bpf/bench.c.
func LoadBench(opts BenchOptions) (*Bench, error) {
	spec, err := bpf.LoadBench()
	if err != nil {
		return nil, fmt.Errorf("dataplane: bench spec: %w", err)
	}
	co, err := prepare(spec, opts.Options)
	if err != nil {
		return nil, err
	}
	for name, on := range map[string]bool{"bench_restore": opts.Restore, "bench_new_flows": opts.NewFlows} {
		var v uint8
		if on {
			v = 1
		}
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("dataplane: set %s: %w", name, err)
		}
	}
	var seed uint32
	if err := spec.Variables["hash_seed"].Get(&seed); err != nil {
		return nil, fmt.Errorf("dataplane: read hash seed: %w", err)
	}
	// Only the balancer program these options run is loaded (each holds
	// all of balance(): verifying one takes a while).
	prog, unused := bpf.BenchProgXdpBench, bpf.BenchProgXdpBenchPlain
	if !opts.Restore && !opts.NewFlows {
		prog, unused = unused, prog
	}
	delete(spec.Programs, unused)
	coll, err := ebpf.NewCollectionWithOptions(spec, *co)
	if err != nil {
		return nil, fmt.Errorf("dataplane: load bench: %w", err)
	}
	m, err := maps.New(coll)
	if err != nil {
		coll.Close()
		return nil, err
	}
	return &Bench{
		Baseline: coll.Programs[bpf.BenchProgXdpBaseline],
		Balancer: coll.Programs[prog],
		Maps:     m,
		HashSeed: seed,
		coll:     coll,
	}, nil
}

// Close releases the bench programs and maps.
func (b *Bench) Close() error {
	b.coll.Close()
	return nil
}
