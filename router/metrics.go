package router

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/upstream"
)

// metrics are the router's Prometheus series. Labels are bounded: worker ids and model
// names come from the config or the workers' /v1/models, never from request bodies
// (a request for an unknown model is counted with model="").
type metrics struct {
	requests *prometheus.CounterVec   // worker, model, status
	duration *prometheus.HistogramVec // model
	ttfb     *prometheus.HistogramVec // model
	upErrors *prometheus.CounterVec   // worker, kind
	retries  *prometheus.CounterVec   // model
	// retriesSkipped counts retries not made because the client had disconnected.
	retriesSkipped *prometheus.CounterVec // model
	decisions      prometheus.Histogram

	overlapRatio  *prometheus.HistogramVec // model
	promptTokens  *prometheus.CounterVec   // model
	predictedHit  *prometheus.CounterVec   // model
	blockMismatch *prometheus.GaugeVec     // worker
}

// latencyBuckets span 1 ms to ~10 min: LLM requests range from cached embeddings to long
// generations.
var latencyBuckets = prometheus.ExponentialBuckets(0.001, 2.5, 15)

func newMetrics(reg prometheus.Registerer, pool *upstream.Pool) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_router_requests_total",
			Help: "Requests answered, by worker (\"\" when none was reached), model and HTTP status.",
		}, []string{"worker", "model", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kvroute_router_request_duration_seconds", Buckets: latencyBuckets,
			Help: "Time from a request's arrival to the end of its response.",
		}, []string{"model"}),
		ttfb: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kvroute_router_time_to_first_byte_seconds", Buckets: latencyBuckets,
			Help: "Time from a request's arrival to the first response body byte sent to the client through the proxy.",
		}, []string{"model"}),
		upErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_router_upstream_errors_total",
			Help: "Failed attempts on a worker by kind: connect, tls, timeout, status_5xx, status_429, io.",
		}, []string{"worker", "kind"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_router_retries_total",
			Help: "Requests sent to another worker after a failed attempt.",
		}, []string{"model"}),
		retriesSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_router_retries_skipped_total",
			Help: "Retries not made because the client had disconnected (counted as status 499 in requests_total).",
		}, []string{"model"}),
		decisions: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kvroute_router_decision_duration_seconds",
			Help:    "Time to choose a worker for one attempt.",
			Buckets: prometheus.ExponentialBuckets(1e-7, 3, 12),
		}),
		overlapRatio: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kvroute_router_overlap_ratio",
			Help:    "Share of a routed request's prompt blocks the chosen worker was believed to hold.",
			Buckets: []float64{0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1},
		}, []string{"model"}),
		promptTokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_router_prompt_tokens_total",
			Help: "Prompt tokens of routed requests (exact, or estimated in approx mode).",
		}, []string{"model"}),
		predictedHit: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_router_predicted_hit_tokens_total",
			Help: "Prompt tokens the router expected the chosen worker to have cached.",
		}, []string{"model"}),
		blockMismatch: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvroute_router_block_size_mismatch",
			Help: "1 when the worker's KV block size differs from the one the router hashes its models with: its prefixes never match.",
		}, []string{"worker"}),
	}
	cs := []prometheus.Collector{m.requests, m.duration, m.ttfb, m.upErrors, m.retries, m.retriesSkipped, m.decisions,
		m.overlapRatio, m.promptTokens, m.predictedHit, m.blockMismatch}
	if reg == nil {
		return m, nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register router metrics: %w", err)
		}
	}
	// In-flight is read from the workers' counters at scrape time, so the request path
	// pays nothing for it.
	for _, w := range pool.Workers() {
		g := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "kvroute_router_inflight_requests",
			Help:        "Requests this router has in flight on each worker.",
			ConstLabels: prometheus.Labels{"worker": w.ID},
		}, func() float64 { return float64(w.InFlight()) })
		if err := reg.Register(g); err != nil {
			return nil, fmt.Errorf("register router metrics: %w", err)
		}
	}
	return m, nil
}
