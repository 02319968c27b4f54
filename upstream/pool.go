package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/configs"
)

// Pool is the fleet of workers with their health and discovery loops. Its membership
// changes at run time ([Pool.Add], [Pool.Remove], [Pool.Sync]; membership.go): the
// request path reads it through one atomic pointer to an immutable snapshot.
type Pool struct {
	fleet atomic.Pointer[fleet]
	cfg   *configs.Config // timeouts, upstream credentials and TLS of new workers
	// members is the membership state (membership.go).
	members membership
	health  configs.Health
	// firstByte bounds a generation probe (timeouts.first_byte).
	firstByte time.Duration
	metrics   *poolMetrics
	// now is the clock; tests may replace it before Run.
	now func() time.Time
}

// fleet is one immutable snapshot of the pool's members: replaced, never modified.
type fleet struct {
	list  []*Worker          // in join order (config order for the static workers)
	byID  map[string]*Worker // by Worker.ID
	byURL map[string]*Worker // by base URL (Worker.URL), for HTTPClient
}

type poolMetrics struct {
	healthy   *prometheus.GaugeVec
	ejections *prometheus.CounterVec
	checks    *prometheus.CounterVec
	genProbes *prometheus.CounterVec
	expired   *prometheus.CounterVec
	changes   *prometheus.CounterVec
	rejected  *prometheus.CounterVec
	workers   *prometheus.GaugeVec
}

// NewPool builds the workers of cfg and registers the pool's metrics with reg (nil: not
// registered). Workers start unavailable until [Pool.Start] or [Pool.Run] has checked
// them.
func NewPool(cfg *configs.Config, reg prometheus.Registerer) (*Pool, error) {
	p := &Pool{cfg: cfg, health: cfg.Health, firstByte: cfg.Timeouts.FirstByte, now: time.Now}
	f := &fleet{byID: map[string]*Worker{}, byURL: map[string]*Worker{}}
	for _, wc := range cfg.Workers {
		w, err := newWorker(wc, cfg)
		if err != nil {
			return nil, err
		}
		if f.byURL[w.URL] != nil {
			return nil, fmt.Errorf("worker %q: url %s is already worker %q's", w.ID, w.URL, f.byURL[w.URL].ID)
		}
		w.Source, w.Joined = SourceStatic, time.Now()
		w.record("joined", "source static")
		f.list = append(f.list, w)
		f.byID[w.ID] = w
		f.byURL[w.URL] = w
	}
	p.fleet.Store(f)
	p.members.init()
	p.metrics = &poolMetrics{
		healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvroute_upstream_worker_available",
			Help: "1 when the worker passes health checks and is not ejected, else 0.",
		}, []string{"worker"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_upstream_ejections_total",
			Help: "Ejections of a worker: after consecutive failed requests, or a failed generation probe after a timeout.",
		}, []string{"worker"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_upstream_health_checks_total",
			Help: "Active health checks by result (ok, fail).",
		}, []string{"worker", "result"}),
		genProbes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_upstream_generation_probes_total",
			Help: "One-token generation probes of workers a request timed out on, by result (ok, fail).",
		}, []string{"worker", "result"}),
		expired: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_upstream_load_entries_expired_total",
			Help: "Router load entries ended by expiry rather than by their request: should stay 0.",
		}, []string{"worker"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_upstream_membership_changes_total",
			Help: "Workers joining (joined), starting to leave (leaving) and gone (left), by membership source (static, api, dns, kubernetes).",
		}, []string{"source", "change"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_upstream_membership_rejected_total",
			Help: "Workers a membership source reported that the pool refused, by reason (duplicate_id, duplicate_url, invalid).",
		}, []string{"source", "reason"}),
		workers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvroute_upstream_workers",
			Help: "Workers in the pool by membership source (leaving ones not counted).",
		}, []string{"source"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{p.metrics.healthy, p.metrics.ejections, p.metrics.checks, p.metrics.genProbes, p.metrics.expired,
			p.metrics.changes, p.metrics.rejected, p.metrics.workers} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register upstream metrics: %w", err)
			}
		}
	}
	for _, w := range f.list {
		p.metrics.healthy.WithLabelValues(w.ID).Set(0)
	}
	p.countWorkers(f)
	return p, nil
}

// Workers returns the pool's current members (not the leaving ones), in join order:
// a snapshot that later membership changes do not alter. The slice must not be modified.
func (p *Pool) Workers() []*Worker { return p.fleet.Load().list }

// Worker returns the current member with the given id, or nil.
func (p *Pool) Worker(id string) *Worker { return p.fleet.Load().byID[id] }

// Candidates appends to dst the available, not drained workers serving model and
// returns it.
func (p *Pool) Candidates(dst []*Worker, model string) []*Worker {
	for _, w := range p.Workers() {
		if w.Available() && !w.Drained() && !w.notReady.Load() && w.Serves(model) {
			dst = append(dst, w)
		}
	}
	return dst
}

// Known reports whether any worker, available or not, serves model.
func (p *Pool) Known(model string) bool {
	for _, w := range p.Workers() {
		if w.Serves(model) {
			return true
		}
	}
	return false
}

// ResolveModel returns what a request naming model is hashed under: for a LoRA adapter
// (see [Worker.Adapter]) its base model and the adapter's name, as vLLM hashes an
// adapter's blocks (base model's engine, adapter name in every block's extra keys) and as
// the index keys the adapter's KV events (the worker's base model, the event's
// lora_name); for anything else model itself and no adapter. The first member serving
// model decides: a fleet is expected to agree on which names are adapters. Safe for
// concurrent use.
func (p *Pool) ResolveModel(model string) (base, lora string) {
	for _, w := range p.Workers() {
		if !w.Serves(model) {
			continue
		}
		if b, ok := w.Adapter(model); ok {
			return b, model
		}
		return model, ""
	}
	return model, ""
}

// Models returns the sorted union of the models of the available workers.
func (p *Pool) Models() []string {
	set := map[string]struct{}{}
	for _, w := range p.Workers() {
		if !w.Available() {
			continue
		}
		for _, m := range w.Models() {
			set[m] = struct{}{}
		}
	}
	out := make([]string, 0, len(set))
	for m := range set {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// AnyAvailable reports whether at least one worker is available.
func (p *Pool) AnyAvailable() bool {
	return slices.ContainsFunc(p.Workers(), (*Worker).Available)
}

// Start checks every current worker once, concurrently, and returns when all checks are
// done or ctx ends. Serving can begin after it with an accurate view of the fleet.
func (p *Pool) Start(ctx context.Context) {
	var wg sync.WaitGroup
	for _, w := range p.Workers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.check(ctx, w)
		}()
	}
	wg.Wait()
}

// Run runs each member's health and discovery loop until ctx ends: the current members'
// and, from then on, those of the workers that join; a leaving worker's loop stops when
// it starts to leave. Run returns when every loop has ended.
func (p *Pool) Run(ctx context.Context) {
	p.members.run(ctx, p)
}

func (p *Pool) loop(ctx context.Context, w *Worker, first time.Duration) {
	lastModels := p.now()
	timer := time.NewTimer(first)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		p.check(ctx, w)
		if n := w.expireLoads(p.now()); n > 0 {
			p.metrics.expired.WithLabelValues(w.ID).Add(float64(n))
		}
		if !w.fixedModels && p.now().Sub(lastModels) >= p.health.ModelsInterval {
			lastModels = p.now()
			if err := p.discover(ctx, w); err != nil {
				w.setLastErr(err)
			}
		}
		timer.Reset(p.nextCheck(w))
	}
}

// nextCheck is the wait before a worker's next active check: the check interval, or less
// when the worker's ejection ends sooner, so it is re-admitted promptly.
func (p *Pool) nextCheck(w *Worker) time.Duration {
	d := p.health.Interval
	w.mu.Lock()
	until := w.ejectedUntil
	w.mu.Unlock()
	if !until.IsZero() {
		if left := until.Sub(p.now()); left < d {
			d = max(left, time.Millisecond)
		}
	}
	return d
}

// check runs one active health check (and model discovery when the worker has no models
// yet or has just recovered: the engine behind it may have restarted with another model)
// and applies its result.
func (p *Pool) check(ctx context.Context, w *Worker) {
	err := p.probe(ctx, w)
	if err == nil && !w.fixedModels {
		w.mu.Lock()
		stale := len(w.models) == 0 || !w.checkHealthy
		w.mu.Unlock()
		if stale {
			err = p.discover(ctx, w)
		}
	}
	result := "ok"
	if err != nil {
		result = "fail"
	}
	p.metrics.checks.WithLabelValues(w.ID, result).Inc()
	var genErr error
	probed := err == nil && p.health.GenerationProbe && w.isSuspect()
	if probed {
		genErr = p.probeGeneration(ctx, w)
		p.metrics.genProbes.WithLabelValues(w.ID, map[bool]string{true: "ok", false: "fail"}[genErr == nil]).Inc()
	}

	now := p.now()
	w.mu.Lock()
	ejected := false
	switch {
	case err == nil && genErr != nil:
		// The engine answers /health but does not generate: out until a probe succeeds.
		w.lastErr = genErr.Error()
		w.checkFails = 0
		w.checkHealthy = true
		ejected = p.ejectLocked(w, now, true)
	case err == nil:
		w.checkFails = 0
		w.checkHealthy = true
		if probed {
			w.suspect = false // the generation probe passed
			w.reqFails = 0
		}
		if !w.ejectedUntil.IsZero() && !now.Before(w.ejectedUntil) && (!p.health.GenerationProbe || !w.suspect) {
			w.ejectedUntil = time.Time{} // re-admitted
			w.reqFails = 0
		}
	default:
		w.checkFails++
		w.lastErr = err.Error()
		if w.checkFails >= p.health.UnhealthyAfter || !w.checkHealthy {
			w.checkHealthy = false
		}
	}
	w.updateAvailable()
	avail := w.available.Load()
	w.mu.Unlock()
	if ejected {
		p.metrics.ejections.WithLabelValues(w.ID).Inc()
	}
	p.metrics.healthy.WithLabelValues(w.ID).Set(b2f(avail))
}

// probeGeneration asks w for a one-token completion of a one-word prompt, bounded by the
// first-byte timeout: the one check that sees an engine that accepts requests and never
// generates (a hung GPU or a deadlocked scheduler still answers /health). Its prompt is
// shorter than a KV block, so it stores no block and moves no index entry.
func (p *Pool) probeGeneration(ctx context.Context, w *Worker) error {
	models := w.Models()
	if len(models) == 0 {
		return errors.New("generation probe: the worker lists no model")
	}
	body, err := json.Marshal(map[string]any{"model": models[0], "prompt": "ping", "max_tokens": 1, "stream": false})
	if err != nil {
		return fmt.Errorf("generation probe: %w", err)
	}
	// net/http rather than the fasthttp pools: the context ends a probe at shutdown at
	// once, where a fasthttp call would wait out its deadline (timeouts.first_byte).
	ctx, cancel := context.WithTimeout(ctx, p.firstByte)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL+"/v1/completions", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("generation probe: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.HTTPClient().Do(req)
	if err != nil {
		return fmt.Errorf("generation probe: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("generation probe: status %d%s", resp.StatusCode, authHint(resp.StatusCode))
	}
	return nil
}

func (p *Pool) probe(ctx context.Context, w *Worker) error {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(w.URL + p.health.Path)
	req.Header.SetMethod(fasthttp.MethodGet)
	w.Authorize(&req.Header)
	if err := doCtx(ctx, w.plain, req, resp, p.health.Timeout); err != nil {
		return fmt.Errorf("health check: %w", w.explainTLS(err))
	}
	if sc := resp.StatusCode(); sc != fasthttp.StatusOK {
		return fmt.Errorf("health check: status %d%s", sc, authHint(sc))
	}
	return nil
}

// discover reads the worker's /v1/models; a change of its models is told to the
// membership hook (its KV events are indexed under its base model).
func (p *Pool) discover(ctx context.Context, w *Worker) error {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(w.URL + "/v1/models")
	req.Header.SetMethod(fasthttp.MethodGet)
	w.Authorize(&req.Header)
	if err := doCtx(ctx, w.plain, req, resp, p.health.Timeout); err != nil {
		return fmt.Errorf("list models: %w", w.explainTLS(err))
	}
	if sc := resp.StatusCode(); sc != fasthttp.StatusOK {
		return fmt.Errorf("list models: status %d%s", sc, authHint(sc))
	}
	list, err := ParseModelList(resp.Body())
	if err != nil {
		return fmt.Errorf("list models: %w", err)
	}
	if len(list.IDs) == 0 {
		return errors.New("list models: the worker serves no model")
	}
	w.mu.Lock()
	changed := !slices.Equal(w.models, list.IDs) || !slices.Equal(w.bases, list.Bases)
	oldBase := w.baseLocked()
	w.models, w.bases = list.IDs, list.Bases
	if changed {
		w.recordLocked("models", strings.Join(list.IDs, " "))
	}
	w.updateAvailable()
	w.mu.Unlock()
	if changed {
		if oldBase != "" && oldBase != w.BaseModel() {
			p.members.log.Warn("worker base model changed: its index entries are cleared", "worker", w.ID, "old", oldBase, "new", w.BaseModel())
		}
		p.members.mu.Lock()
		if p.fleet.Load().byID[w.ID] == w { // not leaving
			p.notify(Change{Kind: ModelsChanged, Worker: w})
		}
		p.members.mu.Unlock()
	}
	return nil
}

// ParseModels decodes an OpenAI /v1/models response into its model ids, sorted and
// without duplicates.
func ParseModels(body []byte) ([]string, error) {
	l, err := ParseModelList(body)
	return l.IDs, err
}

// ModelList is a worker's /v1/models answer.
type ModelList struct {
	// IDs are every model id served, sorted, without duplicates or empty ids.
	IDs []string
	// Bases are the ids that are base models, sorted: vLLM lists a LoRA adapter with
	// "parent" set to its base model's id and a base model with "parent": null
	// (vllm/entrypoints/openai/serving_models.py, ModelCard). An engine that sends no
	// parent at all lists only base models.
	Bases []string
}

// ParseModelList decodes an OpenAI /v1/models response, telling base models from LoRA
// adapters by vLLM's "parent" field.
func ParseModelList(body []byte) (ModelList, error) {
	var list struct {
		Data []struct {
			ID string `json:"id"`
			// Parent is raw so that an engine's non-string parent is no decode error:
			// only a string names a base model.
			Parent json.RawMessage `json:"parent"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return ModelList{}, fmt.Errorf("decode models: %w", err)
	}
	var out ModelList
	for _, m := range list.Data {
		if m.ID == "" {
			continue
		}
		out.IDs = append(out.IDs, m.ID)
		var parent string
		if json.Unmarshal(m.Parent, &parent) != nil || parent == "" || parent == m.ID {
			out.Bases = append(out.Bases, m.ID)
		}
	}
	if out.IDs == nil {
		out.IDs = []string{}
	}
	slices.Sort(out.IDs)
	out.IDs = slices.Compact(out.IDs)
	slices.Sort(out.Bases)
	out.Bases = slices.Compact(out.Bases)
	return out, nil
}

// doCtx performs a short request bounded by timeout and ctx.
func doCtx(ctx context.Context, hc *fasthttp.HostClient, req *fasthttp.Request, resp *fasthttp.Response, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return hc.DoDeadline(req, resp, deadline)
}

// ReportSuccess records a request the worker answered without a server error.
func (p *Pool) ReportSuccess(w *Worker) {
	w.mu.Lock()
	w.reqFails = 0
	w.ejectStreak = 0
	w.mu.Unlock()
}

// ReportFailure records a request the worker failed (connect error, timeout, 5xx);
// eject_after of them in a row eject it.
func (p *Pool) ReportFailure(w *Worker, err error) {
	now := p.now()
	w.mu.Lock()
	w.reqFails++
	w.lastErr = err.Error()
	if IsTimeout(err) {
		w.suspect = true
	}
	ejected := false
	if w.reqFails >= p.health.EjectAfter && w.ejectedUntil.IsZero() {
		ejected = p.ejectLocked(w, now, false)
	}
	w.mu.Unlock()
	if ejected && !w.leaving.Load() { // a leaving worker's series are being deleted
		p.metrics.ejections.WithLabelValues(w.ID).Inc()
		p.metrics.healthy.WithLabelValues(w.ID).Set(0)
	}
}

// ejectLocked ejects w from now for eject_base doubled by each ejection in a row, up to
// eject_max; extend also renews an ejection under way. It reports whether w was not
// ejected before. w.mu must be held.
func (p *Pool) ejectLocked(w *Worker, now time.Time, extend bool) bool {
	if !w.ejectedUntil.IsZero() && !extend {
		return false
	}
	fresh := w.ejectedUntil.IsZero()
	d := p.health.EjectBase << min(w.ejectStreak, 20)
	if d > p.health.EjectMax || d <= 0 {
		d = p.health.EjectMax
	}
	w.ejectedUntil = now.Add(d)
	w.ejectStreak++
	w.updateAvailable()
	return fresh
}

// IsTimeout reports whether err says a worker accepted a request and did not answer in
// time: a deadline or timeout error anywhere in its chain (net.Error's Timeout method,
// fasthttp's ErrTimeout).
func IsTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.Is(err, fasthttp.ErrTimeout) || (errors.As(err, &te) && te.Timeout())
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
