package router

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/router/admin"
	"github.com/kvroute/kvroute/scorer"
)

// Windowed request statistics for the admin API and dashboard (router/admin).
//
// Every figure is what this router itself saw; none is read from the workers. In
// particular the hit rate is the router's *predicted* hit rate: the prompt tokens of the
// routed requests that the prefix index said the chosen worker already held, over all
// their prompt tokens. The workers' own usage.cached_tokens is not parsed from responses
// (for streams it only arrives in the last chunk, if at all), so a prediction the worker
// did not honour (it evicted the blocks meanwhile) still counts as a hit here; compare
// with the engines' own prefix-cache metrics for the real figure.
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
	ttftN     uint32
	ttft      [ttftBins]uint32
}

// statSeries is one ring of per-second buckets plus totals since start.
type statSeries struct {
	ring                     [statsRingSeconds]statBucket
	totalRouted, totalErrors uint64
	totalPrompt, totalHit    uint64
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
// Keys are bounded: model names the pool knows and configured worker ids.
func seriesLocked(m map[string]*statSeries, key string) *statSeries {
	s := m[key]
	if s == nil {
		s = new(statSeries)
		m[key] = s
	}
	return s
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

// TrafficStats is a snapshot of the router's windowed request statistics.
type TrafficStats struct {
	// Start is when the statistics began (the server's creation).
	Start time.Time `json:"start"`
	// Windows has the 1m, 5m and 15m figures, globally and per model.
	Windows []TrafficWindow `json:"windows"`
	// Series has one point per second for the last SeriesSeconds seconds, oldest first.
	Series []TrafficPoint `json:"series"`
}

// TrafficWindow is one window's figures.
type TrafficWindow struct {
	// Name is "1m", "5m" or "15m"; Seconds the window's length; Elapsed the part of it
	// the router has been running (rates divide by it).
	Name    string  `json:"name"`
	Seconds int64   `json:"seconds"`
	Elapsed float64 `json:"elapsed_seconds"`
	// Global is every model together; Models is per model name.
	Global TrafficFigures            `json:"global"`
	Models map[string]TrafficFigures `json:"models"`
}

// TrafficFigures are one window's figures for one model, worker or all of them.
type TrafficFigures struct {
	// Finished counts requests that ended in the window (answered, failed or rejected);
	// Errors those among them with status >= 500 or 499 (client gone mid-response).
	Finished uint64 `json:"finished"`
	Errors   uint64 `json:"errors"`
	// Routed counts requests committed to a worker (a response started); Decisions counts
	// routing decisions, one per attempt, retries included (global figures only).
	Routed    uint64 `json:"routed"`
	Decisions uint64 `json:"decisions,omitempty"`
	// PromptTokens is the routed requests' prompt tokens (exact in engine mode, estimated
	// in approx mode); PredictedHitTokens the part of them the index predicted the chosen
	// worker held (leading cached blocks x block size).
	PromptTokens       uint64 `json:"prompt_tokens"`
	PredictedHitTokens uint64 `json:"predicted_hit_tokens"`
	// HitRate is PredictedHitTokens / PromptTokens; nil when no prompt was routed.
	HitRate *float64 `json:"hit_rate"`
	// RequestsPerSecond and DecisionsPerSecond are Finished and Decisions over Elapsed.
	RequestsPerSecond  float64 `json:"requests_per_second"`
	DecisionsPerSecond float64 `json:"decisions_per_second,omitempty"`
	// TTFT is the time from a request's arrival at the router to the first response byte
	// sent to its client (for streams, the first chunk), over the window's requests.
	TTFT TTFTFigures `json:"ttft"`
}

// TTFTFigures are time-to-first-byte percentiles in milliseconds, estimated from a
// histogram with 1.4x bins (within one bin of the exact value); nil when Count is 0.
type TTFTFigures struct {
	Count uint64   `json:"count"`
	P50   *float64 `json:"p50_ms"`
	P90   *float64 `json:"p90_ms"`
	P99   *float64 `json:"p99_ms"`
}

// TrafficPoint is one second of global figures, for time-series charts.
type TrafficPoint struct {
	// T is the second, in Unix seconds.
	T                  int64    `json:"t"`
	Finished           uint32   `json:"finished"`
	Routed             uint32   `json:"routed"`
	Decisions          uint32   `json:"decisions"`
	PromptTokens       uint64   `json:"prompt_tokens"`
	PredictedHitTokens uint64   `json:"predicted_hit_tokens"`
	TTFTCount          uint32   `json:"ttft_count"`
	TTFTP50            *float64 `json:"ttft_p50_ms"`
	TTFTP95            *float64 `json:"ttft_p95_ms"`
}

// WorkerTraffic is one worker's share of the router's traffic.
type WorkerTraffic struct {
	// Routed, PromptTokens and PredictedHitTokens are totals since start; HitRate is
	// their ratio (nil before the first routed prompt).
	Routed             uint64   `json:"routed"`
	Errors             uint64   `json:"errors"`
	PromptTokens       uint64   `json:"prompt_tokens"`
	PredictedHitTokens uint64   `json:"predicted_hit_tokens"`
	HitRate            *float64 `json:"hit_rate"`
	// Window5m is the worker's figures over the last 5 minutes.
	Window5m TrafficFigures `json:"window_5m"`
	// Series is the worker's last SeriesSeconds seconds, oldest first.
	Series []TrafficPoint `json:"series,omitempty"`
}

// SeriesSeconds is how many seconds of per-second points the snapshots carry.
const SeriesSeconds = 300

// Traffic returns the router's windowed request statistics as of now.
func (s *Server) Traffic() TrafficStats { return s.traffic.snapshot(time.Now()) }

// WorkerTraffic returns worker id's share of the traffic as of now, with its per-second
// series when series is true.
func (s *Server) WorkerTraffic(id string, series bool) WorkerTraffic {
	return s.traffic.worker(id, series, time.Now())
}

func (t *trafficStats) snapshot(now time.Time) TrafficStats {
	out := TrafficStats{Start: t.start}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, w := range statsWindows {
		tw := TrafficWindow{Name: w.name, Seconds: w.secs, Elapsed: t.elapsed(w.secs, now), Models: map[string]TrafficFigures{}}
		tw.Global = t.global.figures(now.Unix(), w.secs, tw.Elapsed)
		for m, s := range t.models {
			tw.Models[m] = s.figures(now.Unix(), w.secs, tw.Elapsed)
		}
		out.Windows = append(out.Windows, tw)
	}
	out.Series = t.global.points(now.Unix(), SeriesSeconds)
	return out
}

func (t *trafficStats) worker(id string, series bool, now time.Time) WorkerTraffic {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.workers[id]
	if s == nil {
		s = new(statSeries) // zero figures, not stored
	}
	wt := WorkerTraffic{
		Routed: s.totalRouted, Errors: s.totalErrors, PromptTokens: s.totalPrompt, PredictedHitTokens: s.totalHit,
		HitRate:  ratio(s.totalHit, s.totalPrompt),
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
func (s *statSeries) figures(now, secs int64, elapsed float64) TrafficFigures {
	var f TrafficFigures
	var hist [ttftBins]uint64
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
		f.TTFT.Count += uint64(b.ttftN)
		for k, n := range b.ttft {
			hist[k] += uint64(n)
		}
	}
	f.HitRate = ratio(f.PredictedHitTokens, f.PromptTokens)
	f.RequestsPerSecond = float64(f.Finished) / elapsed
	f.DecisionsPerSecond = float64(f.Decisions) / elapsed
	f.TTFT.P50 = percentile(&hist, f.TTFT.Count, 0.50)
	f.TTFT.P90 = percentile(&hist, f.TTFT.Count, 0.90)
	f.TTFT.P99 = percentile(&hist, f.TTFT.Count, 0.99)
	return f
}

// points returns one point per second for the n seconds ending at now, oldest first.
func (s *statSeries) points(now int64, n int) []TrafficPoint {
	out := make([]TrafficPoint, n)
	for i := range out {
		sec := now - int64(n-1-i)
		p := TrafficPoint{T: sec}
		if sec > now-statsRingSeconds {
			if b := &s.ring[slot(sec)]; b.sec == sec {
				p.Finished, p.Routed, p.Decisions = b.finished, b.routed, b.decisions
				p.PromptTokens, p.PredictedHitTokens, p.TTFTCount = b.prompt, b.hit, b.ttftN
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

// swappableSelector is the configured policy behind an atomic pointer, so a config
// reload can replace it (new weights) while requests are being routed. It is only used
// for policies that explain their choices (cache_aware), the only ones with weights.
type swappableSelector struct {
	cur atomic.Pointer[explainingSelector]
}

type explainingSelector interface {
	scorer.Selector
	scorer.Explainer
}

func (s *swappableSelector) Select(req *scorer.Request, cands []scorer.Candidate) int {
	return (*s.cur.Load()).Select(req, cands)
}

func (s *swappableSelector) SelectExplained(req *scorer.Request, cands []scorer.Candidate, costs []scorer.Cost) int {
	return (*s.cur.Load()).SelectExplained(req, cands, costs)
}

// wrapSelector returns sel behind a swappableSelector when it explains its choices,
// and the swappable (nil otherwise) for reloads.
func wrapSelector(sel scorer.Selector) (scorer.Selector, *swappableSelector) {
	ex, ok := sel.(explainingSelector)
	if !ok {
		return sel, nil
	}
	sw := &swappableSelector{}
	sw.cur.Store(&ex)
	return sw, sw
}

var _ scorer.Explainer = (*swappableSelector)(nil)

// ownedByAdmin reports whether path is under Config.Admin.PathPrefix.
func (s *Server) ownedByAdmin(path []byte) bool {
	p := s.cfg.Admin.PathPrefix
	return p != "" && len(path) >= len(p) && string(path[:len(p)]) == p && (len(path) == len(p) || path[len(p)] == '/')
}

// adminState is the Stack's admin API: its own listener, if any.
type adminState struct {
	// mu guards reloads and applied, the config values currently in effect for the
	// settings a reload can change.
	mu      sync.Mutex
	applied configs.CacheAware
	srv     *http.Server
	addr    string
	started time.Time
}

// AdminAddr returns the address of the admin listener ("host:port"), or "" when it has
// none (disabled, not started yet, or its address could not be bound).
func (st *Stack) AdminAddr() string { return st.admin.addr }

// startAdmin builds the admin API and serves it on its own listener and/or under the
// path prefix of ln. A non-loopback admin without a token is an error; an admin listener
// that cannot bind is logged and skipped, so a busy admin port never stops routing.
func (st *Stack) startAdmin(ln net.Listener) error {
	cfg := st.Config.Admin
	st.admin.started = time.Now()
	st.admin.applied = st.Config.CacheAware
	if cfg.PathPrefix != "" {
		h, err := st.adminHandler(ln.Addr())
		if err != nil {
			return err
		}
		inner := fasthttpadaptor.NewFastHTTPHandler(http.StripPrefix(cfg.PathPrefix, h))
		st.Server.admin = func(ctx *fasthttp.RequestCtx) {
			if string(ctx.Path()) == cfg.PathPrefix {
				ctx.Redirect(cfg.PathPrefix+"/", fasthttp.StatusPermanentRedirect)
				return
			}
			inner(ctx)
		}
	}
	if cfg.Listen == "" {
		return nil
	}
	aln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		st.log.Error("admin API not started: cannot listen", "listen", cfg.Listen, "err", err)
		return nil
	}
	h, err := st.adminHandler(aln.Addr())
	if err != nil {
		_ = aln.Close()
		return err
	}
	st.admin.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(st.log.Handler(), slog.LevelDebug)}
	st.admin.addr = aln.Addr().String()
	go func() { _ = st.admin.srv.Serve(aln) }()
	st.log.Info("admin API serving", "listen", st.admin.addr)
	return nil
}

// stopAdmin closes the admin listener.
func (st *Stack) stopAdmin() {
	if st.admin.srv != nil {
		_ = st.admin.srv.Close()
	}
}

// adminHandler builds the admin handler for a listener on addr: reads need the token
// unless addr is a loopback address.
func (st *Stack) adminHandler(addr net.Addr) (http.Handler, error) {
	loopback := false
	if ta, ok := addr.(*net.TCPAddr); ok {
		loopback = ta.IP.IsLoopback()
	}
	h, err := admin.New(admin.Options{Backend: st.adminBackend(), Token: st.Config.AdminToken(), RequireToken: !loopback})
	if err != nil {
		return nil, fmt.Errorf("admin on %s: %w", addr, err)
	}
	return h, nil
}

func (st *Stack) adminBackend() admin.Backend {
	s := st.Server
	b := admin.Backend{
		Pool: st.Pool, Index: st.Index, Gatherer: st.Registry, MetricsMaxAge: st.Config.CacheAware.MetricsMaxAge,
		Traffic:       func() any { return s.Traffic() },
		WorkerTraffic: func(id string, series bool) any { return s.WorkerTraffic(id, series) },
		Decisions:     func(n int) any { return explainAll(s.Decisions(n)) },
		Reload:        st.reload,
		Info: admin.Info{
			Policy: st.Config.Policy, TokenizeMode: st.Config.Tokenize.Mode, EventSource: st.Config.Events.Source,
			Listen: st.Config.Listen, ConfigFile: st.Config.Source, Started: st.admin.started,
		},
	}
	if st.Events != nil {
		b.Feeds = st.Events.States
	}
	return b
}

// ExplainedDecision is a [Decision] with a one-line explanation for people, in a form
// JSON can carry (an infinite cost becomes null).
type ExplainedDecision struct {
	Decision
	Candidates  []CandidateView `json:"candidates"`
	Explanation string          `json:"explanation"`
}

// CandidateView is a [DecisionCandidate] whose costs are nil when not finite: the load
// guard gives a worker over its bar an infinite total cost (LoadGuarded).
type CandidateView struct {
	DecisionCandidate
	PrefillCost *float64 `json:"prefill_cost"`
	DecodeCost  *float64 `json:"decode_cost"`
	QueueCost   *float64 `json:"queue_cost"`
	TotalCost   *float64 `json:"total_cost"`
	LoadGuarded bool     `json:"load_guarded"`
}

func finite(v float64) *float64 {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return nil
	}
	return &v
}

func explainAll(ds []Decision) []ExplainedDecision {
	out := make([]ExplainedDecision, len(ds))
	for i := range ds {
		d := &ds[i]
		e := ExplainedDecision{Decision: *d, Explanation: Explain(d), Candidates: make([]CandidateView, len(d.Candidates))}
		for k, c := range d.Candidates {
			e.Candidates[k] = CandidateView{
				DecisionCandidate: c, PrefillCost: finite(c.PrefillCost), DecodeCost: finite(c.DecodeCost),
				QueueCost: finite(c.QueueCost), TotalCost: finite(c.TotalCost), LoadGuarded: math.IsInf(c.TotalCost, 1),
			}
		}
		out[i] = e
	}
	return out
}

// Explain says in one line why d chose its worker: the chosen worker's cached share of
// the prompt and cost against the next cheapest candidate (costs in blocks).
func Explain(d *Decision) string {
	var chosen *DecisionCandidate
	var next *DecisionCandidate
	for i := range d.Candidates {
		c := &d.Candidates[i]
		if c.Worker == d.Chosen {
			chosen = c
		} else if next == nil || c.TotalCost < next.TotalCost || math.IsInf(next.TotalCost, 1) && c.TotalCost <= next.TotalCost {
			next = c
		}
	}
	if chosen == nil {
		return fmt.Sprintf("%s chose %s", d.Policy, d.Chosen)
	}
	b := fmt.Sprintf("%s holds %d of %d prompt blocks", d.Chosen, chosen.OverlapBlocks, d.Blocks)
	if !d.Exact && d.Blocks > 0 {
		b += " (approx hashes)"
	}
	costs := false
	for _, c := range d.Candidates {
		costs = costs || c.TotalCost != 0
	}
	switch {
	case next == nil:
		b += "; the only candidate"
	case costs:
		b += fmt.Sprintf("; cost %.1f blocks (prefill %.1f, decode %.1f, queue %.1f) vs %.1f for %s, the next cheapest",
			chosen.TotalCost, chosen.PrefillCost, chosen.DecodeCost, chosen.QueueCost, next.TotalCost, next.Worker)
		if chosen.TotalCost > next.TotalCost {
			b += " (session stickiness or temperature)"
		}
		if guarded := countGuarded(d.Candidates); guarded > 0 {
			b += fmt.Sprintf("; %d over the load guard", guarded)
		}
	default:
		b += fmt.Sprintf("; picked by %s among %d candidates", d.Policy, len(d.Candidates))
	}
	if d.Attempt > 0 {
		b += fmt.Sprintf("; retry %d", d.Attempt)
	}
	return b
}

func countGuarded(cs []DecisionCandidate) int {
	n := 0
	for _, c := range cs {
		if math.IsInf(c.TotalCost, 1) {
			n++
		}
	}
	return n
}

// reload re-reads the config file the router was started with and applies the settings
// that can change at run time: the cache_aware policy's weights (a new selector replaces
// the old one between two decisions; session stickiness starts afresh). Every other
// difference is reported as needing a restart: the rest of the config is read without
// synchronization on the request path.
func (st *Stack) reload() (admin.ReloadReport, error) {
	path := st.Config.Source
	if path == "" {
		return admin.ReloadReport{}, errors.New("the router was not started from a config file (--config)")
	}
	next, err := configs.LoadFile(path)
	if err != nil {
		return admin.ReloadReport{}, err
	}
	st.admin.mu.Lock()
	defer st.admin.mu.Unlock()
	rep := admin.ReloadReport{File: path, Applied: []string{}, RestartRequired: []string{}}
	cur := *st.Config
	cur.CacheAware = st.admin.applied
	type weight struct {
		name     string
		old, new float64
	}
	oc, nc := cur.CacheAware, next.CacheAware
	weights := []weight{
		{"cache_aware.overlap_weight", oc.OverlapWeight, nc.OverlapWeight},
		{"cache_aware.waiting_weight", oc.WaitingWeight, nc.WaitingWeight},
		{"cache_aware.kv_usage_weight", oc.KVUsageWeight, nc.KVUsageWeight},
		{"cache_aware.temperature", oc.Temperature, nc.Temperature},
		{"cache_aware.session_slack", oc.SessionSlack, nc.SessionSlack},
		{"cache_aware.max_imbalance", oc.MaxImbalance, nc.MaxImbalance},
	}
	var changedWeights []string
	for _, w := range weights {
		if w.old != w.new {
			changedWeights = append(changedWeights, fmt.Sprintf("%s: %v -> %v", w.name, w.old, w.new))
		}
	}
	sameWeights := oc
	sameWeights.OverlapWeight, sameWeights.WaitingWeight, sameWeights.KVUsageWeight = nc.OverlapWeight, nc.WaitingWeight, nc.KVUsageWeight
	sameWeights.Temperature, sameWeights.SessionSlack, sameWeights.MaxImbalance = nc.Temperature, nc.SessionSlack, nc.MaxImbalance
	if !reflect.DeepEqual(sameWeights, nc) {
		rep.RestartRequired = append(rep.RestartRequired, "cache_aware (limits, block size, TTL, scrape and index settings)")
	}
	for _, sec := range []struct {
		name     string
		old, new any
	}{
		{"listen", cur.Listen, next.Listen}, {"policy", cur.Policy, next.Policy},
		{"tokenize", cur.Tokenize, next.Tokenize}, {"session", cur.Session, next.Session},
		{"events", cur.Events, next.Events}, {"max_body_bytes", cur.MaxBodyBytes, next.MaxBodyBytes},
		{"max_attempts", cur.MaxAttempts, next.MaxAttempts}, {"timeouts", cur.Timeouts, next.Timeouts},
		{"health", cur.Health, next.Health}, {"headers", cur.Headers, next.Headers},
		{"admin", cur.Admin, next.Admin}, {"workers", cur.Workers, next.Workers},
	} {
		if !reflect.DeepEqual(sec.old, sec.new) {
			rep.RestartRequired = append(rep.RestartRequired, sec.name)
		}
	}
	if len(changedWeights) > 0 {
		if st.Server.policy == nil || next.Policy != cur.Policy {
			rep.RestartRequired = append(rep.RestartRequired, changedWeights...)
		} else {
			sel, err := NewSelector(next)
			if err != nil {
				return admin.ReloadReport{}, err
			}
			ex, ok := sel.(explainingSelector)
			if !ok {
				return admin.ReloadReport{}, fmt.Errorf("policy %s does not explain its choices", next.Policy)
			}
			st.Server.policy.cur.Store(&ex)
			a := &st.admin.applied
			a.OverlapWeight, a.WaitingWeight, a.KVUsageWeight = nc.OverlapWeight, nc.WaitingWeight, nc.KVUsageWeight
			a.Temperature, a.SessionSlack, a.MaxImbalance = nc.Temperature, nc.SessionSlack, nc.MaxImbalance
			rep.Applied = append(rep.Applied, changedWeights...)
		}
	}
	rep.Unchanged = len(rep.Applied) == 0 && len(rep.RestartRequired) == 0
	st.log.Info("config reloaded", "file", path, "applied", rep.Applied, "restart_required", rep.RestartRequired)
	return rep, nil
}
