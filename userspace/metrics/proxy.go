package metrics

import (
	"errors"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/atoll-lb/atoll/userspace/directory"
	"github.com/atoll-lb/atoll/userspace/proxy"
)

// proxyMetrics are the login proxy's, the LMTP router's and the
// directory's metrics.
type proxyMetrics struct {
	logins    *prometheus.CounterVec
	sessions  *prometheus.GaugeVec
	bytes     *prometheus.CounterVec
	dialFails *prometheus.CounterVec
	throttled prometheus.Counter
	lookupDur *prometheus.HistogramVec
	cache     *prometheus.CounterVec
	lmtp      *lmtpMetrics
}

func newProxyMetrics(reg *prometheus.Registry) *proxyMetrics {
	p := &proxyMetrics{
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atoll_proxy_logins_total",
			Help: "Logins through the proxy, by protocol and result (ok, failed, unknown_user, bad_name, unavailable, no_node, error).",
		}, []string{"protocol", "result"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "atoll_proxy_sessions",
			Help: "Client connections open on the proxy, by protocol.",
		}, []string{"protocol"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atoll_proxy_relayed_bytes_total",
			Help: "Bytes relayed after login, by protocol and direction (up: client to node).",
		}, []string{"protocol", "direction"}),
		dialFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atoll_proxy_node_dial_failures_total",
			Help: "Failed connections from the proxy to a node.",
		}, []string{"node"}),
		throttled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "atoll_proxy_throttled_logins_total",
			Help: "Failed logins answered after a delay (password guessing from one address).",
		}),
		lookupDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "atoll_directory_lookup_duration_seconds",
			Help:    "Directory lookups by result (found, unknown, unavailable), cache included.",
			Buckets: []float64{.00001, .0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"result"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atoll_directory_cache_total",
			Help: "Directory cache outcomes: hit, miss, negative_hit, stale (served while LDAP is down).",
		}, []string{"result"}),
	}
	parked := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "atoll_proxy_parked_directions",
		Help: "Relay directions parked without a goroutine (idle for proxy.ParkAfter; an idle session parks two).",
	}, func() float64 { return float64(proxy.Parked()) })
	reg.MustRegister(p.logins, p.sessions, p.bytes, p.dialFails, p.throttled, p.lookupDur, p.cache, parked)
	p.lmtp = newLMTPMetrics(reg)
	return p
}

// Login counts a login outcome (proxy.Observer).
func (m *Metrics) Login(protocol, result string) {
	m.proxy.logins.WithLabelValues(protocol, result).Inc()
}

// Lookup records a directory lookup (proxy.Observer).
func (m *Metrics) Lookup(d time.Duration, _ directory.Result, err error) {
	result := "found"
	switch {
	case errors.Is(err, directory.ErrUnknownUser):
		result = "unknown"
	case err != nil:
		result = "unavailable"
	}
	m.proxy.lookupDur.WithLabelValues(result).Observe(d.Seconds())
}

// Session tracks open proxy connections (proxy.Observer).
func (m *Metrics) Session(protocol string, delta int) {
	m.proxy.sessions.WithLabelValues(protocol).Add(float64(delta))
}

// Relayed counts relayed bytes (proxy.Observer).
func (m *Metrics) Relayed(protocol string, up, down int64) {
	m.proxy.bytes.WithLabelValues(protocol, "up").Add(float64(up))
	m.proxy.bytes.WithLabelValues(protocol, "down").Add(float64(down))
}

// DialFailed counts a failed connection to a node (proxy.Observer).
func (m *Metrics) DialFailed(node string) { m.proxy.dialFails.WithLabelValues(node).Inc() }

// Throttled counts a delayed failed login (proxy.Observer).
func (m *Metrics) Throttled(netip.Addr) { m.proxy.throttled.Inc() }

// CacheResult counts a directory cache outcome (directory.Observer).
func (m *Metrics) CacheResult(result string) { m.proxy.cache.WithLabelValues(result).Inc() }
