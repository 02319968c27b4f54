package blockhash

import (
	"context"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds the kvroute_tokenize_* collectors. One Metrics may serve an [Engine] and
// a [Fallback] at once. A nil *Metrics records nothing. All methods are safe for
// concurrent use.
type Metrics struct {
	calls     prometheus.Counter
	hits      prometheus.Counter
	shared    prometheus.Counter
	errors    *prometheus.CounterVec
	fallbacks *prometheus.CounterVec
	duration  prometheus.Histogram
	entries   prometheus.Gauge
}

// Error reasons, the values of the reason label.
const (
	reasonInput    = "input"     // the request could not be read
	reasonNoWorker = "no_worker" // Pick found no worker
	reasonCooldown = "cooldown"  // the worker failed recently
	reasonTimeout  = "timeout"   // the call took longer than the timeout
	reasonCanceled = "canceled"  // the caller gave up while waiting
	reasonNetwork  = "transport" // connection refused, reset, ...
	reasonEngine   = "engine"    // error status or unreadable answer
	reasonOther    = "other"
)

// NewMetrics builds the collectors and registers them with reg; a nil reg leaves them
// unregistered. Registering on a registry that already holds them reuses the registered
// collectors.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		calls: prometheus.NewCounter(prometheus.CounterOpts{Name: "kvroute_tokenize_calls_total",
			Help: "POST /tokenize calls made to workers by the engine tokenization mode."}),
		hits: prometheus.NewCounter(prometheus.CounterOpts{Name: "kvroute_tokenize_cache_hits_total",
			Help: "Requests answered from the engine mode's cache, without a call."}),
		shared: prometheus.NewCounter(prometheus.CounterOpts{Name: "kvroute_tokenize_shared_total",
			Help: "Requests that waited for an identical request's call instead of making one."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvroute_tokenize_errors_total",
			Help: "Tokenization failures, per reason (input, no_worker, cooldown, timeout, canceled, transport, engine, other)."},
			[]string{"reason"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvroute_tokenize_fallbacks_total",
			Help: "Requests hashed in approx mode because the configured mode failed, per reason."},
			[]string{"reason"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kvroute_tokenize_call_duration_seconds",
			Help:    "Duration of POST /tokenize calls, failed ones included.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .2, .3, .5, 1}}),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kvroute_tokenize_cache_entries",
			Help: "Requests held in the engine mode's cache."}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.calls, err = register(reg, m.calls, nil)
	m.hits, err = register(reg, m.hits, err)
	m.shared, err = register(reg, m.shared, err)
	m.errors, err = register(reg, m.errors, err)
	m.fallbacks, err = register(reg, m.fallbacks, err)
	m.duration, err = register(reg, m.duration, err)
	m.entries, err = register(reg, m.entries, err)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c unless an earlier registration failed (prev != nil), returning
// the already registered collector when reg holds an equal one.
func register[C prometheus.Collector](reg prometheus.Registerer, c C, prev error) (C, error) {
	if prev != nil {
		return c, prev
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(C); ok {
				return old, nil
			}
		}
		return c, fmt.Errorf("register tokenize metrics: %w", err)
	}
	return c, nil
}

// reasonOf classifies an error from Hash for the reason label.
func reasonOf(err error) string {
	switch {
	case errors.Is(err, ErrBadInput):
		return reasonInput
	case errors.Is(err, ErrNoWorker):
		return reasonNoWorker
	case errors.Is(err, ErrCooldown):
		return reasonCooldown
	case errors.Is(err, context.DeadlineExceeded):
		return reasonTimeout
	case errors.Is(err, context.Canceled):
		return reasonCanceled
	case errors.Is(err, ErrEngine):
		return reasonEngine
	case errors.Is(err, errTransport):
		return reasonNetwork
	}
	return reasonOther
}

func (m *Metrics) call() {
	if m != nil {
		m.calls.Inc()
	}
}

func (m *Metrics) hit() {
	if m != nil {
		m.hits.Inc()
	}
}

func (m *Metrics) join() {
	if m != nil {
		m.shared.Inc()
	}
}

func (m *Metrics) fail(err error) {
	if m != nil {
		m.errors.WithLabelValues(reasonOf(err)).Inc()
	}
}

func (m *Metrics) fallback(err error) {
	if m != nil {
		m.fallbacks.WithLabelValues(reasonOf(err)).Inc()
	}
}

func (m *Metrics) observe(seconds float64) {
	if m != nil {
		m.duration.Observe(seconds)
	}
}

func (m *Metrics) setEntries(n int) {
	if m != nil {
		m.entries.Set(float64(n))
	}
}
