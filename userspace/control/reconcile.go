// Package control is atoll's control plane core: the reconciler that owns
// the desired state (config × health × admin drains) and applies it to the
// BPF maps, idempotently, rebuilding only the Maglev rings whose inputs
// changed.
package control

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/config"
	"github.com/atoll-lb/atoll/userspace/health"
)

// HealthFunc says how a node is for a service and a VIP family (4 or 6),
// reached at addr: the combination of its checks. StateUnknown (not
// checked yet) counts as up, as in HAProxy: a restarted LB must not empty
// its rings.
type HealthFunc func(service, node string, family int, addr netip.Addr) health.State

// NodeState is what the reconciler decided for one node of one service
// and VIP family.
type NodeState struct {
	Node      string
	Island    string
	BackendID uint32
	Addr      netip.Addr
	Weight    uint32 // configured weight
	State     maps.BackendState
	Health    health.State
	Drained   bool // by the admin
}

// ServiceState is one data-plane service: a service's VIP of one family.
type ServiceState struct {
	Name       string // config name
	Key        string // "imap-a/4"
	ID         uint32
	VIP        netip.AddrPort
	Protocol   string
	Forwarding string
	Routing    string
	Island     string
	Nodes      []NodeState
	RingSize   int // entries of the installed ring (0: none)
}

// Result says what one Apply did.
type Result struct {
	Writes        int // map updates
	RingsRebuilt  int // Maglev tables computed
	RingsWritten  int // rings swapped in
	Duration      time.Duration
	ServicesCount int
}

// Reconciler applies desired state to a balancer's maps. It is the only
// writer of those maps; its methods are safe for concurrent use.
type Reconciler struct {
	m   *maps.Maps
	log *slog.Logger

	mu       sync.Mutex
	ids      *idTable
	services map[uint32]maps.Service // what is in the maps, by id
	backends map[uint32]maps.Backend
	rings    map[ringSlot]ringState
	affinity map[netip.Prefix]uint32 // static entries in the maps
	sources  [2]netip.Addr
	status   []ServiceState
}

type ringSlot struct{ service, island uint32 }

type ringState struct {
	inputs string   // canonical form of what the table was built from
	table  []uint32 // nil: no ring
}

// New adopts whatever the maps already hold (a restarted daemon over
// pinned maps): nothing is flushed, and the next Apply writes only what
// differs.
func New(m *maps.Maps, log *slog.Logger) (*Reconciler, error) {
	if log == nil {
		log = slog.Default()
	}
	ids, err := loadIDs(m)
	if err != nil {
		return nil, err
	}
	r := &Reconciler{
		m: m, log: log, ids: ids,
		services: map[uint32]maps.Service{},
		backends: map[uint32]maps.Backend{},
		rings:    map[ringSlot]ringState{},
		affinity: map[netip.Prefix]uint32{},
	}
	aff, err := m.ListAffinity()
	if err != nil {
		return nil, err
	}
	for _, a := range aff {
		if !a.Learned {
			r.affinity[a.Prefix] = a.Island
		}
	}
	svcs, err := m.ListServices()
	if err != nil {
		return nil, err
	}
	for _, s := range svcs {
		r.services[s.ID] = s
		islands := []uint32{s.Island}
		if s.Route == maps.RouteLogin {
			islands = islands[:0]
			for _, id := range ids.names(kindIsland) {
				islands = append(islands, id)
			}
		}
		for _, isl := range islands {
			table, err := m.Ring(s.ID, isl)
			if err != nil {
				return nil, err
			}
			if table != nil {
				r.rings[ringSlot{s.ID, isl}] = ringState{table: table}
			}
		}
	}
	if r.sources[0], r.sources[1], err = m.Sources(); err != nil {
		return nil, err
	}
	for _, id := range ids.names(kindBackend) {
		b, err := m.Backend(id)
		if err != nil {
			return nil, err
		}
		if b.State != maps.StateUnused {
			r.backends[id] = b
		}
	}
	return r, nil
}

// Adopted reports how much state New found in the maps.
func (r *Reconciler) Adopted() (services, backends int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.services), len(r.backends)
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

// nodeAddr picks the address a service reaches a node by: the VIP's
// family when the node has one, else the other (ipip carries either
// family in either; l2dsr only needs the node's MAC).
func nodeAddr(n *config.Node, fam int) (netip.Addr, bool) {
	if a, ok := n.Address(fam); ok {
		return a, true
	}
	return n.Address(10 - fam)
}

// desired is the full target state computed by plan.
type desired struct {
	services map[uint32]maps.Service
	backends map[uint32]maps.Backend
	rings    map[ringSlot]ringPlan
	status   []ServiceState
	keep     map[string]bool // names (with kind prefix) still in use
	affinity map[netip.Prefix]uint32
}

type ringPlan struct {
	inputs string
	nodes  []maps.MaglevNode
}

// plan computes the desired state; it allocates ids for new names.
func (r *Reconciler) plan(cfg *config.Config, hf HealthFunc, drains map[string]bool) (*desired, error) {
	d := &desired{
		services: map[uint32]maps.Service{},
		backends: map[uint32]maps.Backend{},
		rings:    map[ringSlot]ringPlan{},
		keep:     map[string]bool{},
		affinity: map[netip.Prefix]uint32{},
	}
	fwd := map[string]maps.ForwardMode{config.ForwardL2DSR: maps.ForwardL2DSR, config.ForwardIPIP: maps.ForwardIPIP}
	route := map[string]maps.RouteMode{config.RouteIsland: maps.RouteIsland, config.RouteLogin: maps.RouteLogin}
	for _, isl := range cfg.Islands {
		if _, err := r.ids.get(kindIsland, isl.Name); err != nil {
			return nil, err
		}
		d.keep[kindIsland+isl.Name] = true
	}
	for si := range cfg.Services {
		s := &cfg.Services[si]
		for _, vip := range s.VIPs {
			fam := familyOf(vip)
			key := fmt.Sprintf("%s/%d", s.Name, fam)
			sid, err := r.ids.get(kindService, key)
			if err != nil {
				return nil, err
			}
			d.keep[kindService+key] = true
			var islandID uint32
			if s.Routing == config.RouteIsland {
				islandID = r.ids.byName[kindIsland+s.Island]
			}
			svc := maps.Service{VIP: vip, Port: s.Port, ID: sid, Island: islandID, Forward: fwd[s.Forwarding], Route: route[s.Routing]}
			d.services[sid] = svc
			st := ServiceState{
				Name: s.Name, Key: key, ID: sid, VIP: netip.AddrPortFrom(vip, s.Port),
				Protocol: s.Protocol, Forwarding: s.Forwarding, Routing: s.Routing, Island: s.Island,
			}
			// An island service has one ring, of its island; the front door
			// (routing login) one per island, for client affinity.
			islands := []*config.Island{cfg.IslandByName(s.Island)}
			if s.Routing != config.RouteIsland {
				islands = islands[:0]
				for ii := range cfg.Islands {
					islands = append(islands, &cfg.Islands[ii])
				}
			}
			for _, isl := range islands {
				nodeIsland := r.ids.byName[kindIsland+isl.Name]
				var ring []maps.MaglevNode
				var inputs strings.Builder
				fmt.Fprintf(&inputs, "size=%d", cfg.Dataplane.RingSize)
				for ni := range isl.Nodes {
					n := &isl.Nodes[ni]
					addr, ok := nodeAddr(n, fam)
					if !ok {
						continue
					}
					bkey := key + "/" + n.Name
					bid, err := r.ids.get(kindBackend, bkey)
					if err != nil {
						return nil, err
					}
					d.keep[kindBackend+bkey] = true
					h := health.StateUnknown
					if hf != nil {
						h = hf(s.Name, n.Name, fam, addr)
					}
					ns := NodeState{Node: n.Name, Island: isl.Name, BackendID: bid, Addr: addr, Weight: n.Weight, Health: h, Drained: drains[n.Name]}
					switch {
					case h == health.StateDown:
						ns.State = maps.StateDown
					case ns.Drained || n.Weight == 0:
						ns.State = maps.StateDraining
					default:
						ns.State = maps.StateUp
						ring = append(ring, maps.MaglevNode{Name: n.Name, ID: bid, Weight: n.Weight})
						fmt.Fprintf(&inputs, ";%s=%d*%d", n.Name, bid, n.Weight)
					}
					d.backends[bid] = maps.Backend{ID: bid, Addr: addr, State: ns.State, Island: nodeIsland, Service: sid}
					st.Nodes = append(st.Nodes, ns)
				}
				d.rings[ringSlot{sid, nodeIsland}] = ringPlan{inputs: inputs.String(), nodes: ring}
			}
			d.status = append(d.status, st)
		}
	}
	for _, a := range cfg.Affinity.Static {
		if id, ok := r.ids.byName[kindIsland+a.Island]; ok {
			d.affinity[a.Prefix] = id
		}
	}
	return d, nil
}

// Apply makes the maps hold cfg × health × drains. Order keeps every
// packet safe: nodes appear before rings name them, rings drop a node
// before it turns DOWN, services go before their rings and backends.
func (r *Reconciler) Apply(cfg *config.Config, hf HealthFunc, drains map[string]bool) (Result, error) {
	start := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var res Result
	d, err := r.plan(cfg, hf, drains)
	if err != nil {
		return res, err
	}
	res.ServicesCount = len(d.services)

	// 1. Backends that appear or improve (UP/DRAINING).
	for id, b := range d.backends {
		if old, ok := r.backends[id]; (!ok || old != b) && b.State != maps.StateDown {
			if err := r.m.PutBackend(b); err != nil {
				return res, err
			}
			r.backends[id] = b
			res.Writes++
		}
	}
	// 2. Rings, rebuilt only when their inputs changed.
	for slot, p := range d.rings {
		cur := r.rings[slot]
		if cur.inputs == p.inputs && cur.inputs != "" {
			continue
		}
		table, err := maps.BuildMaglev(p.nodes, cfg.Dataplane.RingSize)
		if err != nil {
			return res, fmt.Errorf("control: ring of service %d: %w", slot.service, err)
		}
		res.RingsRebuilt++
		if !slices.Equal(table, cur.table) {
			if err := r.m.SetRing(slot.service, slot.island, table); err != nil {
				return res, err
			}
			res.Writes++
			res.RingsWritten++
		}
		r.rings[slot] = ringState{inputs: p.inputs, table: table}
	}
	// 2b. Static client affinity, once the rings it points at exist
	// (learned entries belong to the Learner and are left alone).
	for p, id := range d.affinity {
		if old, ok := r.affinity[p]; !ok || old != id {
			if err := r.m.PutAffinity(maps.Affinity{Prefix: p, Island: id}); err != nil {
				return res, err
			}
			r.affinity[p] = id
			res.Writes++
		}
	}
	for p := range r.affinity {
		if _, ok := d.affinity[p]; !ok {
			if err := r.m.DeleteAffinity(p); err != nil {
				return res, err
			}
			delete(r.affinity, p)
			res.Writes++
		}
	}
	// 3. Backends going DOWN, now that no ring names them.
	for id, b := range d.backends {
		if old, ok := r.backends[id]; (!ok || old != b) && b.State == maps.StateDown {
			if err := r.m.PutBackend(b); err != nil {
				return res, err
			}
			r.backends[id] = b
			res.Writes++
		}
	}
	// 4. Services: new or changed, then removed (with their rings). A
	// VIP:port that another id now holds is left to PutService, which
	// retires the old id's generation.
	wanted := map[netip.AddrPort]bool{}
	for _, s := range d.services {
		wanted[netip.AddrPortFrom(s.VIP, s.Port)] = true
	}
	for id, s := range d.services {
		if old, ok := r.services[id]; !ok || old != s {
			if ok && (old.VIP != s.VIP || old.Port != s.Port) && !wanted[netip.AddrPortFrom(old.VIP, old.Port)] {
				if err := r.m.DeleteService(old.VIP, old.Port); err != nil {
					return res, err
				}
			}
			if err := r.m.PutService(s); err != nil {
				return res, err
			}
			r.services[id] = s
			res.Writes++
		}
	}
	for id, old := range r.services {
		if _, ok := d.services[id]; ok {
			continue
		}
		if !wanted[netip.AddrPortFrom(old.VIP, old.Port)] {
			if err := r.m.DeleteService(old.VIP, old.Port); err != nil {
				return res, err
			}
		}
		delete(r.services, id)
		res.Writes++
	}
	for slot := range r.rings {
		if _, ok := d.rings[slot]; ok {
			continue
		}
		if err := r.m.ClearRing(slot.service, slot.island); err != nil {
			return res, err
		}
		delete(r.rings, slot)
		res.Writes++
	}
	// 5. Backends no longer configured.
	for id := range r.backends {
		if _, ok := d.backends[id]; ok {
			continue
		}
		if err := r.m.DeleteBackend(id); err != nil {
			return res, err
		}
		delete(r.backends, id)
		res.Writes++
	}
	// 6. Names no longer in use rest in quarantine.
	var errs []error
	for kind, names := range map[string]map[string]uint32{
		kindService: r.ids.names(kindService), kindBackend: r.ids.names(kindBackend), kindIsland: r.ids.names(kindIsland),
	} {
		for name := range names {
			if !d.keep[kind+name] {
				errs = append(errs, r.ids.release(kind, name))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return res, err
	}
	// 7. The LB's own addresses (outer source of ipip).
	src := [2]netip.Addr{cfg.Dataplane.SourceV4, cfg.Dataplane.SourceV6}
	if src != r.sources {
		if err := r.m.SetSources(src[0], src[1]); err != nil {
			return res, err
		}
		r.sources = src
		res.Writes++
	}
	for i := range d.status {
		st := &d.status[i]
		if rs, ok := r.rings[ringSlot{st.ID, d.services[st.ID].Island}]; ok {
			st.RingSize = len(rs.table)
		}
	}
	slices.SortFunc(d.status, func(a, b ServiceState) int { return cmp.Compare(a.Key, b.Key) })
	r.status = d.status
	res.Duration = time.Since(start)
	if res.Writes > 0 {
		r.log.Info("reconciled", "writes", res.Writes, "rings_rebuilt", res.RingsRebuilt, "rings_written", res.RingsWritten, "took", res.Duration)
	}
	return res, nil
}

// Drains returns the nodes an admin drained. Drains are kept in the
// pinned names map, so they survive a daemon restart.
func (r *Reconciler) Drains() map[string]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]bool{}
	for n := range r.ids.names(kindDrain) {
		out[n] = true
	}
	return out
}

// SetDrain records (or clears) an admin drain of a node. The caller
// applies it with the next Apply.
func (r *Reconciler) SetDrain(node string, drained bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := kindDrain + node
	if !drained {
		if err := r.m.DeleteName(key); err != nil {
			return err
		}
		delete(r.ids.byName, key)
		return nil
	}
	if err := r.m.PutName(key, 1); err != nil {
		return err
	}
	r.ids.byName[key] = 1
	return nil
}

// IslandID returns the id of an island (for the Learner).
func (r *Reconciler) IslandID(name string) (uint32, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id, ok := r.ids.byName[kindIsland+name]
	return id, ok
}

// BackendID returns the id of the backend of node for a service's VIP
// family (4 or 6), as allocated by the last Apply.
func (r *Reconciler) BackendID(service string, family int, node string) (uint32, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id, ok := r.ids.byName[fmt.Sprintf("%s%s/%d/%s", kindBackend, service, family, node)]
	return id, ok
}

// Status returns the state the last Apply decided, service by service.
func (r *Reconciler) Status() []ServiceState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.status)
}
