package daemon

import (
	"fmt"
	"sort"
	"time"

	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/api"
	"github.com/atoll-lb/atoll/userspace/control"
)

// Maps is the balancer's maps, nil without a data plane (metrics.Source).
func (d *Daemon) Maps() *maps.Maps {
	if d.bal == nil {
		return nil
	}
	return d.bal.Maps
}

// Status is the reconciler's last decision (metrics.Source).
func (d *Daemon) Status() []control.ServiceState {
	if d.rec == nil {
		return nil
	}
	return d.rec.Status()
}

// AffinityStats reports learned affinity (metrics.AffinitySource).
func (d *Daemon) AffinityStats() (int, uint64) {
	if d.learner == nil {
		return 0, 0
	}
	return d.learner.Stats()
}

// APIStatus builds `atoll status`.
func (d *Daemon) apiStatus() (api.Status, error) {
	d.mu.Lock()
	cfg := d.cfg
	last := d.lastReload
	d.mu.Unlock()
	st := api.Status{
		Version:    d.opts.Version,
		Config:     d.opts.ConfigPath,
		StartedAt:  d.started,
		Dataplane:  cfg.Dataplane.Mode,
		Interfaces: cfg.Dataplane.Interfaces,
		PinPath:    cfg.Dataplane.PinPath,
		LastReload: last,
		Drained:    []string{},
	}
	m := d.Maps()
	if d.rec != nil {
		for n := range d.rec.Drains() {
			st.Drained = append(st.Drained, n)
		}
		sort.Strings(st.Drained)
	}
	var traffic maps.Traffic
	if m != nil {
		var err error
		if traffic, err = m.ReadTraffic(); err != nil {
			return st, err
		}
	}
	// Node states before checks: a state follows its checks, so a node
	// shown down never comes with the checks from before it went down.
	services := d.Status()
	checks := d.mon.Statuses()
	for _, s := range services {
		as := api.Service{
			Name: s.Name, ID: s.ID, VIP: s.VIP, Protocol: s.Protocol, Forwarding: s.Forwarding,
			Routing: s.Routing, Island: s.Island, RingSize: s.RingSize,
		}
		if m != nil {
			as.Counters = api.Counters(traffic.Services[s.ID])
		}
		for _, n := range s.Nodes {
			an := api.Node{
				Name: n.Node, Island: n.Island, Address: n.Addr, BackendID: n.BackendID, Weight: n.Weight,
				State: n.State.String(), Health: n.Health.String(), Drained: n.Drained,
			}
			for _, path := range []string{"direct4", "direct6", "vip4", "vip6"} {
				cs, ok := checks[targetID(s.Name, n.Node, path)]
				if !ok {
					continue
				}
				ac := api.Check{Path: path, State: cs.State.String(), LatencyMs: float64(cs.LastLatency.Microseconds()) / 1000, LastCheck: cs.LastCheck}
				if cs.LastErr != nil {
					ac.LastError = cs.LastErr.Error()
				}
				an.Checks = append(an.Checks, ac)
			}
			if m != nil {
				an.Counters = api.Counters(traffic.Backends[n.BackendID])
			}
			as.Nodes = append(as.Nodes, an)
		}
		st.Services = append(st.Services, as)
	}
	if m != nil {
		st.Outcomes = map[string]uint64{}
		for i, v := range traffic.Outcomes {
			if v != 0 {
				st.Outcomes[maps.StatName(maps.Stat(i))] = v
			}
		}
		v4, v6, err := m.CountFlows()
		if err != nil {
			return st, err
		}
		st.Conntrack = api.Conntrack{V4: v4, V6: v6}
	}
	return st, nil
}

// apiBackend adapts the daemon to api.Backend.
type apiBackend struct{ d *Daemon }

func (b apiBackend) Status() (api.Status, error) { return b.d.apiStatus() }
func (b apiBackend) Reload() error               { return b.d.Reload() }
func (b apiBackend) Drain(node string) error     { return b.d.setDrain(node, true) }
func (b apiBackend) Undrain(node string) error   { return b.d.setDrain(node, false) }
func (b apiBackend) Flows(max int) ([]api.Flow, error) {
	return b.d.flows(max)
}

// setDrain drains or undrains a node and applies it before returning.
func (d *Daemon) setDrain(node string, drained bool) error {
	d.mu.Lock()
	cfg := d.cfg
	d.mu.Unlock()
	if n, _ := cfg.NodeByName(node); n == nil {
		return fmt.Errorf("%w: no node %q in %s", api.ErrNotFound, node, cfg.File)
	}
	if d.rec == nil {
		return fmt.Errorf("drain: no data plane (dataplane.mode is %s)", cfg.Dataplane.Mode)
	}
	if err := d.rec.SetDrain(node, drained); err != nil {
		return err
	}
	verb := "drained"
	if !drained {
		verb = "undrained"
	}
	d.log.Info("node "+verb, "node", node)
	return d.apply()
}

func (d *Daemon) flows(max int) ([]api.Flow, error) {
	m := d.Maps()
	if m == nil {
		return nil, nil
	}
	fl, err := m.Flows(max)
	if err != nil {
		return nil, err
	}
	names := map[uint32]string{}
	nodes := map[uint32]string{}
	for _, s := range d.Status() {
		names[s.ID] = s.Name
		for _, n := range s.Nodes {
			nodes[n.BackendID] = n.Node
		}
	}
	now := monotonicNow()
	out := make([]api.Flow, 0, len(fl))
	for _, f := range fl {
		af := api.Flow{Client: f.Client, VIP: f.VIP, Service: names[f.Service], Local: f.Local}
		if !f.Local {
			af.Node = nodes[f.Backend]
		}
		if f.Created > 0 && now > f.Created {
			af.AgeSec = (now - f.Created).Seconds()
		}
		out = append(out, af)
	}
	return out, nil
}

// monotonicNow is CLOCK_MONOTONIC, the clock of conntrack's created_ns.
func monotonicNow() time.Duration {
	var ts unixTimespec
	clockGettime(&ts)
	return time.Duration(ts.Sec)*time.Second + time.Duration(ts.Nsec)
}
