package daemon_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/atoll-lb/atoll/deploy/lab"
)

// scrape fetches /metrics from inside the LB namespace and parses it with
// the Prometheus text parser.
func (e *env) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: e.lab.LB.DialContext}}
	resp, err := hc.Get("http://127.0.0.1:9742/metrics")
	must(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	must(t, err)
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	return mfs
}

// value sums the samples of a family whose labels include want.
func value(mfs map[string]*dto.MetricFamily, name string, want map[string]string) (float64, int) {
	mf, ok := mfs[name]
	if !ok {
		return 0, 0
	}
	var sum float64
	n := 0
next:
	for _, m := range mf.GetMetric() {
		for k, v := range want {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
		n++
	}
	return sum, n
}

// TestE2EMetrics: the counters for a known number of connections match.
func TestE2EMetrics(t *testing.T) {
	e := newEnv(t, 2, 2)
	before := e.scrape(t)
	const conns = 25
	got := e.sessions(lab.VIP4, conns)
	after := e.scrape(t)
	delta := func(name string, labels map[string]string) float64 {
		a, n := value(after, name, labels)
		if n == 0 {
			t.Fatalf("no %s%v in /metrics", name, labels)
		}
		b, _ := value(before, name, labels)
		return a - b
	}
	vip := fmt.Sprintf("%v:143", lab.VIP4)
	if d := delta("atoll_service_new_flows_total", map[string]string{"service": "imap-a", "vip": vip}); d != conns {
		t.Fatalf("atoll_service_new_flows_total moved by %v, want %d", d, conns)
	}
	if d := delta("atoll_node_new_flows_total", map[string]string{"service": "imap-a", "family": "4"}); d != conns {
		t.Fatalf("atoll_node_new_flows_total (sum over nodes) moved by %v, want %d", d, conns)
	}
	for node, n := range got {
		if d := delta("atoll_node_new_flows_total", map[string]string{"service": "imap-a", "family": "4", "node": node}); d != float64(n) {
			t.Fatalf("node %s: %v new flows counted, %d sessions seen", node, d, n)
		}
	}
	if d := delta("atoll_packets_total", map[string]string{"outcome": "fwd_new"}); d < conns {
		t.Fatalf("atoll_packets_total{outcome=fwd_new} moved by %v, want >= %d", d, conns)
	}
	if d := delta("atoll_service_packets_total", map[string]string{"service": "imap-a", "vip": vip}); d < 3*conns {
		t.Fatalf("atoll_service_packets_total moved by %v, want >= %d (SYN, ACK, LOGOUT at least)", d, 3*conns)
	}
	if v, _ := value(after, "atoll_node_state", map[string]string{"service": "imap-a", "state": "up"}); v != 4 {
		t.Fatalf("atoll_node_state{service=imap-a,state=up} sums to %v, want 4 (2 nodes × 2 VIPs)", v)
	}
	if _, n := value(after, "atoll_health_check_duration_seconds", map[string]string{"service": "imap-a"}); n == 0 {
		t.Fatal("no health check latency histogram")
	}
	if v, _ := value(after, "atoll_reconciles_total", map[string]string{"result": "ok"}); v < 1 {
		t.Fatal("no reconcile counted")
	}
	if v, n := value(after, "atoll_conntrack_entries", map[string]string{"family": "4"}); n == 0 || v < 0 {
		t.Fatal("no conntrack gauge")
	}
}
