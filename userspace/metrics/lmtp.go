package metrics

import "github.com/prometheus/client_golang/prometheus"

// lmtpMetrics are the LMTP router's (proxy/lmtp's Observer).
type lmtpMetrics struct {
	deliveries *prometheus.CounterVec
	recipients prometheus.Histogram
	bytes      prometheus.Counter
}

func newLMTPMetrics(reg *prometheus.Registry) *lmtpMetrics {
	l := &lmtpMetrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "atoll_proxy_lmtp_deliveries_total",
			Help: "Recipients of messages the LMTP router passed on, by island and result (delivered, deferred, rejected: the node's 2xx, 4xx, 5xx; node_failed: no node of the island took it; too_big; local_error).",
		}, []string{"island", "result"}),
		recipients: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "atoll_proxy_lmtp_transaction_recipients",
			Help:    "Accepted recipients per LMTP transaction (at the end of DATA).",
			Buckets: []float64{1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000},
		}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "atoll_proxy_lmtp_message_bytes_total",
			Help: "Bytes of messages the LMTP router received from MTAs (as sent, dot-stuffing removed), counted once however many islands they went to.",
		}),
	}
	reg.MustRegister(l.deliveries, l.recipients, l.bytes)
	return l
}

// Delivery counts one recipient's outcome on island (lmtp.Observer).
func (m *Metrics) Delivery(island, result string) {
	m.proxy.lmtp.deliveries.WithLabelValues(island, result).Inc()
}

// Recipients records the accepted recipients of one LMTP transaction
// (lmtp.Observer).
func (m *Metrics) Recipients(n int) { m.proxy.lmtp.recipients.Observe(float64(n)) }

// Bytes counts the size of one message received by the LMTP router
// (lmtp.Observer).
func (m *Metrics) Bytes(n int64) { m.proxy.lmtp.bytes.Add(float64(n)) }
