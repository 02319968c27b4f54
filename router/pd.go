package router

// This file is prefill/decode disaggregation (issue #20): a chat or completion request
// whose model is served by workers of role prefill and of role decode (workers[].role)
// is split in two, its prompt computed on a prefill worker chosen cache-aware (the
// configured policy over the prefill pool, from its KV events as for any request), its
// answer generated on a decode worker chosen by load. The wire protocol is
// pd.protocol's; the package doc's "Prefill/decode" paragraph says which detail was
// checked against which source.
//
// The flow hooks into forward.go at one place: Server.forwardPD runs after the prompt is
// hashed. It either answers the request itself (a routing error, a prefill worker's 4xx)
// or sets the call up for forward's attempt loop, which then runs the decode phase
// unchanged: the decode pick (pick with phaseDecode selects by load, selectDecode),
// retries on another decode worker before any byte, streaming, the SSE error event of a
// stream cut mid-way and the settlement that frees the request's load.
//
//	vllm    prefill (max_tokens 1, stream false, kv_transfer_params do_remote_decode)
//	        -> its answer's kv_transfer_params -> decode (the client's request with them)
//	sglang  one body with bootstrap_host/port/room of the prefill worker, sent to the
//	        prefill worker (in the background, its answer discarded) and to the decode
//	        worker (whose answer is the client's) at once
//
// Fallbacks, each logged and counted in kvroute_pd_fallbacks_total{reason}: a pool with
// no available worker (no_prefill, no_decode) or a prefill phase that failed on every
// worker tried (prefill_failed) serves the request whole on the other pool; a vLLM
// prefill answer without kv_transfer_params (no_kv_params) sends the decode worker the
// plain request, which it prefills itself (as vLLM's example proxy does).

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/scorer"
	"github.com/kvroute/kvroute/upstream"
)

// pdPhase is the part of a request a pick is for: which workers may take it and how
// one is chosen.
type pdPhase uint8

const (
	// phaseAll is aggregated serving over every worker (P/D off, other endpoints).
	phaseAll pdPhase = iota
	// phasePrefill picks among prefill-capable workers (role prefill or both) with
	// the configured policy: cache-aware on the prefill pool.
	phasePrefill
	// phaseDecode picks among decode-capable workers (role decode or both) by load
	// (selectDecode); the load it begins has no prefill (beginDecodeLoad).
	phaseDecode
	// phaseAggPrefill and phaseAggDecode serve a request whole on one pool, with the
	// configured policy: the fallback when the other pool cannot take part.
	phaseAggPrefill
	phaseAggDecode
)

// admits reports whether w may take a request in phase p.
func (p pdPhase) admits(w *upstream.Worker) bool {
	switch p {
	case phasePrefill, phaseAggPrefill:
		return w.Config.Role != configs.RoleDecode
	case phaseDecode, phaseAggDecode:
		return w.Config.Role != configs.RolePrefill
	}
	return true
}

// label is the phase in decisions ("" for aggregated serving over every worker).
func (p pdPhase) label() string {
	switch p {
	case phasePrefill:
		return "prefill"
	case phaseDecode:
		return "decode"
	case phaseAggPrefill:
		return "aggregated_prefill_pool"
	case phaseAggDecode:
		return "aggregated_decode_pool"
	}
	return ""
}

// Fallback reasons: the reason label of kvroute_pd_fallbacks_total.
const (
	fallbackNoPrefill     = "no_prefill"
	fallbackNoDecode      = "no_decode"
	fallbackPrefillFailed = "prefill_failed"
	fallbackNoKVParams    = "no_kv_params"
)

// defaultDecodeTokens is the output budget counted for a request that names no
// max_tokens (vLLM's own default is the model's remaining context: far more than most
// answers).
const defaultDecodeTokens = 256

// decodeTokensPerUnit converts queued decode tokens into decode cost: one unit (one
// request in flight) per this many tokens still to generate, a typical answer.
const decodeTokensPerUnit = 256

// maxPrefillAnswer bounds a prefill worker's answer read by the vLLM flow (one token
// and kv_transfer_params: block ids of a long prompt are tens of KiB).
const maxPrefillAnswer = 8 << 20

// pdState is the router's disaggregation state: metrics and the decode tokens queued
// on each worker. Safe for concurrent use.
type pdState struct {
	prefill, transfer, decodeTTFT prometheus.Observer
	fallbacks                     *prometheus.CounterVec // reason
	requests                      *prometheus.CounterVec // protocol
	// tokens maps a worker id to its *atomic.Int64 of decode tokens queued by this
	// router (the output budgets of its decodes in flight).
	tokens sync.Map
	// warned is when a fallback was last logged at warn level (UnixNano).
	warned atomic.Int64
}

func newPDState(reg prometheus.Registerer) (*pdState, error) {
	buckets := prometheus.ExponentialBuckets(0.001, 2, 18)
	prefill := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "kvroute_pd_prefill_seconds", Buckets: buckets,
		Help: "Prefill phase of disaggregated requests: from sending the prefill worker its request to its answer (vllm), or to the end of its answer (sglang).",
	})
	transfer := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "kvroute_pd_transfer_seconds", Buckets: buckets,
		Help: "KV transfer of disaggregated sglang requests, as seen from the router: from the prefill worker's answer to the decode worker's first chunk (it includes the first decode step). vllm's transfer is pulled by the decode worker inside kvroute_pd_decode_ttft_seconds and is not observed apart.",
	})
	ttft := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "kvroute_pd_decode_ttft_seconds", Buckets: buckets,
		Help: "Decode phase of streamed disaggregated requests: from sending the decode worker its request to its first chunk.",
	})
	fallbacks := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kvroute_pd_fallbacks_total",
		Help: "Disaggregated requests served otherwise, by reason: no_prefill, no_decode (no available worker in the pool: served whole on the other pool), prefill_failed (every prefill worker tried failed: served whole on the decode pool), no_kv_params (a vllm prefill answer without kv_transfer_params: the decode worker prefilled itself).",
	}, []string{"reason"})
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kvroute_pd_requests_total",
		Help: "Requests whose prefill phase succeeded and whose decode phase began, by protocol (vllm, sglang).",
	}, []string{"protocol"})
	for _, c := range []prometheus.Collector{prefill, transfer, ttft, fallbacks, requests} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register pd metrics: %w", err)
		}
	}
	for _, r := range []string{fallbackNoPrefill, fallbackNoDecode, fallbackPrefillFailed, fallbackNoKVParams} {
		fallbacks.WithLabelValues(r)
	}
	return &pdState{prefill: prefill, transfer: transfer, decodeTTFT: ttft, fallbacks: fallbacks, requests: requests}, nil
}

// queued returns the counter of decode tokens queued on worker id.
func (p *pdState) queued(id string) *atomic.Int64 {
	if v, ok := p.tokens.Load(id); ok {
		return v.(*atomic.Int64)
	}
	v, _ := p.tokens.LoadOrStore(id, new(atomic.Int64))
	return v.(*atomic.Int64)
}

// pdCall is one disaggregated request's state shared by its phases; its times are
// read by the streamPipe after the handler returned.
type pdCall struct {
	// sent is when the decode request was sent (UnixNano; 0 before).
	sent atomic.Int64
	// prefillDone is when the prefill worker's answer ended (UnixNano; 0 before).
	prefillDone atomic.Int64
	// sglang is the prefill half of an sglang request, sent with the first decode
	// attempt; nil for vllm.
	sglang *sglPrefill
}

// sglPrefill is the prefill half of an sglang request.
type sglPrefill struct {
	w    *upstream.Worker
	load *upstream.Load
	body []byte
	sent bool
}

// pdOn reports whether requests for model are disaggregated: the pool holds a worker of
// role prefill and one of role decode serving it (healthy or not: a pool that is down
// falls back, counted, rather than silently turning P/D off).
func (s *Server) pdOn(model string) bool {
	var p, d bool
	for _, w := range s.pool.Workers() {
		switch w.Config.Role {
		case configs.RolePrefill:
			p = p || w.Serves(model)
		case configs.RoleDecode:
			d = d || w.Serves(model)
		}
		if p && d {
			return true
		}
	}
	return false
}

// poolServes reports whether an available worker of phase's pool serves the request.
func (s *Server) poolServes(st *routeState, phase pdPhase) bool {
	st.workers = s.pool.Candidates(st.workers[:0], st.req.Model)
	for _, w := range st.workers {
		if phase.admits(w) {
			return true
		}
	}
	return false
}

// forwardPD runs the prefill phase of a disaggregated request. It returns true when it
// answered the client itself; false when forward's attempt loop is to go on: with the
// decode phase set up (c.body, c.prefill, st.phase), with a fallback pool, or untouched
// when the request is not disaggregated.
func (s *Server) forwardPD(ctx *fasthttp.RequestCtx, c *call, class int) bool {
	st := c.st
	if !s.pdOn(c.r.Model) {
		return false
	}
	hasP, hasD := s.poolServes(st, phasePrefill), s.poolServes(st, phaseDecode)
	switch {
	case !hasP && !hasD:
		return false // the loop answers: no healthy worker
	case !hasP:
		s.pdFallback(c, phaseAggDecode, fallbackNoPrefill, nil)
		return false
	case !hasD:
		s.pdFallback(c, phaseAggPrefill, fallbackNoDecode, nil)
		return false
	}
	fields, err := pdFields(ctx.PostBody())
	if err != nil { // parseRequest accepted it as a JSON object: not reached
		return false
	}
	st.decodeTokens = requestedTokens(fields)
	if s.cfg.PD.Protocol == configs.PDSGLang {
		return s.pdSGLang(ctx, c, class, fields)
	}
	return s.pdVLLM(ctx, c, class, fields)
}

// pdFallback serves c whole on phase's pool.
func (s *Server) pdFallback(c *call, phase pdPhase, reason string, err error) {
	s.pd.fallbacks.WithLabelValues(reason).Inc()
	s.pdWarn(c, reason, err, "prefill/decode: serving the request whole on one pool", "pool", phase.label())
	c.st.phase, c.st.tried = phase, c.st.tried[:0]
}

// pdWarn logs a fallback at warn level at most once per pdWarnEvery (a pool that is
// down would otherwise log every request), at debug level otherwise.
func (s *Server) pdWarn(c *call, reason string, err error, msg string, args ...any) {
	args = append(args, "request_id", c.reqID, "model", c.r.Model, "reason", reason, "err", err)
	now := time.Now().UnixNano()
	last := s.pd.warned.Load()
	if now-last >= int64(pdWarnEvery) && s.pd.warned.CompareAndSwap(last, now) {
		s.log.Warn(msg, args...)
		return
	}
	s.log.Debug(msg, args...)
}

// pdWarnEvery is the least time between two fallback warnings.
const pdWarnEvery = 10 * time.Second

// pdVLLM is vLLM's flow: the prefill worker computes the prompt's KV cache and
// answers one token with kv_transfer_params naming the blocks; the decode worker gets
// the client's request with those params and pulls the blocks itself.
func (s *Server) pdVLLM(ctx *fasthttp.RequestCtx, c *call, class int, fields map[string]json.RawMessage) bool {
	st, model := c.st, c.r.Model
	pbody, err := vllmPrefillBody(fields)
	if err != nil {
		return false
	}
	st.phase = phasePrefill
	var lastErr error
	for attempt := 0; attempt < s.cfg.MaxAttempts; attempt++ {
		w, overlap, load, err := s.route(ctx, st, c.reqID, attempt, class)
		if err != nil {
			s.failRoute(ctx, model, c.start, err)
			return true
		}
		if w == nil {
			break
		}
		if attempt > 0 {
			s.metrics.retries.WithLabelValues(model).Inc()
		}
		st.tried = append(st.tried, w)
		t0 := time.Now()
		code, ctype, body, err := s.pdPost(ctx, c, w, pbody)
		if err != nil {
			o := outcome{w: w, load: load, err: err, code: code}
			s.settle(ctx, c, &o) // ends the load, counts against the worker
			lastErr = err
			s.log.Debug("prefill attempt failed", "request_id", c.reqID, "worker", w.ID, "err", err)
			continue
		}
		load.End()
		s.pool.ReportSuccess(w)
		if code != fasthttp.StatusOK {
			// A 4xx: the request itself is refused, and a decode worker would refuse it
			// too. The prefill worker's answer is the client's.
			ctx.SetStatusCode(code)
			ctx.SetContentType(ctype)
			ctx.SetBody(body)
			s.setWorkerHeader(ctx, w.ID)
			s.count(w.ID, model, code, c.start)
			return true
		}
		now := time.Now()
		s.pd.prefill.Observe(now.Sub(t0).Seconds())
		s.committed(w, st, overlap, model)
		s.traffic.routed(w.ID, model, st.req.PromptTokens, overlap*st.req.BlockSize, now)
		kvp, err := kvTransferParams(body)
		if err != nil || kvp == nil {
			s.pd.fallbacks.WithLabelValues(fallbackNoKVParams).Inc()
			s.pdWarn(c, fallbackNoKVParams, err, "prefill/decode: the prefill answer has no kv_transfer_params; the decode worker prefills itself", "worker", w.ID)
		}
		dbody, err := vllmDecodeBody(fields, kvp)
		if err != nil {
			return false // kvp is a JSON object: not reached
		}
		c.body, c.prefill, c.pd = dbody, w.ID, &pdCall{}
		c.pd.prefillDone.Store(now.UnixNano())
		st.phase, st.tried = phaseDecode, st.tried[:0]
		s.pd.requests.WithLabelValues(configs.PDVLLM).Inc()
		return false
	}
	s.pdFallback(c, phaseAggDecode, fallbackPrefillFailed, lastErr)
	return false
}

// pdSGLang is SGLang's flow: one request body naming the prefill worker's bootstrap
// server and a random room, sent to the prefill and the decode worker at once (pdSend,
// at the decode attempt). The prefill worker is chosen here; the decode worker by
// forward's loop.
func (s *Server) pdSGLang(ctx *fasthttp.RequestCtx, c *call, class int, fields map[string]json.RawMessage) bool {
	st, model := c.st, c.r.Model
	st.phase = phasePrefill
	w, overlap, load, err := s.route(ctx, st, c.reqID, 0, class)
	if err != nil {
		s.failRoute(ctx, model, c.start, err)
		return true
	}
	if w == nil {
		s.pdFallback(c, phaseAggDecode, fallbackNoPrefill, nil)
		return false
	}
	body, err := sglangBody(fields, hostOf(w.URL), w.Config.BootstrapPort, rand.Int64())
	if err != nil {
		load.End()
		return false
	}
	// The prefill worker will hold the prompt's blocks: predicted now, as the handler's
	// state is gone by the time its answer ends.
	s.committed(w, st, overlap, model)
	s.traffic.routed(w.ID, model, st.req.PromptTokens, overlap*st.req.BlockSize, time.Now())
	c.body, c.prefill = body, w.ID
	c.pd = &pdCall{sglang: &sglPrefill{w: w, load: load, body: body}}
	st.phase, st.tried = phaseDecode, st.tried[:0]
	s.pd.requests.WithLabelValues(configs.PDSGLang).Inc()
	return false
}

// pdSend is called by attempt as it sends a disaggregated request's decode half: it
// starts the decode clock and, for sglang, sends the prefill half at the same moment
// (once: a decode retry reuses the room the prefill worker is serving).
func (s *Server) pdSend(ctx *fasthttp.RequestCtx, c *call) {
	c.pd.sent.Store(time.Now().UnixNano())
	p := c.pd.sglang
	if p == nil || p.sent {
		return
	}
	p.sent = true
	req := s.workerRequest(ctx, c, p.w, p.body)
	deadline := c.start.Add(s.cfg.Timeouts.Total)
	pc := c.pd
	// The goroutine ends with the exchange, which the deadline bounds; it holds
	// copies only (req), never the RequestCtx.
	go func() {
		t0 := time.Now()
		resp := fasthttp.AcquireResponse()
		err := p.w.Client(false).DoDeadline(req, resp, deadline)
		fasthttp.ReleaseRequest(req)
		code := resp.StatusCode()
		fasthttp.ReleaseResponse(resp)
		p.load.End()
		if err == nil && (code >= 500 || code == fasthttp.StatusTooManyRequests) {
			err = &statusError{worker: p.w.ID, code: code}
		}
		if err != nil {
			if code != fasthttp.StatusTooManyRequests {
				s.pool.ReportFailure(p.w, err)
			}
			s.metrics.upErrors.WithLabelValues(p.w.ID, errorKind(err)).Inc()
			return
		}
		s.pool.ReportSuccess(p.w)
		now := time.Now()
		pc.prefillDone.Store(now.UnixNano())
		s.pd.prefill.Observe(now.Sub(t0).Seconds())
	}()
}

// pdEnd runs when the handler's attempts are over: an sglang prefill half that was
// never sent (no decode worker could be tried) ends its load on the prefill worker.
func (s *Server) pdEnd(c *call) {
	if c.pd != nil && c.pd.sglang != nil && !c.pd.sglang.sent {
		c.pd.sglang.load.End()
	}
}

// pdFirstChunk observes a disaggregated stream's first chunk from its decode worker.
func (s *Server) pdFirstChunk(p *pdCall) {
	now := time.Now().UnixNano()
	if sent := p.sent.Load(); sent > 0 {
		s.pd.decodeTTFT.Observe(float64(now-sent) / 1e9)
	}
	if done := p.prefillDone.Load(); done > 0 && p.sglang != nil && now > done {
		s.pd.transfer.Observe(float64(now-done) / 1e9)
	}
}

// setPrefillHeader names a disaggregated request's prefill worker beside
// x-kvroute-worker (which names its decode worker), under headers.worker.
func (s *Server) setPrefillHeader(ctx *fasthttp.RequestCtx, c *call) {
	if c.prefill != "" && s.cfg.Headers.Worker {
		ctx.Response.Header.Set("x-kvroute-prefill-worker", c.prefill)
	}
}

// workerRequest builds the request sent to w with body: the client's headers less the
// hop-by-hop ones and its credentials, the worker's key, the request id.
func (s *Server) workerRequest(ctx *fasthttp.RequestCtx, c *call, w *upstream.Worker, body []byte) *fasthttp.Request {
	req := fasthttp.AcquireRequest()
	ctx.Request.Header.CopyTo(&req.Header)
	stripHopByHop(&req.Header, nil) // nil: SGLang's prefill half may run beside the decode's
	s.stripCredentials(&req.Header, w.HasAPIKey())
	w.Authorize(&req.Header)
	req.SetRequestURI(w.URL + c.path)
	req.Header.Set("X-Request-Id", c.reqID)
	var xff [64]byte
	req.Header.SetBytesV("X-Forwarded-For", appendForwardedFor(xff[:0], ctx))
	req.Header.SetContentTypeBytes([]byte("application/json"))
	req.SetBodyRaw(body)
	return req
}

// pdPost sends a vLLM prefill request to w and returns its answer: err is set for a
// transport failure, a 5xx or 429 (*statusError, worth a retry elsewhere) or an answer
// over maxPrefillAnswer; otherwise code, content type and a copy of the body.
func (s *Server) pdPost(ctx *fasthttp.RequestCtx, c *call, w *upstream.Worker, body []byte) (code int, ctype string, out []byte, err error) {
	req := s.workerRequest(ctx, c, w, body)
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseResponse(resp)
	err = w.Client(false).DoDeadline(req, resp, c.start.Add(s.cfg.Timeouts.Total))
	fasthttp.ReleaseRequest(req)
	if err != nil {
		return 0, "", nil, fmt.Errorf("worker %s: %w", w.ID, err)
	}
	code = resp.StatusCode()
	if code >= 500 || code == fasthttp.StatusTooManyRequests {
		se := &statusError{worker: w.ID, code: code, contentType: string(resp.Header.ContentType())}
		se.body = readLimited(resp, 64<<10)
		return code, "", nil, se
	}
	if len(resp.Body()) > maxPrefillAnswer {
		return code, "", nil, fmt.Errorf("worker %s: %w: prefill answer over %d bytes", w.ID, errBadPrefillAnswer, maxPrefillAnswer)
	}
	return code, string(resp.Header.ContentType()), append([]byte(nil), resp.Body()...), nil
}

// errBadPrefillAnswer is a prefill answer the router cannot use.
var errBadPrefillAnswer = errors.New("unusable prefill answer")

// selectDecode returns the index of the decode candidate with the least load, and
// fills costs: DecodeCost is the scraped KV usage in percent (0 without fresh
// metrics), QueueCost the requests in flight plus one per decodeTokensPerUnit decode
// tokens this router has queued there; ties break at random.
func (s *Server) selectDecode(cands []scorer.Candidate, costs []scorer.Cost) int {
	best, ties := -1, 0
	for i := range cands {
		c := &cands[i]
		kv := 0.0
		if c.HasMetrics {
			kv = 100 * c.KVUsage
		}
		q := float64(c.InFlight) + float64(s.pd.queued(c.ID).Load())/decodeTokensPerUnit
		costs[i] = scorer.Cost{Decode: kv, Queue: q, Total: kv + q}
		switch {
		case best < 0 || costs[i].Total < costs[best].Total:
			best, ties = i, 1
		case costs[i].Total == costs[best].Total:
			ties++
			if rand.IntN(ties) == 0 {
				best = i
			}
		}
	}
	return max(best, 0)
}

// beginDecodeLoad counts a decode on w: in flight, no prefill (done elsewhere), the KV
// blocks of its prompt and output budget held, and its output budget queued.
func (s *Server) beginDecodeLoad(w *upstream.Worker, st *routeState) *upstream.Load {
	bs := st.req.BlockSize
	if bs <= 0 {
		bs = defaultBlockSize
	}
	n := st.decodeTokens
	blocks := int64(math.Ceil(float64(int64(st.req.PromptTokens)+n) / float64(bs)))
	q := s.pd.queued(w.ID)
	q.Add(n)
	ended := s.queue.ended
	l := w.BeginNotify(0, blocks, s.cfg.Timeouts.Total+loadGrace, func() {
		q.Add(-n)
		ended()
	})
	if s.replica != nil {
		s.replica.Changed()
	}
	return l
}

// pdFields decodes a request body, a JSON object, into its members.
func pdFields(body []byte) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("%w: %w", errInvalidJSON, err)
	}
	if m == nil {
		return nil, fmt.Errorf("%w: not an object", errInvalidJSON)
	}
	return m, nil
}

// requestedTokens is the request's output budget: max_completion_tokens, else
// max_tokens, else defaultDecodeTokens; a value that is not a positive integer of at
// most 2^31 counts as the default.
func requestedTokens(m map[string]json.RawMessage) int64 {
	for _, k := range []string{"max_completion_tokens", "max_tokens"} {
		var n int64
		if raw, ok := m[k]; ok && json.Unmarshal(raw, &n) == nil && n > 0 && n <= math.MaxInt32 {
			return n
		}
	}
	return defaultDecodeTokens
}

// vllmRemoteDecode is the kv_transfer_params of a prefill request: vLLM's example
// proxy (tests/v1/kv_connector/nixl_integration/toy_proxy_server.py) sends exactly these.
var vllmRemoteDecode = json.RawMessage(`{"do_remote_decode":true,"do_remote_prefill":false,"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}`)

// vllmPrefillBody is the prefill request of vLLM's flow: the client's request with one
// output token (max_tokens and, when present, max_completion_tokens), stream false, no
// stream_options, and without min_tokens/min_completion_tokens, which a one-token
// prefill cannot honour (the example proxy drops them for the prefill worker and keeps
// them for the decode worker).
func vllmPrefillBody(m map[string]json.RawMessage) ([]byte, error) {
	p := make(map[string]json.RawMessage, len(m)+3)
	for k, v := range m {
		switch k {
		case "stream_options", "min_tokens", "min_completion_tokens":
			continue
		}
		p[k] = v
	}
	one := json.RawMessage("1")
	p["max_tokens"] = one
	if _, ok := m["max_completion_tokens"]; ok {
		p["max_completion_tokens"] = one
	}
	p["stream"] = json.RawMessage("false")
	p["kv_transfer_params"] = vllmRemoteDecode
	return json.Marshal(p)
}

// kvTransferParams returns the kv_transfer_params object of a prefill answer; nil when
// the answer has none (or null). An answer that is not a JSON object, or whose
// kv_transfer_params is not an object, is an error.
func kvTransferParams(answer []byte) (json.RawMessage, error) {
	var a struct {
		KV json.RawMessage `json:"kv_transfer_params"`
	}
	if err := json.Unmarshal(answer, &a); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadPrefillAnswer, err)
	}
	if len(a.KV) == 0 || string(a.KV) == "null" {
		return nil, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(a.KV, &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("%w: kv_transfer_params is not an object", errBadPrefillAnswer)
	}
	return a.KV, nil
}

// vllmDecodeBody is the decode request of vLLM's flow: the client's request with the
// prefill answer's kv_transfer_params (do_remote_prefill true, do_remote_decode false,
// whatever the prefill worker said); kvp nil sends the client's request as it is.
func vllmDecodeBody(m map[string]json.RawMessage, kvp json.RawMessage) ([]byte, error) {
	d := make(map[string]json.RawMessage, len(m)+1)
	for k, v := range m {
		d[k] = v
	}
	if kvp != nil {
		var params map[string]json.RawMessage
		if err := json.Unmarshal(kvp, &params); err != nil {
			return nil, fmt.Errorf("%w: kv_transfer_params: %w", errBadPrefillAnswer, err)
		}
		params["do_remote_prefill"] = json.RawMessage("true")
		params["do_remote_decode"] = json.RawMessage("false")
		b, err := json.Marshal(params)
		if err != nil {
			return nil, err
		}
		d["kv_transfer_params"] = b
	} else {
		delete(d, "kv_transfer_params")
	}
	return json.Marshal(d)
}

// sglangBody is the request of SGLang's flow, sent to both workers: the client's
// request with bootstrap_host (the prefill worker's host), bootstrap_port (its
// workers[].bootstrap_port; null when 0, SGLang's default) and bootstrap_room (in
// [0, 2^63), as the SGLang router draws it).
func sglangBody(m map[string]json.RawMessage, host string, port int, room int64) ([]byte, error) {
	d := make(map[string]json.RawMessage, len(m)+3)
	for k, v := range m {
		d[k] = v
	}
	h, err := json.Marshal(host)
	if err != nil {
		return nil, err
	}
	d["bootstrap_host"] = h
	d["bootstrap_port"] = json.RawMessage("null")
	if port > 0 {
		d["bootstrap_port"] = json.RawMessage(fmt.Sprint(port))
	}
	d["bootstrap_room"] = json.RawMessage(fmt.Sprint(room & math.MaxInt64))
	return json.Marshal(d)
}

// hostOf returns the host name or address of a worker's base URL, without port or
// IPv6 brackets.
func hostOf(base string) string {
	u, err := url.Parse(base)
	if err != nil {
		return ""
	}
	return u.Hostname()
}
