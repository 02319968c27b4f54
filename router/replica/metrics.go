package replica

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a message or record is dropped (label "reason" of
// kvroute_replica_dropped_total).
const (
	dropPublish   = "publish_error"  // NATS refused a publish (outage with a full reconnect buffer)
	dropBuffer    = "buffer_full"    // a prediction did not fit the pending buffer
	dropDecode    = "decode_error"   // a received message was malformed
	dropStale     = "stale"          // a received message older than one already applied
	dropPeers     = "too_many_peers" // a new peer beyond MaxPeers
	dropUnknown   = "unknown_worker" // a record about a worker this router does not route to
	dropDuplicate = "duplicate_id"   // another live replica uses this replica's id
)

type metrics struct {
	sent, received, predSent, predRecv prometheus.Counter
	dropped                            *prometheus.CounterVec
	dropPublish, dropBuffer            prometheus.Counter
	peers                              prometheus.Gauge
	expired                            prometheus.Counter
	lag                                prometheus.Histogram
	warm                               *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, s *Sync) (*metrics, error) {
	m := &metrics{
		sent: prometheus.NewCounter(prometheus.CounterOpts{Name: "kvroute_replica_messages_sent_total",
			Help: "State messages this replica published."}),
		received: prometheus.NewCounter(prometheus.CounterOpts{Name: "kvroute_replica_messages_received_total",
			Help: "State messages applied from other replicas."}),
		predSent: prometheus.NewCounter(prometheus.CounterOpts{Name: "kvroute_replica_predictions_sent_total",
			Help: "Routing decisions (predicted blocks) published to other replicas."}),
		predRecv: prometheus.NewCounter(prometheus.CounterOpts{Name: "kvroute_replica_predictions_received_total",
			Help: "Other replicas' routing decisions applied to this replica's index."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvroute_replica_dropped_total",
			Help: "Messages or records dropped, by reason."}, []string{"reason"}),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kvroute_replica_peers",
			Help: "Other replicas currently heard from (not expired)."}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{Name: "kvroute_replica_peers_expired_total",
			Help: "Peers dropped after missing heartbeats; their load stops counting."}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kvroute_replica_sync_lag_seconds",
			Help:    "Time from a peer's publish to this replica applying it (across hosts it includes clock skew).",
			Buckets: []float64{0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1}}),
		warm: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvroute_replica_warm_starts_total",
			Help: "Starts by outcome: restored (a peer's index dump), cold (no peer answered or the dump failed)."},
			[]string{"outcome"}),
	}
	for _, r := range []string{dropPublish, dropBuffer, dropDecode, dropStale, dropPeers, dropUnknown, dropDuplicate} {
		m.dropped.WithLabelValues(r)
	}
	m.dropPublish, m.dropBuffer = m.dropped.WithLabelValues(dropPublish), m.dropped.WithLabelValues(dropBuffer)
	if reg == nil {
		return m, nil
	}
	cs := []prometheus.Collector{m.sent, m.received, m.predSent, m.predRecv, m.dropped, m.peers, m.expired, m.lag, m.warm}
	for _, name := range []string{"in_flight", "prefill_tokens", "active_blocks"} {
		cs = append(cs, remoteCollector{s: s, name: name, desc: prometheus.NewDesc("kvroute_replica_remote_"+name,
			"The worker's "+name+" as other replicas reported it (the sum over live peers).", []string{"worker"}, nil)})
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("replica metrics: %w", err)
		}
	}
	return m, nil
}

// remoteCollector exports one of the remote load counters per worker, read at scrape.
type remoteCollector struct {
	s    *Sync
	name string
	desc *prometheus.Desc
}

func (c remoteCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c remoteCollector) Collect(ch chan<- prometheus.Metric) {
	for id := range *c.s.remote.Load() {
		l := c.s.Remote(id)
		v := l.InFlight
		switch c.name {
		case "prefill_tokens":
			v = l.PrefillTokens
		case "active_blocks":
			v = l.Blocks
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(v), id)
	}
}
