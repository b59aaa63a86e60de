package dataplane_test

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/atoll-lb/atoll/bpf"
	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/dataplane"
	"github.com/atoll-lb/atoll/userspace/netns"
)

func pinDir(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	dir := filepath.Join("/sys/fs/bpf", "atoll-test-"+hex.EncodeToString(b))
	t.Cleanup(func() { dataplane.Reset(dir) })
	return dir
}

// TestPinnedAdoption: a second load over pinned maps sees what the first
// wrote; a changed layout is refused by name; Reset removes everything.
func TestPinnedAdoption(t *testing.T) {
	requireRoot(t)
	dir := pinDir(t)
	b, err := dataplane.LoadBalancer(dataplane.Options{PinPath: dir, ConntrackSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	svc := maps.Service{VIP: vip4, Port: 143, ID: 7, Island: 3, Forward: maps.ForwardIPIP, Route: maps.RouteIsland}
	mustDo(t, b.Maps.PutService(svc))
	mustDo(t, b.Maps.PutBackend(maps.Backend{ID: 9, Addr: testNodes[0].v4, State: maps.StateUp, Island: 3}))
	table, err := maps.BuildMaglev([]maps.MaglevNode{{Name: "x", ID: 9, Weight: 1}}, 251)
	mustDo(t, err)
	mustDo(t, b.Maps.SetRing(7, 3, table))
	mustDo(t, b.Maps.PutName("s:imap/4", 7))
	// A next-hop cache entry an earlier program left (another clock,
	// perhaps): a new load must not trust it.
	cpus, err := ebpf.PossibleCPU()
	mustDo(t, err)
	stale := make([]bpf.BalancerNhEntry, cpus)
	for i := range stale {
		stale[i] = bpf.BalancerNhEntry{Expires: 1 << 62, Family: 2, Dmac: [6]uint8{2, 0, 0, 0, 0xee, 0xee}}
	}
	mustDo(t, b.Maps.NextHops.Put(uint32(9), stale))
	// Likewise a flow cache entry (of a flow conntrack may not have).
	staleFlow := make([]bpf.BalancerFcEntry, cpus)
	for i := range staleFlow {
		staleFlow[i] = bpf.BalancerFcEntry{Key: maps.NewFlowKey(netip.MustParseAddrPort("192.0.2.1:1"), netip.AddrPortFrom(vip4, 143)), Backend: 9, Service: 7, Gen: 1, Stamp: 1}
	}
	mustDo(t, b.Maps.FlowCache.Put(uint32(5), staleFlow))
	b.Close()
	// Pinned state from before the VIP filter existed: the next load
	// creates the filter and must fill it from vip_addrs.
	mustDo(t, os.Remove(filepath.Join(dir, maps.MapVIPFilter)))
	// A flow cache pinned by an earlier version, in another layout (56-byte
	// entries): caches are not pinned any more, and an old one is removed
	// rather than refused.
	oldCache, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 56, MaxEntries: maps.FlowCacheSize})
	mustDo(t, err)
	mustDo(t, oldCache.Pin(filepath.Join(dir, maps.MapFlowCache)))
	oldCache.Close()
	// The per-service and per-backend counters of an earlier version
	// (24-byte values): superseded, removed at load.
	for _, name := range []string{"service_stats", "backend_stats"} {
		old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 24, MaxEntries: maps.MaxBackends})
		mustDo(t, err)
		mustDo(t, old.Pin(filepath.Join(dir, name)))
		old.Close()
	}

	b2, err := dataplane.LoadBalancer(dataplane.Options{PinPath: dir, ConntrackSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	svcs, err := b2.Maps.ListServices()
	mustDo(t, err)
	if len(svcs) != 1 || svcs[0] != svc {
		t.Fatalf("adopted services %+v, want %+v", svcs, svc)
	}
	if got, err := b2.Maps.Ring(7, 3); err != nil || len(got) != 251 || got[0] != 9 {
		t.Fatalf("adopted ring: %d entries, err %v", len(got), err)
	}
	if names, _ := b2.Maps.ListNames(); names["s:imap/4"] != 7 {
		t.Fatalf("adopted names %v", names)
	}
	for _, name := range []string{maps.MapFlowCache, maps.MapNextHops, "service_stats", "backend_stats"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Fatalf("%s pinned after the load (%v)", name, err)
		}
	}
	if !filterBit(t, b2.Maps, vip4) {
		t.Fatal("VIP filter not rebuilt from the pinned vip_addrs")
	}
	mustDo(t, b2.Maps.NextHops.Lookup(uint32(9), stale))
	for i, e := range stale {
		if e != (bpf.BalancerNhEntry{}) {
			t.Fatalf("CPU %d's next-hop cache entry kept across loads: %+v", i, e)
		}
	}
	mustDo(t, b2.Maps.FlowCache.Lookup(uint32(5), staleFlow))
	for i, e := range staleFlow {
		if e != (bpf.BalancerFcEntry{}) {
			t.Fatalf("CPU %d's flow cache entry kept across loads: %+v", i, e)
		}
	}

	_, err = dataplane.LoadBalancer(dataplane.Options{PinPath: dir, ConntrackSize: 8192})
	if !errors.Is(err, dataplane.ErrLayout) {
		t.Fatalf("conntrack size change: %v, want ErrLayout", err)
	}
	t.Logf("refused with: %v", err)

	mustDo(t, dataplane.Reset(dir))
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("pin dir left after Reset: %v", err)
	}
}

// TestAttachPinned: the link outlives the handles; a second attach
// replaces the program in place; detaching removes it.
func TestAttachPinned(t *testing.T) {
	requireRoot(t)
	dir := pinDir(t)
	ns, err := netns.New("atl-pin")
	mustDo(t, err)
	t.Cleanup(func() { ns.Close() })
	seg, err := netns.NewSegment("atl-pinseg", 1500)
	mustDo(t, err)
	t.Cleanup(func() { seg.Close() })
	_, err = seg.Attach(ns, "eth0", 1500, netip.MustParsePrefix("198.51.100.1/24"))
	mustDo(t, err)
	idx, err := ns.LinkIndex("eth0")
	mustDo(t, err)
	attachedProg := func() uint32 {
		l, err := ns.Handle().LinkByName("eth0")
		mustDo(t, err)
		if x := l.Attrs().Xdp; x != nil && x.Attached {
			return x.ProgId
		}
		return 0
	}

	for round, wantReplaced := range []bool{false, true} {
		b, err := dataplane.LoadBalancer(dataplane.Options{PinPath: dir, ConntrackSize: 4096})
		mustDo(t, err)
		var replaced bool
		mustDo(t, ns.Do(func() error {
			var err error
			replaced, err = b.AttachPinned(dir, "eth0", idx)
			return err
		}))
		info, err := b.Program.Info()
		mustDo(t, err)
		id, _ := info.ID()
		b.Close() // handles go; the pinned link keeps the program attached
		if replaced != wantReplaced {
			t.Fatalf("round %d: replaced=%v, want %v", round, replaced, wantReplaced)
		}
		if got := attachedProg(); got != uint32(id) {
			t.Fatalf("round %d: attached program %d, want the new one %d", round, got, id)
		}
	}
	if ifs, _ := dataplane.PinnedLinks(dir); len(ifs) != 1 || ifs[0] != "eth0" {
		t.Fatalf("pinned links %v", ifs)
	}
	mustDo(t, dataplane.DetachPinned(dir, "eth0"))
	if got := attachedProg(); got != 0 {
		t.Fatalf("program %d still attached after detach", got)
	}
}
