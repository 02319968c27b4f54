package router

import (
	"bytes"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/router/jsonscan"
	"github.com/kvroute/kvroute/scorer"
)

// This file checks the router's predictions against what the engines report: each
// answer's usage.prompt_tokens_details.cached_tokens (non-streaming answers, and streams
// that carry usage: stream_options.include_usage) is recorded beside the cached tokens
// the routing decision predicted, per worker and model, and a drift detector notices a
// worker or model whose reported cached tokens fall well below the predicted ones.

// predictedTokens is the prompt tokens a worker holding overlap leading blocks of req
// has cached, at most the prompt.
func predictedTokens(req *scorer.Request, overlap int) int {
	n := overlap * req.BlockSize
	if req.PromptTokens > 0 && n > req.PromptTokens {
		n = req.PromptTokens
	}
	return max(n, 0)
}

// parseUsage reads usage.prompt_tokens and usage.prompt_tokens_details.cached_tokens
// from one JSON object (an answer's body, or one SSE event's data). ok is false when the
// object has no usage or a malformed one: a usage without prompt_tokens_details means
// the engine does not report cached tokens (vLLM without --enable-prompt-tokens-details)
// and is not a report either. A Responses API answer's usage.input_tokens and
// usage.input_tokens_details.cached_tokens count the same, at the top level or in the
// "response" object of a stream event (response.completed). The worker's bytes are only
// structurally checked.
func parseUsage(b []byte) (u ReportedUsage, ok bool) {
	i := jsonscan.SkipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return u, false
	}
	it, err := jsonscan.NewIter(b, i)
	if err != nil {
		return u, false
	}
	for {
		key, vs, ve, more, err := it.Next()
		if err != nil || !more {
			return u, false
		}
		if jsonscan.KeyIs(key, "usage") {
			if u, ok := parseUsageObject(b[vs:ve]); ok {
				return u, true
			}
			return ReportedUsage{}, false
		}
		// A Responses API stream event nests the response object, and its usage.
		if jsonscan.KeyIs(key, "response") && b[vs] == '{' {
			return parseUsage(b[vs:ve])
		}
	}
}

func parseUsageObject(b []byte) (u ReportedUsage, ok bool) {
	if len(b) == 0 || b[0] != '{' {
		return u, false // null, or not an object
	}
	it, err := jsonscan.NewIter(b, 0)
	if err != nil {
		return u, false
	}
	havePrompt, haveCached := false, false
	for {
		key, vs, ve, more, err := it.Next()
		if err != nil {
			return u, false
		}
		if !more {
			break
		}
		switch {
		case jsonscan.KeyIs(key, "prompt_tokens"), jsonscan.KeyIs(key, "input_tokens"): // chat, Responses
			n, err := jsonscan.Uint32(b[vs:ve])
			if err != nil {
				return u, false
			}
			u.PromptTokens, havePrompt = int(n), true
		case jsonscan.KeyIs(key, "prompt_tokens_details"), jsonscan.KeyIs(key, "input_tokens_details"):
			d := b[vs:ve]
			if len(d) == 0 || d[0] != '{' {
				continue // null: no details
			}
			dit, err := jsonscan.NewIter(d, 0)
			if err != nil {
				return u, false
			}
			for {
				k, s, e, more, err := dit.Next()
				if err != nil {
					return u, false
				}
				if !more {
					break
				}
				if jsonscan.KeyIs(k, "cached_tokens") {
					n, err := jsonscan.Uint32(d[s:e])
					if err != nil {
						return u, false
					}
					u.CachedTokens, haveCached = int(n), true
				}
			}
		}
	}
	if !havePrompt || !haveCached || u.CachedTokens > u.PromptTokens {
		return ReportedUsage{}, false
	}
	return u, true
}

// usageKey is the byte sequence that marks an SSE chunk carrying usage.
var usageKey = []byte(`"usage"`)

// sseUsage returns the usage of the last data event in chunk, one Read of the
// worker's stream, when that event carries one ([DONE] is passed over; so is a last
// line not yet ended that carries none). Engines put the usage in the stream's last
// data event: OpenAI's and vLLM's include_usage chunk comes after every choice's last
// chunk, just before [DONE]; with vLLM's continuous_usage_stats every chunk carries the
// usage so far; the Responses API's response.completed is its last event. So only the
// end of each read is looked at, not all of it: a search of every read for "usage" was
// 4.7% of kvroute's CPU proxying 200-chunk streams (perf, kvbench proxy --peak). An
// event split across two reads is missed (the request then counts as unreported),
// which engines that write each event in one write (vLLM, SGLang, kvsim) never cause
// for the small usage event.
func sseUsage(chunk []byte) (u ReportedUsage, ok bool) {
	rest := chunk
	for last := true; len(rest) > 0; last = false {
		ended := rest[len(rest)-1] == '\n'
		line := rest
		if ended {
			line = rest[:len(rest)-1]
		}
		start := bytes.LastIndexByte(line, '\n') + 1
		rest = rest[:start]
		data, isData := bytes.CutPrefix(bytes.TrimSpace(line[start:]), []byte("data:"))
		if !isData {
			continue // a blank line, event:, id:, a comment
		}
		data = bytes.TrimSpace(data)
		if bytes.Equal(data, []byte("[DONE]")) {
			continue
		}
		if bytes.Contains(data, usageKey) {
			if u, ok := parseUsage(data); ok {
				return u, true
			}
		}
		if last && !ended {
			continue // the start of an event the next read ends
		}
		return u, false
	}
	return u, false
}

// truth counts predicted against reported cached tokens and runs the drift detector.
type truth struct {
	reportedPrompt *prometheus.CounterVec // worker, model
	predicted      *prometheus.CounterVec // worker, model
	reported       *prometheus.CounterVec // worker, model
	unreported     *prometheus.CounterVec // worker, model
	drift          *prometheus.GaugeVec   // worker, model
	log            *slog.Logger

	// mu guards windows and series.
	mu      sync.Mutex
	windows map[truthKey]*driftWindow
	// series holds the counters of each worker and model, looked up once: a map read
	// under mu, which observe holds anyway, instead of four label lookups per answer.
	series map[truthKey]*truthSeries
}

// truthSeries are the counters of one worker and model.
type truthSeries struct {
	reportedPrompt, predicted, reported, unreported prometheus.Counter
}

// seriesLocked returns the counters of k, made at its first answer. mu must be held.
func (t *truth) seriesLocked(k truthKey) *truthSeries {
	c := t.series[k]
	if c == nil {
		c = &truthSeries{
			reportedPrompt: t.reportedPrompt.WithLabelValues(k.worker, k.model),
			predicted:      t.predicted.WithLabelValues(k.worker, k.model),
			reported:       t.reported.WithLabelValues(k.worker, k.model),
			unreported:     t.unreported.WithLabelValues(k.worker, k.model),
		}
		t.series[k] = c
	}
	return c
}

type truthKey struct{ worker, model string }

// Drift detection, over the last driftBuckets seconds of a worker and model, both ways:
//   - over-prediction: reported cached tokens below driftRatio of the predicted ones
//     (with at least driftMinTokens predicted): the router sends requests where it
//     believes their prefix is cached and the engine does not have it (prefix caching
//     off on the engine, a cache_salt or adapter the router hashes differently, entries
//     the router keeps after the engine evicted them);
//   - under-prediction: predicted below driftRatio of the reported ones (with at least
//     driftMinTokens reported): the engine finds prefixes the router cannot see (a
//     block size, tokenizer, chat template or model name that differs from the
//     engine's, or a KV-event feed that is not connected), so routing ignores them.
//
// Either sets the drift; it clears when both are within driftRecover of each other.
const (
	driftBuckets   = 30 // one per second
	driftRatio     = 0.5
	driftRecover   = 0.8
	driftMinTokens = 1024
)

// driftWindow holds per-second sums of predicted and reported cached tokens.
type driftWindow struct {
	sec      [driftBuckets]int64
	pred     [driftBuckets]int64
	rep      [driftBuckets]int64
	drifting bool
	logged   bool
}

func newTruth(reg prometheus.Registerer, log *slog.Logger) (*truth, error) {
	l := []string{"worker", "model"}
	t := &truth{
		reportedPrompt: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_router_reported_prompt_tokens_total",
			Help: "Prompt tokens the workers reported (usage.prompt_tokens) for the answers that reported cached tokens.",
		}, l),
		predicted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_router_predicted_cached_tokens_total",
			Help: "Prompt tokens the router predicted the chosen worker held, for the answers that reported cached tokens: compare with kvroute_router_reported_cached_tokens_total.",
		}, l),
		reported: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_router_reported_cached_tokens_total",
			Help: "Cached prompt tokens the workers reported (usage.prompt_tokens_details.cached_tokens).",
		}, l),
		unreported: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvroute_router_unreported_answers_total",
			Help: "Answers whose usage did not say how many prompt tokens were cached (a stream without include_usage, an engine without prompt token details, a malformed usage).",
		}, l),
		drift: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kvroute_router_prediction_drift",
			Help: "1 while, over the last 30 s, a worker's reported cached tokens are below half of the router's predicted ones or above twice them (block size, tokenizer, chat template, adapter, salt or event feed mismatch; see the log).",
		}, l),
		log: log, windows: map[truthKey]*driftWindow{}, series: map[truthKey]*truthSeries{},
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{t.reportedPrompt, t.predicted, t.reported, t.unreported, t.drift} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return t, nil
}

// observe records one answer: predicted cached tokens and the worker's report (ok false
// when it reported none).
func (t *truth) observe(worker, model string, predicted int, u ReportedUsage, ok bool, now time.Time) {
	k := truthKey{worker, model}
	t.mu.Lock()
	c := t.seriesLocked(k)
	if !ok {
		t.mu.Unlock()
		c.unreported.Inc()
		return
	}
	c.reportedPrompt.Add(float64(u.PromptTokens))
	c.predicted.Add(float64(predicted))
	c.reported.Add(float64(u.CachedTokens))

	sec := now.Unix()
	w := t.windows[k]
	if w == nil {
		w = new(driftWindow)
		t.windows[k] = w
	}
	i := int(sec % driftBuckets)
	if w.sec[i] != sec {
		w.sec[i], w.pred[i], w.rep[i] = sec, 0, 0
	}
	w.pred[i] += int64(predicted)
	w.rep[i] += int64(u.CachedTokens)
	var pred, rep int64
	for j := range driftBuckets {
		if sec-w.sec[j] < driftBuckets {
			pred += w.pred[j]
			rep += w.rep[j]
		}
	}
	was := w.drifting
	over := pred >= driftMinTokens && float64(rep) < driftRatio*float64(pred)
	under := rep >= driftMinTokens && float64(pred) < driftRatio*float64(rep)
	switch {
	case over || under:
		w.drifting = true
	case float64(rep) >= driftRecover*float64(pred) && float64(pred) >= driftRecover*float64(rep),
		pred < driftMinTokens && rep < driftMinTokens:
		w.drifting = false
	}
	logNow := w.drifting && !w.logged
	if logNow {
		w.logged = true // once per worker and model
	}
	now1 := w.drifting
	t.mu.Unlock()
	if now1 != was {
		t.drift.WithLabelValues(worker, model).Set(b2f(now1))
	}
	switch {
	case logNow && over:
		t.log.Error("prediction drift: the worker reports far fewer cached tokens than the router predicted",
			"worker", worker, "model", model, "predicted_tokens_30s", pred, "reported_tokens_30s", rep,
			"likely_causes", "prefix caching off on the engine, a LoRA adapter or cache_salt hashed differently than the engine does, or the router's entries outliving the engine's evictions (events not arriving)")
	case logNow:
		t.log.Error("prediction drift: the worker finds far more cached tokens than the router predicted; routing cannot see its cache",
			"worker", worker, "model", model, "predicted_tokens_30s", pred, "reported_tokens_30s", rep,
			"likely_causes", "block size (cache_aware.block_size vs the engine's), tokenizer or chat template (tokenize.mode), a model name that differs from the engine's, or a KV-event feed that is not connected")
	}
}

// forget drops a gone worker's series and window.
func (t *truth) forget(worker string) {
	l := prometheus.Labels{"worker": worker}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{t.reportedPrompt, t.predicted, t.reported, t.unreported, t.drift} {
		v.DeletePartialMatch(l)
	}
	t.mu.Lock()
	for k := range t.windows {
		if k.worker == worker {
			delete(t.windows, k)
		}
	}
	for k := range t.series {
		if k.worker == worker {
			delete(t.series, k)
		}
	}
	t.mu.Unlock()
}

// drifting reports whether any model of worker is drifting now.
func (t *truth) drifting(worker string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, w := range t.windows {
		if k.worker == worker && w.drifting {
			return true
		}
	}
	return false
}
