package kvevents

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/proto"
)

// Metrics holds the kvroute_events_* collectors. One Metrics may serve a [Manager] and a
// NATS consumer at once; all methods are safe for concurrent use.
type Metrics struct {
	batches      *prometheus.CounterVec
	events       *prometheus.CounterVec
	gaps         *prometheus.CounterVec
	replays      *prometheus.CounterVec
	replayed     *prometheus.CounterVec
	resets       *prometheus.CounterVec
	decodeErrors *prometheus.CounterVec
	dropped      *prometheus.CounterVec
	reconnects   *prometheus.CounterVec
	lag          *prometheus.GaugeVec
	connected    *prometheus.GaugeVec
}

// NewMetrics builds the collectors and registers them with reg; a nil reg leaves them
// unregistered. Registering twice on the same registry returns collectors sharing the
// first registration, so a Manager and a NATS consumer can both be given the same reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	w := []string{"worker"}
	m := &Metrics{
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvroute_events_batches_total",
			Help: "KV event batches applied, per worker."}, w),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvroute_events_events_total",
			Help: "KV events applied, per worker and kind."}, []string{"worker", "kind"}),
		gaps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvroute_events_gaps_total",
			Help: "Sequence gaps detected, per worker."}, w),
		replays: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvroute_events_replays_total",
			Help: "Replay requests made to fill gaps, per worker and result (ok, partial, failed)."}, []string{"worker", "result"}),
		replayed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvroute_events_replayed_batches_total",
			Help: "Batches applied from replay, per worker."}, w),
		resets: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvroute_events_resets_total",
			Help: "Times a worker's index entries were cleared, per worker and reason."}, []string{"worker", "reason"}),
		decodeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvroute_events_decode_errors_total",
			Help: "Batches that could not be decoded, per worker."}, w),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvroute_events_dropped_messages_total",
			Help: "Messages from a worker's event or replay endpoint dropped, per worker and reason (oversize, malformed)."},
			[]string{"worker", "reason"}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvroute_events_reconnects_total",
			Help: "Connection attempts to a worker's event publisher after the first, per worker."}, w),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "kvroute_events_lag_seconds",
			Help: "Time from the engine's batch timestamp to its application, last batch, per worker."}, w),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "kvroute_events_connected",
			Help: "1 when the worker's event publisher is connected, else 0."}, w),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.batches, err = register(reg, m.batches)
	if err == nil {
		m.events, err = register(reg, m.events)
	}
	if err == nil {
		m.gaps, err = register(reg, m.gaps)
	}
	if err == nil {
		m.replays, err = register(reg, m.replays)
	}
	if err == nil {
		m.replayed, err = register(reg, m.replayed)
	}
	if err == nil {
		m.resets, err = register(reg, m.resets)
	}
	if err == nil {
		m.decodeErrors, err = register(reg, m.decodeErrors)
	}
	if err == nil {
		m.dropped, err = register(reg, m.dropped)
	}
	if err == nil {
		m.reconnects, err = register(reg, m.reconnects)
	}
	if err == nil {
		m.lag, err = register(reg, m.lag)
	}
	if err == nil {
		m.connected, err = register(reg, m.connected)
	}
	if err != nil {
		return nil, fmt.Errorf("register kv event metrics: %w", err)
	}
	return m, nil
}

// register registers c, or returns the collector already registered under its name.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(C); ok {
				return old, nil
			}
		}
		return c, err
	}
	return c, nil
}

// workerMetrics are one worker's children of the vectors, resolved once so the per-batch
// path does no label lookups.
type workerMetrics struct {
	m         *Metrics
	label     string
	batches   prometheus.Counter
	events    [4]prometheus.Counter // by proto.EventKind
	gaps      prometheus.Counter
	replayed  prometheus.Counter
	decodeErr prometheus.Counter
	lag       prometheus.Gauge
	connected prometheus.Gauge
}

func (m *Metrics) forWorker(k proto.WorkerKey) *workerMetrics {
	l := k.String()
	wm := &workerMetrics{
		m: m, label: l,
		batches:   m.batches.WithLabelValues(l),
		gaps:      m.gaps.WithLabelValues(l),
		replayed:  m.replayed.WithLabelValues(l),
		decodeErr: m.decodeErrors.WithLabelValues(l),
		lag:       m.lag.WithLabelValues(l),
		connected: m.connected.WithLabelValues(l),
	}
	for _, kind := range []proto.EventKind{proto.BlockStored, proto.BlockRemoved, proto.AllBlocksCleared} {
		wm.events[kind] = m.events.WithLabelValues(l, kind.String())
	}
	return wm
}

func (wm *workerMetrics) reset(reason string)  { wm.m.resets.WithLabelValues(wm.label, reason).Inc() }
func (wm *workerMetrics) replay(result string) { wm.m.replays.WithLabelValues(wm.label, result).Inc() }
func (wm *workerMetrics) reconnect()           { wm.m.reconnects.WithLabelValues(wm.label).Inc() }
func (wm *workerMetrics) drop(reason string)   { wm.m.dropped.WithLabelValues(wm.label, reason).Inc() }

// forget deletes the worker's series, so removed workers do not leave labels behind.
func (wm *workerMetrics) forget() {
	for _, v := range []*prometheus.CounterVec{wm.m.batches, wm.m.events, wm.m.gaps, wm.m.replays,
		wm.m.replayed, wm.m.resets, wm.m.decodeErrors, wm.m.dropped, wm.m.reconnects} {
		v.DeletePartialMatch(prometheus.Labels{"worker": wm.label})
	}
	wm.m.lag.DeletePartialMatch(prometheus.Labels{"worker": wm.label})
	wm.m.connected.DeletePartialMatch(prometheus.Labels{"worker": wm.label})
}
