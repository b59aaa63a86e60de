package control

import (
	"io"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/config"
	"github.com/atoll-lb/atoll/userspace/dataplane"
	"github.com/atoll-lb/atoll/userspace/health"
)

const testConfig = `
dataplane:
  interfaces: [eth0]
  ring_size: 1009
  source_v4: 198.51.100.1
  source_v6: 2001:db8:1::1
islands:
  - name: a
    nodes:
      - {name: n1, addresses: [198.51.100.11, 2001:db8:1::11]}
      - {name: n2, addresses: [198.51.100.12]}
      - {name: n3, addresses: [198.51.100.13], weight: 0}
  - name: b
    nodes:
      - {name: m1, addresses: [198.51.100.21]}
services:
  - {name: imap-a, vips: [203.0.113.10, 2001:db8:f::10], protocol: imap, forwarding: ipip, island: a}
  - {name: imap-b, vips: [203.0.113.11], protocol: imap, forwarding: l2dsr, island: b}
  - {name: front, vips: [203.0.113.12], protocol: imap, forwarding: ipip, routing: login}
directory: {ldap: {urls: [ldap://198.51.100.30], base_dn: "dc=example,dc=org", filter: "(uid=%u)", attribute: mailIsland}}
`

func load(t *testing.T, text string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newRec(t *testing.T) (*Reconciler, *dataplane.Balancer) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: needs root to load BPF maps")
	}
	b, err := dataplane.LoadBalancer(dataplane.Options{ConntrackSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	r, err := New(b.Maps, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r, b
}

func nodeIn(st []ServiceState, key, node string) NodeState {
	for _, s := range st {
		if s.Key == key {
			for _, n := range s.Nodes {
				if n.Node == node {
					return n
				}
			}
		}
	}
	return NodeState{}
}

// TestApplyIdempotent: the second Apply of the same state writes nothing
// and rebuilds no ring; one node going down rebuilds only its rings.
func TestApplyIdempotent(t *testing.T) {
	r, b := newRec(t)
	cfg := load(t, testConfig)
	res, err := r.Apply(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// imap-a ×2, imap-b, and the front door's ring in each island.
	if res.Writes == 0 || res.RingsWritten != 5 {
		t.Fatalf("first apply: %+v, want writes and 5 rings", res)
	}
	svcs, _ := b.Maps.ListServices()
	if len(svcs) != 4 {
		t.Fatalf("%d services in the map, want 4 (imap-a ×2, imap-b, front)", len(svcs))
	}
	res, err = r.Apply(cfg, nil, nil)
	if err != nil || res.Writes != 0 || res.RingsRebuilt != 0 {
		t.Fatalf("second apply: %+v, %v; want no writes, no ring rebuilt", res, err)
	}
	// n1 down for imap-a over IPv4 only.
	down := func(service, node string, family int, _ netip.Addr) health.State {
		if service == "imap-a" && node == "n1" && family == 4 {
			return health.StateDown
		}
		return health.StateUp
	}
	res, err = r.Apply(cfg, down, nil)
	if err != nil || res.RingsRebuilt != 1 {
		t.Fatalf("n1 down: %+v, %v; want exactly one ring rebuilt", res, err)
	}
	st := r.Status()
	n1 := nodeIn(st, "imap-a/4", "n1")
	if n1.State != maps.StateDown {
		t.Fatalf("n1 state %v, want down", n1.State)
	}
	if be, _ := b.Maps.Backend(n1.BackendID); be.State != maps.StateDown {
		t.Fatalf("n1's backend in the map: %v", be.State)
	}
	var sid uint32
	for _, s := range st {
		if s.Key == "imap-a/4" {
			sid = s.ID
		}
	}
	ring, _ := b.Maps.Ring(sid, 0)
	for _, id := range ring {
		if id == n1.BackendID {
			t.Fatal("a DOWN node is still in its ring")
		}
	}
	// Weight 0 is draining: not in the ring, flows kept.
	n3 := nodeIn(st, "imap-a/4", "n3")
	if n3.State != maps.StateDraining {
		t.Fatalf("weight-0 node: %v, want draining", n3.State)
	}
	for _, id := range ring {
		if id == n3.BackendID {
			t.Fatal("a weight-0 node is in its ring")
		}
	}
	// n2 has no IPv6 address: on the IPv6 VIP it is reached by IPv4.
	if a := nodeIn(st, "imap-a/6", "n2").Addr; a != netip.MustParseAddr("198.51.100.12") {
		t.Fatalf("n2 for the IPv6 VIP reached at %v", a)
	}
	// Drain n2: draining everywhere, nothing else rebuilt.
	res, err = r.Apply(cfg, down, map[string]bool{"n2": true})
	if err != nil || res.RingsRebuilt != 3 {
		t.Fatalf("drain n2: %+v, %v; want the 2 rings of imap-a and the front door's ring of island a rebuilt", res, err)
	}
	if s := nodeIn(r.Status(), "imap-a/6", "n2").State; s != maps.StateDraining {
		t.Fatalf("drained n2: %v", s)
	}
}

// TestApplyRemovesAndAdopts: a removed service and node leave the maps;
// a new reconciler over the same maps adopts them without rewriting.
func TestApplyRemovesAndAdopts(t *testing.T) {
	r, b := newRec(t)
	cfg := load(t, testConfig)
	if _, err := r.Apply(cfg, nil, nil); err != nil {
		t.Fatal(err)
	}
	r2, err := New(b.Maps, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s, be := r2.Adopted(); s != 4 || be != 11 {
		t.Fatalf("adopted %d services, %d backends; want 4, 11 (the front door has a backend per node)", s, be)
	}
	res, err := r2.Apply(cfg, nil, nil)
	if err != nil || res.RingsWritten != 0 || res.Writes != 0 {
		t.Fatalf("apply over adopted state: %+v, %v; want nothing written", res, err)
	}
	smaller := load(t, `
dataplane: {interfaces: [eth0], ring_size: 1009, source_v4: 198.51.100.1}
islands:
  - name: a
    nodes: [{name: n1, addresses: [198.51.100.11]}]
services:
  - {name: imap-a, vips: [203.0.113.10], protocol: imap, forwarding: ipip, island: a}
`)
	if _, err := r2.Apply(smaller, nil, nil); err != nil {
		t.Fatal(err)
	}
	svcs, _ := b.Maps.ListServices()
	if len(svcs) != 1 || svcs[0].VIP != netip.MustParseAddr("203.0.113.10") {
		t.Fatalf("services after shrinking: %+v", svcs)
	}
	used := 0
	for id := uint32(0); id < 16; id++ {
		if be, _ := b.Maps.Backend(id); be.State != maps.StateUnused {
			used++
		}
	}
	if used != 1 {
		t.Fatalf("%d backends left, want 1", used)
	}
	names, _ := b.Maps.ListNames()
	if len(names) != 3 { // s:imap-a/4, b:imap-a/4/n1, i:a
		t.Fatalf("names left: %v", names)
	}
}

// TestIDQuarantine: a released id is not handed out again at once.
func TestIDQuarantine(t *testing.T) {
	_, b := newRec(t)
	ids, err := loadIDs(b.Maps)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := ids.get(kindBackend, "x")
	if err := ids.release(kindBackend, "x"); err != nil {
		t.Fatal(err)
	}
	c, _ := ids.get(kindBackend, "y")
	if c == a {
		t.Fatalf("released id %d reused at once", a)
	}
}

// TestFrontDoorRingsAndAffinity: a login service gets a ring in every
// island; static affinity entries follow the config and learned ones are
// left alone.
func TestFrontDoorRingsAndAffinity(t *testing.T) {
	r, b := newRec(t)
	text := testConfig + `affinity:
  static:
    - {prefix: 192.0.2.0/24, island: b}
    - {prefix: "2001:db8:c::/64", island: a}
`
	if _, err := r.Apply(load(t, text), nil, nil); err != nil {
		t.Fatal(err)
	}
	var front ServiceState
	for _, s := range r.Status() {
		if s.Name == "front" {
			front = s
		}
	}
	if len(front.Nodes) != 4 {
		t.Fatalf("front door nodes %+v, want the 4 nodes of both islands", front.Nodes)
	}
	for _, isl := range []string{"a", "b"} {
		id, _ := r.IslandID(isl)
		if ring, _ := b.Maps.Ring(front.ID, id); len(ring) != 1009 {
			t.Fatalf("front door ring of island %s: %d entries", isl, len(ring))
		}
	}
	learned := maps.Affinity{Prefix: netip.MustParsePrefix("192.0.2.99/32"), Island: 0, Learned: true, Expires: time.Hour}
	if err := b.Maps.PutAffinity(learned); err != nil {
		t.Fatal(err)
	}
	list := func() map[netip.Prefix]maps.Affinity {
		all, err := b.Maps.ListAffinity()
		if err != nil {
			t.Fatal(err)
		}
		out := map[netip.Prefix]maps.Affinity{}
		for _, a := range all {
			out[a.Prefix] = a
		}
		return out
	}
	idB, _ := r.IslandID("b")
	if got := list(); len(got) != 3 || got[netip.MustParsePrefix("192.0.2.0/24")].Island != idB {
		t.Fatalf("affinity %+v", got)
	}
	// Drop one static prefix: it goes, the learned entry stays.
	text2 := testConfig + `affinity:
  static:
    - {prefix: "2001:db8:c::/64", island: a}
`
	res, err := r.Apply(load(t, text2), nil, nil)
	if err != nil || res.Writes != 1 {
		t.Fatalf("apply: %+v %v, want one write", res, err)
	}
	got := list()
	if _, ok := got[netip.MustParsePrefix("192.0.2.0/24")]; ok || !got[learned.Prefix].Learned || len(got) != 2 {
		t.Fatalf("affinity after removing a prefix: %+v", got)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
