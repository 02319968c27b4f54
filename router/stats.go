package router

import (
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/router/admin"
	"github.com/kvroute/kvroute/upstream"
)

// Windowed request statistics for the admin API and dashboard (router/admin).
//
// Every figure is what this router itself saw; none is read from the workers. In
// particular the hit rate is the router's *predicted* hit rate: the prompt tokens of the
// routed requests that the prefix index said the chosen worker already held, over all
// their prompt tokens. Beside it, for the answers that say how many prompt tokens the
// engine found cached (usage.prompt_tokens_details.cached_tokens: non-streamed answers
// and streams with usage), the reported figures: predicted and reported cached tokens
// of the same requests (truth.go).
//
// Figures are kept per second in a ring of [statsRingSeconds] buckets, globally, per
// model and per worker, and summed over 1, 5 and 15 minute windows when read.

// statsRingSeconds is the longest window, in one-second buckets.
const statsRingSeconds = 900

// statsWindows are the windows [Server.Traffic] reports.
var statsWindows = []struct {
	name string
	secs int64
}{{"1m", 60}, {"5m", 300}, {"15m", 900}}

// ttftBins is the number of TTFT histogram bins: bin 0 holds times under 1 ms, bin i
// times in [ttftBound(i-1), ttftBound(i)) with bounds growing by 1.4x, the last bin
// everything from about 8 minutes up. A percentile read from it is within one bin
// (±20%) of the exact value.
const ttftBins = 40

// ttftBound returns the upper bound of TTFT bin i, in milliseconds.
func ttftBound(i int) float64 { return math.Pow(1.4, float64(i)) }

func ttftBin(ms float64) int {
	if ms < 1 {
		return 0
	}
	return min(ttftBins-1, 1+int(math.Log(ms)/math.Log(1.4)))
}

// statBucket is one second of one series.
type statBucket struct {
	sec       int64 // Unix second the bucket holds; a bucket of another second is stale
	finished  uint32
	errors    uint32
	routed    uint32
	decisions uint32
	prompt    uint64
	hit       uint64
	rep       reportedSums
	ttftN     uint32
	ttft      [ttftBins]uint32
}

// statSeries is one ring of per-second buckets plus totals since start.
type statSeries struct {
	ring                     [statsRingSeconds]statBucket
	totalRouted, totalErrors uint64
	totalPrompt, totalHit    uint64
	totalRep                 reportedSums
}

// reportedSums are the sums behind admin.ReportedFigures.
type reportedSums struct{ answers, prompt, predicted, cached uint64 }

func (r *reportedSums) add(o reportedSums) {
	r.answers += o.answers
	r.prompt += o.prompt
	r.predicted += o.predicted
	r.cached += o.cached
}

func (r reportedSums) figures() admin.ReportedFigures {
	return admin.ReportedFigures{Answers: r.answers, PromptTokens: r.prompt, PredictedTokens: r.predicted, CachedTokens: r.cached,
		PredictedRate: ratio(r.predicted, r.prompt), ReportedRate: ratio(r.cached, r.prompt)}
}

// bucket returns the bucket of second sec, reset if it held an older second.
func (s *statSeries) bucket(sec int64) *statBucket {
	b := &s.ring[slot(sec)]
	if b.sec != sec {
		*b = statBucket{sec: sec}
	}
	return b
}

// slot is the ring index of second sec (also for a clock before 1970).
func slot(sec int64) int64 { return (sec%statsRingSeconds + statsRingSeconds) % statsRingSeconds }

// trafficStats holds the windowed figures. Each record takes one mutex for a few
// additions; the request path calls it four times per request.
type trafficStats struct {
	start time.Time
	// mu guards the series.
	mu      sync.Mutex
	global  statSeries
	models  map[string]*statSeries
	workers map[string]*statSeries
}

func newTrafficStats(start time.Time) *trafficStats {
	return &trafficStats{start: start, models: map[string]*statSeries{}, workers: map[string]*statSeries{}}
}

// seriesLocked returns the series of key in m, created on first use. mu must be held.
// Keys are bounded: model names the pool knows and the pool's worker ids (a worker that
// leaves is forgotten).
func seriesLocked(m map[string]*statSeries, key string) *statSeries {
	s := m[key]
	if s == nil {
		s = new(statSeries)
		m[key] = s
	}
	return s
}

// forget drops a gone worker's series.
func (t *trafficStats) forget(worker string) {
	t.mu.Lock()
	delete(t.workers, worker)
	t.mu.Unlock()
}

// routed records a request committed to worker: its prompt tokens and the prompt tokens
// the index predicted the worker held.
func (t *trafficStats) routed(worker, model string, prompt, hit int, now time.Time) {
	sec := now.Unix()
	t.mu.Lock()
	for _, s := range [3]*statSeries{&t.global, seriesLocked(t.models, model), seriesLocked(t.workers, worker)} {
		b := s.bucket(sec)
		b.routed++
		b.prompt += uint64(max(prompt, 0))
		b.hit += uint64(max(hit, 0))
		s.totalRouted++
		s.totalPrompt += uint64(max(prompt, 0))
		s.totalHit += uint64(max(hit, 0))
	}
	t.mu.Unlock()
}

// reported records an answer whose worker reported its cached prompt tokens, beside the
// cached tokens the router predicted for it.
func (t *trafficStats) reported(worker, model string, predicted int, u ReportedUsage, now time.Time) {
	r := reportedSums{answers: 1, prompt: uint64(u.PromptTokens), predicted: uint64(max(predicted, 0)), cached: uint64(u.CachedTokens)}
	sec := now.Unix()
	t.mu.Lock()
	for _, s := range [3]*statSeries{&t.global, seriesLocked(t.models, model), seriesLocked(t.workers, worker)} {
		s.bucket(sec).rep.add(r)
		s.totalRep.add(r)
	}
	t.mu.Unlock()
}

// ttft records a request's time to first byte through the router.
func (t *trafficStats) ttft(worker, model string, d time.Duration, now time.Time) {
	sec, bin := now.Unix(), ttftBin(float64(d)/float64(time.Millisecond))
	t.mu.Lock()
	for _, s := range [3]*statSeries{&t.global, seriesLocked(t.models, model), seriesLocked(t.workers, worker)} {
		b := s.bucket(sec)
		b.ttftN++
		b.ttft[bin]++
	}
	t.mu.Unlock()
}

// decision records one routing decision (one per attempt).
func (t *trafficStats) decision(now time.Time) {
	t.mu.Lock()
	t.global.bucket(now.Unix()).decisions++
	t.mu.Unlock()
}

// finished records a request's end; status >= 500 (and 499, the client went away
// mid-response, which counts as an error too) counts as an error. Requests rejected
// before routing (4xx) count as finished, not as errors.
func (t *trafficStats) finished(worker, model string, status int, now time.Time) {
	isErr := status >= 500 || status == statusClientClosed
	sec := now.Unix()
	t.mu.Lock()
	ss := [3]*statSeries{&t.global, nil, nil}
	if model != "" {
		ss[1] = seriesLocked(t.models, model)
	}
	if worker != "" {
		ss[2] = seriesLocked(t.workers, worker)
	}
	for _, s := range ss {
		if s == nil {
			continue
		}
		b := s.bucket(sec)
		b.finished++
		if isErr {
			b.errors++
			s.totalErrors++
		}
	}
	t.mu.Unlock()
}

// SeriesSeconds is how many seconds of per-second points the snapshots carry.
const SeriesSeconds = 300

// The admin API reads the traffic figures straight from the Server.
var _ admin.TrafficSource = (*Server)(nil)

// Traffic returns the router's windowed request statistics as of now. Safe for
// concurrent use; the result is the caller's.
func (s *Server) Traffic() admin.TrafficStats { return s.traffic.snapshot(time.Now()) }

// WorkerTraffic returns worker id's share of the traffic as of now, with its per-second
// series when series is true.
func (s *Server) WorkerTraffic(id string, series bool) admin.WorkerTraffic {
	wt := s.traffic.worker(id, series, time.Now())
	wt.PredictionDrift = s.truth.drifting(id)
	return wt
}

func (t *trafficStats) snapshot(now time.Time) admin.TrafficStats {
	out := admin.TrafficStats{Start: t.start}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, w := range statsWindows {
		tw := admin.TrafficWindow{Name: w.name, Seconds: w.secs, Elapsed: t.elapsed(w.secs, now), Models: map[string]admin.TrafficFigures{}}
		tw.Global = t.global.figures(now.Unix(), w.secs, tw.Elapsed)
		for m, s := range t.models {
			tw.Models[m] = s.figures(now.Unix(), w.secs, tw.Elapsed)
		}
		out.Windows = append(out.Windows, tw)
	}
	out.Series = t.global.points(now.Unix(), SeriesSeconds)
	return out
}

func (t *trafficStats) worker(id string, series bool, now time.Time) admin.WorkerTraffic {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.workers[id]
	if s == nil {
		s = new(statSeries) // zero figures, not stored
	}
	wt := admin.WorkerTraffic{
		Routed: s.totalRouted, Errors: s.totalErrors, PromptTokens: s.totalPrompt, PredictedHitTokens: s.totalHit,
		HitRate:  ratio(s.totalHit, s.totalPrompt),
		Reported: s.totalRep.figures(),
		Window5m: s.figures(now.Unix(), 300, t.elapsed(300, now)),
	}
	if series {
		wt.Series = s.points(now.Unix(), SeriesSeconds)
	}
	return wt
}

// elapsed is how much of a window of secs seconds ending now the stats cover, at least
// one second. mu must be held (start is immutable, but keeps the contract simple).
func (t *trafficStats) elapsed(secs int64, now time.Time) float64 {
	return max(1, min(float64(secs), now.Sub(t.start).Seconds()))
}

// figures sums the buckets of the secs seconds ending at now. The caller holds mu.
func (s *statSeries) figures(now, secs int64, elapsed float64) admin.TrafficFigures {
	var f admin.TrafficFigures
	var hist [ttftBins]uint64
	var rep reportedSums
	for i := range s.ring {
		b := &s.ring[i]
		if b.sec <= now-secs || b.sec > now {
			continue
		}
		f.Finished += uint64(b.finished)
		f.Errors += uint64(b.errors)
		f.Routed += uint64(b.routed)
		f.Decisions += uint64(b.decisions)
		f.PromptTokens += b.prompt
		f.PredictedHitTokens += b.hit
		rep.add(b.rep)
		f.TTFT.Count += uint64(b.ttftN)
		for k, n := range b.ttft {
			hist[k] += uint64(n)
		}
	}
	f.HitRate = ratio(f.PredictedHitTokens, f.PromptTokens)
	f.Reported = rep.figures()
	f.RequestsPerSecond = float64(f.Finished) / elapsed
	f.DecisionsPerSecond = float64(f.Decisions) / elapsed
	f.TTFT.P50 = percentile(&hist, f.TTFT.Count, 0.50)
	f.TTFT.P90 = percentile(&hist, f.TTFT.Count, 0.90)
	f.TTFT.P99 = percentile(&hist, f.TTFT.Count, 0.99)
	return f
}

// points returns one point per second for the n seconds ending at now, oldest first.
func (s *statSeries) points(now int64, n int) []admin.TrafficPoint {
	out := make([]admin.TrafficPoint, n)
	for i := range out {
		sec := now - int64(n-1-i)
		p := admin.TrafficPoint{T: sec}
		if sec > now-statsRingSeconds {
			if b := &s.ring[slot(sec)]; b.sec == sec {
				p.Finished, p.Routed, p.Decisions = b.finished, b.routed, b.decisions
				p.PromptTokens, p.PredictedHitTokens, p.TTFTCount = b.prompt, b.hit, b.ttftN
				p.ReportedPromptTokens, p.ReportedPredictedTokens, p.ReportedCachedTokens = b.rep.prompt, b.rep.predicted, b.rep.cached
				var hist [ttftBins]uint64
				for k, c := range b.ttft {
					hist[k] = uint64(c)
				}
				p.TTFTP50 = percentile(&hist, uint64(b.ttftN), 0.50)
				p.TTFTP95 = percentile(&hist, uint64(b.ttftN), 0.95)
			}
		}
		out[i] = p
	}
	return out
}

func ratio(a, b uint64) *float64 {
	if b == 0 {
		return nil
	}
	r := float64(a) / float64(b)
	return &r
}

// percentile estimates quantile q of the n samples in hist, in milliseconds,
// interpolating linearly inside the bin it falls in; nil when n is 0.
func percentile(hist *[ttftBins]uint64, n uint64, q float64) *float64 {
	if n == 0 {
		return nil
	}
	rank := q * float64(n)
	var cum float64
	for i, c := range hist {
		if c == 0 {
			continue
		}
		if cum+float64(c) >= rank {
			lo, hi := 0.0, ttftBound(i)
			if i > 0 {
				lo = ttftBound(i - 1)
			}
			v := lo + (hi-lo)*(rank-cum)/float64(c)
			return &v
		}
		cum += float64(c)
	}
	v := ttftBound(ttftBins - 1)
	return &v
}

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
	// handoffs counts the client connections the event loops gave to fasthttp
	// (dataplane.go).
	handoffs *prometheus.CounterVec // reason

	overlapRatio  *prometheus.HistogramVec // model
	promptTokens  *prometheus.CounterVec   // worker, model
	predictedHit  *prometheus.CounterVec   // model
	blockMismatch *prometheus.GaugeVec     // worker
	// mmTruncated counts requests hashed only up to a non-text content part.
	mmTruncated *prometheus.CounterVec // model
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
		handoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_router_dataplane_handoffs_total",
			Help: "Client connections the event-loop data plane handed to fasthttp, by reason: request (not a fast-path request), workers (a worker the loop cannot serve: prefill/decode role, TLS, a host name not resolved yet), budget (max_inflight_body_bytes spent), socket (a listener's connection without a socket).",
		}, []string{"reason"}),
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
			Help: "Prompt tokens of routed requests by worker and model (exact, or estimated in approx mode).",
		}, []string{"worker", "model"}),
		predictedHit: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_router_predicted_hit_tokens_total",
			Help: "Prompt tokens the router expected the chosen worker to have cached.",
		}, []string{"model"}),
		blockMismatch: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvroute_router_block_size_mismatch",
			Help: "1 when the worker's KV block size differs from the one the router hashes its models with: its prefixes never match.",
		}, []string{"worker"}),
		mmTruncated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_router_multimodal_truncated_total",
			Help: "Requests whose prompt was hashed only up to its first non-text content part (image, audio, video, file): nothing past it is matched, as the engine hashes such parts by content the router does not see.",
		}, []string{"model"}),
	}
	cs := []prometheus.Collector{m.requests, m.duration, m.ttfb, m.upErrors, m.retries, m.retriesSkipped, m.handoffs, m.decisions,
		m.overlapRatio, m.promptTokens, m.predictedHit, m.blockMismatch}
	cs = append(cs, m.mmTruncated)
	if reg == nil {
		return m, nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register router metrics: %w", err)
		}
	}
	// In-flight is read from the workers' counters at scrape time, so the request path
	// pays nothing for it; the collector follows the pool's current members.
	if err := reg.Register(inflightCollector{pool}); err != nil {
		return nil, fmt.Errorf("register router metrics: %w", err)
	}
	if err := reg.Register(enginePrefixCollector{pool}); err != nil {
		return nil, fmt.Errorf("register router metrics: %w", err)
	}
	return m, nil
}

// The engines' own prefix-cache counters, as last scraped (vLLM's
// vllm:prefix_cache_queries_total / _hits_total, SGLang's prompt and cached token
// counters), so that the engines' hit rates sit beside the router's on one dashboard.
var (
	enginePrefixQueriesDesc = prometheus.NewDesc("kvroute_engine_prefix_cache_queries_tokens_total",
		"Prompt tokens the worker's engine looked up in its prefix cache, as last scraped from it (restarts with the engine).", []string{"worker"}, nil)
	enginePrefixHitsDesc = prometheus.NewDesc("kvroute_engine_prefix_cache_hits_tokens_total",
		"Prompt tokens the worker's engine found in its prefix cache, as last scraped from it (restarts with the engine).", []string{"worker"}, nil)
)

// enginePrefixCollector reports each member's last scraped prefix-cache counters; a
// worker never scraped, or whose engine reports none, has no series.
type enginePrefixCollector struct{ pool *upstream.Pool }

func (c enginePrefixCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- enginePrefixQueriesDesc
	ch <- enginePrefixHitsDesc
}

func (c enginePrefixCollector) Collect(ch chan<- prometheus.Metric) {
	for _, w := range c.pool.Workers() {
		m, ok := w.Metrics(time.Hour) // a counter keeps its last value
		if !ok || m.PrefixQueries == 0 && m.PrefixHits == 0 {
			continue
		}
		ch <- prometheus.MustNewConstMetric(enginePrefixQueriesDesc, prometheus.CounterValue, m.PrefixQueries, w.ID)
		ch <- prometheus.MustNewConstMetric(enginePrefixHitsDesc, prometheus.CounterValue, m.PrefixHits, w.ID)
	}
}

// inflightDesc describes kvroute_router_inflight_requests.
var inflightDesc = prometheus.NewDesc("kvroute_router_inflight_requests",
	"Requests this router has in flight on each worker.", []string{"worker"}, nil)

// inflightCollector reports each current member's in-flight requests at scrape time.
type inflightCollector struct{ pool *upstream.Pool }

func (c inflightCollector) Describe(ch chan<- *prometheus.Desc) { ch <- inflightDesc }

func (c inflightCollector) Collect(ch chan<- prometheus.Metric) {
	for _, w := range c.pool.Workers() {
		ch <- prometheus.MustNewConstMetric(inflightDesc, prometheus.GaugeValue, float64(w.InFlight()), w.ID)
	}
}

// ForgetWorker deletes a worker that left the pool from the router's metric series and
// traffic figures, so that churn (pods named anew at each rollout) does not grow them
// without bound.
func (s *Server) ForgetWorker(id string) {
	s.seriesCache.forget(id)
	l := prometheus.Labels{"worker": id}
	s.metrics.requests.DeletePartialMatch(l)
	s.metrics.upErrors.DeletePartialMatch(l)
	s.metrics.blockMismatch.DeletePartialMatch(l)
	s.metrics.promptTokens.DeletePartialMatch(l)
	s.truth.forget(id)
	s.traffic.forget(id)
}

// count records a finished request. A zero start skips the duration (requests rejected
// before routing).
func (s *Server) count(worker, model string, status int, start time.Time) {
	now := time.Now()
	if worker != "" {
		set := s.series(worker, model)
		if status == 200 {
			set.okCounter().Inc()
		} else {
			s.metrics.requests.WithLabelValues(worker, model, statusLabel(status)).Inc()
		}
		if !start.IsZero() {
			set.durationObserver().Observe(now.Sub(start).Seconds())
		}
	} else {
		s.metrics.requests.WithLabelValues(worker, model, statusLabel(status)).Inc()
		if !start.IsZero() {
			s.metrics.duration.WithLabelValues(model).Observe(now.Sub(start).Seconds())
		}
	}
	s.traffic.finished(worker, model, status, now)
}
