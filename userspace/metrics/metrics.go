// Package metrics exports atoll's Prometheus metrics: traffic counters
// read from the data plane's per-CPU maps at scrape time, node states from
// the reconciler, and the control plane's own counters (health checks,
// reconciles). Names follow Prometheus conventions: an atoll_ prefix,
// base units, _total on counters.
package metrics

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/control"
	"github.com/atoll-lb/atoll/userspace/health"
)

// Source is what the scrape-time collector reads.
type Source interface {
	// Maps is the balancer's maps (nil when the data plane is off).
	Maps() *maps.Maps
	// Status is the reconciler's last decision.
	Status() []control.ServiceState
}

// Metrics holds the control plane's own metrics and the scrape-time
// collector; Registry serves both.
type Metrics struct {
	Registry *prometheus.Registry

	checkDuration *prometheus.HistogramVec
	checks        *prometheus.CounterVec
	stateChanges  *prometheus.CounterVec
	reconciles    *prometheus.CounterVec
	reconcileDur  prometheus.Histogram
	mapWrites     prometheus.Counter
	reloads       *prometheus.CounterVec
	proxy         *proxyMetrics
}

// New registers every metric on a fresh registry.
func New(src Source, version string, log *slog.Logger) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		checkDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "atoll_health_check_duration_seconds",
			Help:    "Latency of health checks, connect to final answer.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"service", "node", "path"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atoll_health_checks_total",
			Help: "Health checks run, by result.",
		}, []string{"service", "node", "path", "result"}),
		stateChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atoll_health_state_changes_total",
			Help: "Health state transitions, by new state.",
		}, []string{"service", "node", "path", "state"}),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atoll_reconciles_total",
			Help: "Reconciles of desired state into the maps, by result.",
		}, []string{"result"}),
		reconcileDur: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "atoll_reconcile_duration_seconds",
			Help:    "Time to apply desired state to the maps.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		mapWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "atoll_map_writes_total",
			Help: "Updates written to the BPF maps by the reconciler.",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atoll_config_reloads_total",
			Help: "Config reloads, by result (a refused config changes nothing).",
		}, []string{"result"}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "atoll_build_info", Help: "atoll's version."}, []string{"version"})
	build.WithLabelValues(version).Set(1)
	m.proxy = newProxyMetrics(reg)
	reg.MustRegister(m.checkDuration, m.checks, m.stateChanges, m.reconciles, m.reconcileDur, m.mapWrites, m.reloads, build,
		&collector{src: src, log: log})
	return m
}

// ObserveCheck records one health check of a target "service/node/path".
func (m *Metrics) ObserveCheck(id string, latency time.Duration, err error) {
	svc, node, path := splitTarget(id)
	result := "ok"
	if err != nil {
		result = "fail"
	} else {
		m.checkDuration.WithLabelValues(svc, node, path).Observe(latency.Seconds())
	}
	m.checks.WithLabelValues(svc, node, path, result).Inc()
}

// ObserveChange records a health state transition.
func (m *Metrics) ObserveChange(c health.Change) {
	svc, node, path := splitTarget(c.ID)
	m.stateChanges.WithLabelValues(svc, node, path, c.To.String()).Inc()
}

// ObserveReconcile records one reconcile.
func (m *Metrics) ObserveReconcile(res control.Result, err error) {
	if err != nil {
		m.reconciles.WithLabelValues("error").Inc()
		return
	}
	m.reconciles.WithLabelValues("ok").Inc()
	m.reconcileDur.Observe(res.Duration.Seconds())
	m.mapWrites.Add(float64(res.Writes))
}

// ObserveReload records a config reload attempt.
func (m *Metrics) ObserveReload(err error) {
	if err != nil {
		m.reloads.WithLabelValues("refused").Inc()
		return
	}
	m.reloads.WithLabelValues("ok").Inc()
}

// splitTarget splits a health target id "service/node/path".
func splitTarget(id string) (svc, node, path string) {
	parts := [3]string{}
	n := 0
	start := 0
	for i := 0; i < len(id) && n < 2; i++ {
		if id[i] == '/' {
			parts[n] = id[start:i]
			n++
			start = i + 1
		}
	}
	parts[n] = id[start:]
	return parts[0], parts[1], parts[2]
}

var (
	descSvcPackets  = prometheus.NewDesc("atoll_service_packets_total", "Packets forwarded by the data plane, per service VIP.", []string{"service", "vip"}, nil)
	descSvcBytes    = prometheus.NewDesc("atoll_service_bytes_total", "Bytes forwarded by the data plane, per service VIP (as received).", []string{"service", "vip"}, nil)
	descSvcFlows    = prometheus.NewDesc("atoll_service_new_flows_total", "Flows placed by Maglev, per service VIP.", []string{"service", "vip"}, nil)
	descNodePackets = prometheus.NewDesc("atoll_node_packets_total", "Packets forwarded to a node, per service and VIP family.", []string{"service", "node", "family"}, nil)
	descNodeBytes   = prometheus.NewDesc("atoll_node_bytes_total", "Bytes forwarded to a node, per service and VIP family.", []string{"service", "node", "family"}, nil)
	descNodeFlows   = prometheus.NewDesc("atoll_node_new_flows_total", "Flows placed on a node, per service and VIP family.", []string{"service", "node", "family"}, nil)
	descNodeState   = prometheus.NewDesc("atoll_node_state", "1 for the node's data-plane state (up, draining, down), per service and VIP family.", []string{"service", "node", "family", "state"}, nil)
	descNodeWeight  = prometheus.NewDesc("atoll_node_weight", "Configured weight of a node.", []string{"service", "node", "family"}, nil)
	descOutcomes    = prometheus.NewDesc("atoll_packets_total", "Packets seen by the data plane, by outcome (fwd_*, pass_*, drop_*, icmp_*).", []string{"outcome"}, nil)
	descConntrack   = prometheus.NewDesc("atoll_conntrack_entries", "Flows in the conntrack tables (counted at most every 10 s).", []string{"family"}, nil)
	descAffLearned  = prometheus.NewDesc("atoll_affinity_learned_entries", "Client addresses learned into an island (front door straight by XDP).", nil, nil)
	descAffConflict = prometheus.NewDesc("atoll_affinity_conflicts_total", "Logins from one address into two islands, which removed or blocked a learned entry.", nil, nil)
)

// AffinitySource reports learned affinity (optional on a Source).
type AffinitySource interface {
	AffinityStats() (learned int, conflicts uint64)
}

// collector reads the maps at scrape time.
type collector struct {
	src Source
	log *slog.Logger

	mu      sync.Mutex
	ctAt    time.Time
	ctCount [2]int
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSvcPackets, descSvcBytes, descSvcFlows, descNodePackets, descNodeBytes,
		descNodeFlows, descNodeState, descNodeWeight, descOutcomes, descConntrack, descAffLearned, descAffConflict} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := c.src.Maps()
	status := c.src.Status()
	if as, ok := c.src.(AffinitySource); ok {
		learned, conflicts := as.AffinityStats()
		ch <- prometheus.MustNewConstMetric(descAffLearned, prometheus.GaugeValue, float64(learned))
		ch <- prometheus.MustNewConstMetric(descAffConflict, prometheus.CounterValue, float64(conflicts))
	}
	var traffic maps.Traffic
	counted := m != nil
	if counted {
		var err error
		if traffic, err = m.ReadTraffic(); err != nil {
			c.log.Warn("metrics: read traffic counters", "err", err)
			counted = false
		}
	}
	for _, s := range status {
		fam := "4"
		if s.VIP.Addr().Is6() {
			fam = "6"
		}
		for _, n := range s.Nodes {
			for _, st := range []maps.BackendState{maps.StateUp, maps.StateDraining, maps.StateDown} {
				v := 0.0
				if n.State == st {
					v = 1
				}
				ch <- prometheus.MustNewConstMetric(descNodeState, prometheus.GaugeValue, v, s.Name, n.Node, fam, st.String())
			}
			ch <- prometheus.MustNewConstMetric(descNodeWeight, prometheus.GaugeValue, float64(n.Weight), s.Name, n.Node, fam)
			if !counted {
				continue
			}
			bc := traffic.Backends[n.BackendID]
			ch <- prometheus.MustNewConstMetric(descNodePackets, prometheus.CounterValue, float64(bc.Packets), s.Name, n.Node, fam)
			ch <- prometheus.MustNewConstMetric(descNodeBytes, prometheus.CounterValue, float64(bc.Bytes), s.Name, n.Node, fam)
			ch <- prometheus.MustNewConstMetric(descNodeFlows, prometheus.CounterValue, float64(bc.NewFlows), s.Name, n.Node, fam)
		}
		if !counted {
			continue
		}
		sc := traffic.Services[s.ID]
		vip := s.VIP.String()
		ch <- prometheus.MustNewConstMetric(descSvcPackets, prometheus.CounterValue, float64(sc.Packets), s.Name, vip)
		ch <- prometheus.MustNewConstMetric(descSvcBytes, prometheus.CounterValue, float64(sc.Bytes), s.Name, vip)
		ch <- prometheus.MustNewConstMetric(descSvcFlows, prometheus.CounterValue, float64(sc.NewFlows), s.Name, vip)
	}
	if m == nil {
		return
	}
	if counted {
		for i, v := range traffic.Outcomes {
			ch <- prometheus.MustNewConstMetric(descOutcomes, prometheus.CounterValue, float64(v), maps.StatName(maps.Stat(i)))
		}
	}
	c.mu.Lock()
	if time.Since(c.ctAt) > 10*time.Second {
		n4, n6, err := m.CountFlows()
		if err != nil {
			c.log.Warn("metrics: count flows", "err", err)
		} else {
			c.ctCount = [2]int{n4, n6}
			c.ctAt = time.Now()
		}
	}
	counts := c.ctCount
	c.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descConntrack, prometheus.GaugeValue, float64(counts[0]), "4")
	ch <- prometheus.MustNewConstMetric(descConntrack, prometheus.GaugeValue, float64(counts[1]), "6")
}

// String helps debugging.
func (c *collector) String() string { return fmt.Sprintf("atoll collector (%T)", c.src) }
