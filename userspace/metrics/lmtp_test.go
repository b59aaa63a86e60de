package metrics_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/atoll-lb/atoll/maps"
	"github.com/atoll-lb/atoll/userspace/control"
	"github.com/atoll-lb/atoll/userspace/metrics"
	"github.com/atoll-lb/atoll/userspace/proxy"
	"github.com/atoll-lb/atoll/userspace/proxy/lmtp"
)

// noSource is a daemon without data plane and without services.
type noSource struct{}

func (noSource) Maps() *maps.Maps               { return nil }
func (noSource) Status() []control.ServiceState { return nil }

// The daemon hands *Metrics to the proxy core as its proxy.Observer; the
// LMTP handler finds its own hooks by asserting lmtp.Observer on it.
var (
	_ proxy.Observer = (*metrics.Metrics)(nil)
	_ lmtp.Observer  = (*metrics.Metrics)(nil)
)

// TestLMTPMetrics: deliveries by island and result, recipients per
// transaction and message bytes are exported under their names, with
// their help texts and types, and pass the Prometheus linter; the LMTP
// handler sees them through the core.
func TestLMTPMetrics(t *testing.T) {
	m := metrics.New(noSource{}, "test", slog.New(slog.DiscardHandler))
	core := proxy.NewCore(proxy.Options{Observer: m})
	obs, ok := core.Observer().(lmtp.Observer)
	if !ok {
		t.Fatal("the core's observer does not implement lmtp.Observer: the LMTP router would count nothing")
	}
	// A transaction of three recipients on two islands, one of 1 that
	// island b's nodes could not take, and one too big.
	obs.Recipients(3)
	obs.Bytes(1000)
	obs.Delivery("a", lmtp.ResultDelivered)
	obs.Delivery("a", lmtp.ResultDelivered)
	obs.Delivery("b", lmtp.ResultDelivered)
	obs.Recipients(1)
	obs.Bytes(250)
	obs.Delivery("b", lmtp.ResultNodeFailed)
	obs.Recipients(1)
	obs.Bytes(60 << 20)
	obs.Delivery("a", lmtp.ResultTooBig)

	want := `
# HELP atoll_proxy_lmtp_deliveries_total Recipients of messages the LMTP router passed on, by island and result (delivered, deferred, rejected: the node's 2xx, 4xx, 5xx; node_failed: no node of the island took it; too_big; local_error).
# TYPE atoll_proxy_lmtp_deliveries_total counter
atoll_proxy_lmtp_deliveries_total{island="a",result="delivered"} 2
atoll_proxy_lmtp_deliveries_total{island="a",result="too_big"} 1
atoll_proxy_lmtp_deliveries_total{island="b",result="delivered"} 1
atoll_proxy_lmtp_deliveries_total{island="b",result="node_failed"} 1
# HELP atoll_proxy_lmtp_message_bytes_total Bytes of messages the LMTP router received from MTAs (as sent, dot-stuffing removed), counted once however many islands they went to.
# TYPE atoll_proxy_lmtp_message_bytes_total counter
atoll_proxy_lmtp_message_bytes_total 6.2915810e+07
# HELP atoll_proxy_lmtp_transaction_recipients Accepted recipients per LMTP transaction (at the end of DATA).
# TYPE atoll_proxy_lmtp_transaction_recipients histogram
atoll_proxy_lmtp_transaction_recipients_bucket{le="1"} 2
atoll_proxy_lmtp_transaction_recipients_bucket{le="2"} 2
atoll_proxy_lmtp_transaction_recipients_bucket{le="3"} 3
atoll_proxy_lmtp_transaction_recipients_bucket{le="5"} 3
atoll_proxy_lmtp_transaction_recipients_bucket{le="10"} 3
atoll_proxy_lmtp_transaction_recipients_bucket{le="20"} 3
atoll_proxy_lmtp_transaction_recipients_bucket{le="50"} 3
atoll_proxy_lmtp_transaction_recipients_bucket{le="100"} 3
atoll_proxy_lmtp_transaction_recipients_bucket{le="200"} 3
atoll_proxy_lmtp_transaction_recipients_bucket{le="500"} 3
atoll_proxy_lmtp_transaction_recipients_bucket{le="1000"} 3
atoll_proxy_lmtp_transaction_recipients_bucket{le="+Inf"} 3
atoll_proxy_lmtp_transaction_recipients_sum 5
atoll_proxy_lmtp_transaction_recipients_count 3
`
	if err := testutil.GatherAndCompare(m.Registry, strings.NewReader(want),
		"atoll_proxy_lmtp_deliveries_total", "atoll_proxy_lmtp_message_bytes_total", "atoll_proxy_lmtp_transaction_recipients"); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(m.Registry, "atoll_proxy_lmtp_deliveries_total", "atoll_proxy_lmtp_message_bytes_total", "atoll_proxy_lmtp_transaction_recipients")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}
