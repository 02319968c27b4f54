package sim

import (
	"context"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Info says where a worker listens, as printed by the kvsim command. Events and Replay
// are DP rank 0's; Ranks lists every rank when there are several.
type Info struct {
	ID     string     `json:"id"`
	URL    string     `json:"url"`
	Events string     `json:"events"`
	Replay string     `json:"replay"`
	Ranks  []RankInfo `json:"ranks,omitempty"`
	// Role is the worker's P/D role, "prefill" or "decode"; omitted for "both" (the
	// default). BootstrapPort is a prefill worker's side-channel port (SGLang's
	// bootstrap_port, vLLM's remote_port); omitted for the other roles.
	Role          string `json:"role,omitempty"`
	BootstrapPort int    `json:"bootstrap_port,omitempty"`
}

// RankInfo gives one DP rank's event endpoints.
type RankInfo struct {
	Rank   int    `json:"rank"`
	Events string `json:"events"`
	Replay string `json:"replay"`
}

// Stats is a snapshot of a worker's counters (since start) and gauges.
type Stats struct {
	// Requests counts generation requests accepted by the engine.
	Requests uint64
	// Finished counts requests that generated all their tokens.
	Finished uint64
	// Aborted counts requests whose client went away or that a fault ended.
	Aborted uint64
	// PromptTokens is the sum of accepted prompts' lengths.
	PromptTokens uint64
	// CachedTokens is the sum of the cached_tokens reported to clients.
	CachedTokens uint64
	// GeneratedTokens counts output tokens.
	GeneratedTokens uint64
	// Preemptions counts requests preempted for lack of KV blocks.
	Preemptions uint64
	// Steps counts engine steps.
	Steps uint64
	// BusyTime is the sum of the modelled (time-scaled, fault-slowed) durations of all
	// steps: the engine's busy time, exact whatever the host's load. BusyTime divided by
	// wall time is the worker's utilization.
	BusyTime time.Duration
	// LagTime is the wall time the engine fell behind its modelled schedule by more
	// than 50 ms and gave up catching up (the host ran it late: CPU contention, or a
	// step's own CPU work took longer than its scaled duration). Modelled throughput is
	// lost for that time, so latencies are inflated; near 0 on an unloaded host.
	LagTime time.Duration
	// Running and Waiting are the engine's current queue lengths.
	Running, Waiting int
	// UsedBlocks are blocks referenced by requests; CachedBlocks distinct cached hashes;
	// TotalBlocks the capacity.
	UsedBlocks, CachedBlocks, TotalBlocks int
	// CPULoadedTokens counts prompt tokens loaded back from the CPU offload tier
	// (Config.CPUBlocks) instead of recomputed; they are part of CachedTokens.
	// CPUBlocks is the blocks the tier holds now.
	CPULoadedTokens uint64
	CPUBlocks       int
	// NextSeq is the seq the next event batch gets; EventBatchesSent and
	// EventBatchesDropped count batches sent on and dropped from the PUB socket.
	NextSeq, EventBatchesSent, EventBatchesDropped uint64
	// Failed, Hung and Died count requests hit by the matching fault.
	Failed, Hung, Died uint64
	// Unauthorized counts requests refused for a missing or wrong API key
	// (Config.RequireAPIKey).
	Unauthorized uint64
}

// Worker is one simulated engine: an OpenAI-compatible HTTP server, a continuous-batching
// engine over a paged prefix cache, and a KV-event publisher. Its methods are safe for
// concurrent use. It must not be copied.
type Worker struct {
	id      string
	cfg     Config
	prof    Profile
	tz      tokenizers
	ranks   []*Rank
	metrics *metrics
	addr    string // the HTTP listener's host:port
	url     string
	// modelJS are the served model names as JSON strings: the base model's, then each
	// LoRA adapter's, so modelJS[loraID] is a request's.
	modelJS [][]byte
	maxLen  int // max_model_len, capped to what the KV cache holds
	blocks  int // KV-cache capacity in blocks
	ctx     context.Context
	cancel  context.CancelFunc
	// hangCtx ends when the server shuts down, releasing requests the hang fault holds.
	hangCtx    context.Context
	hangCancel context.CancelFunc
	reqSeq     atomic.Uint64
	// resp holds the stored responses of the Responses API (responses.go).
	resp *respStore
	// pd is the P/D side channel and rooms (pd.go).
	pd *pdState

	failed, hung, died atomic.Uint64
	unauthorized       atomic.Uint64
	downUntil          atomic.Int64 // unix nanos

	api server // the HTTP API

	// faultMu guards faults and rng.
	faultMu sync.Mutex
	faults  Faults
	rng     *rand.Rand
}

// StartWorker starts a worker with the given id, binding its HTTP server, event PUB and
// replay ROUTER sockets on host at the given ports (0: a free port; with
// data_parallel_size > 1, rank r binds eventsPort+r and replayPort+r as vLLM does, or
// free ports). cfg must be valid. The worker runs until [Worker.Close] or ctx ends.
func StartWorker(ctx context.Context, id string, cfg Config, host string, httpPort, eventsPort, replayPort int) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("worker %s: %w", id, err)
	}
	prof, _ := LookupProfile(cfg.Profile)
	capacity := cfg.KVBlocks
	if capacity == 0 {
		capacity = max(prof.KVBlocks*16/cfg.BlockSize, 1)
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &Worker{
		id: id, cfg: cfg, prof: prof, tz: cfg.tokenizers(),
		ctx: ctx, cancel: cancel,
		rng: rand.New(rand.NewPCG(uint64(cfg.Seed), 0x6b7673696d)),
	}
	for _, m := range append([]string{cfg.Model}, cfg.LoRA...) {
		js, _ := json.Marshal(m)
		w.modelJS = append(w.modelJS, js)
	}
	// A request must fit in the cache, or it could never be scheduled (vLLM refuses to
	// start when max_model_len exceeds the KV capacity).
	w.maxLen = min(cfg.MaxModelLen, capacity*cfg.BlockSize)
	w.blocks = capacity
	w.hangCtx, w.hangCancel = context.WithCancel(ctx)
	w.metrics = newMetrics(&w.cfg, capacity)
	fail := func(err error) (*Worker, error) {
		cancel()
		return nil, errors.Join(fmt.Errorf("worker %s: %w", id, err), closeRanks(w.ranks))
	}
	for i := range cfg.DataParallelSize {
		rk, err := startRank(ctx, w, i, host, eventsPort, replayPort, capacity)
		if err != nil {
			return fail(err)
		}
		w.ranks = append(w.ranks, rk)
	}
	if err := w.SetFaults(cfg.Faults); err != nil {
		return fail(err)
	}
	if err := w.startPD(host); err != nil {
		return fail(err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(httpPort)))
	if err != nil {
		_ = w.pd.close()
		return fail(fmt.Errorf("listen http: %w", err))
	}
	w.addr = ln.Addr().String()
	w.url = "http://" + w.addr
	w.api = server{handler: w.routes(), ctx: w.ctx, addr: w.addr, onShutdown: w.hangCancel}
	w.api.start(ln)
	return w, nil
}

// ID returns the worker's id.
func (w *Worker) ID() string { return w.id }

// URL returns the worker's HTTP base URL, "http://127.0.0.1:port".
func (w *Worker) URL() string { return w.url }

// EventsEndpoint returns the KV-event PUB endpoint of DP rank 0,
// "tcp://127.0.0.1:port".
func (w *Worker) EventsEndpoint() string { return w.ranks[0].EventsEndpoint() }

// ReplayEndpoint returns the KV-event replay ROUTER endpoint of DP rank 0.
func (w *Worker) ReplayEndpoint() string { return w.ranks[0].ReplayEndpoint() }

// Ranks returns the worker's data-parallel ranks, in index order (one unless
// data_parallel_size is set). The slice must not be modified.
func (w *Worker) Ranks() []*Rank { return w.ranks }

// Info returns the worker's id and endpoints.
func (w *Worker) Info() Info {
	info := Info{ID: w.id, URL: w.url, Events: w.EventsEndpoint(), Replay: w.ReplayEndpoint(),
		BootstrapPort: w.pd.port}
	if r := w.cfg.role(); r != RoleBoth {
		info.Role = r
	}
	if len(w.ranks) > 1 {
		for _, rk := range w.ranks {
			info.Ranks = append(info.Ranks, RankInfo{Rank: rk.index, Events: rk.EventsEndpoint(), Replay: rk.ReplayEndpoint()})
		}
	}
	return info
}

// Config returns the worker's configuration.
func (w *Worker) Config() Config { return w.cfg }

// Tokenizer returns the worker's tokenizer for text as a completions prompt is
// tokenized (with the BodyTokenizer, special tokens added).
func (w *Worker) Tokenizer() Tokenizer {
	if b := w.tz.body; b != nil {
		return TokenizerFunc(func(s string) []uint32 { return b.Encode(s, true) })
	}
	return w.tz.tk
}

// EventsSubscribed reports whether, on every DP rank, a subscription matching the
// worker's topic has reached the PUB socket (ZMQ drops messages published before that).
func (w *Worker) EventsSubscribed() bool {
	for _, rk := range w.ranks {
		if !rk.EventsSubscribed() {
			return false
		}
	}
	return true
}

// Stats returns a snapshot of the worker's counters and gauges, summed over its DP
// ranks (see [Rank.Stats] for one rank).
func (w *Worker) Stats() Stats {
	var s Stats
	for _, rk := range w.ranks {
		s.add(rk.Stats())
	}
	s.Failed, s.Hung, s.Died = w.failed.Load(), w.hung.Load(), w.died.Load()
	s.Unauthorized = w.unauthorized.Load()
	return s
}

// CachedBlockHashes returns the engine hashes of every block in the prefix caches of
// all DP ranks (once per cached copy), in no particular order.
func (w *Worker) CachedBlockHashes() []uint64 {
	var out []uint64
	for _, rk := range w.ranks {
		out = append(out, rk.CachedBlockHashes()...)
	}
	return out
}

// SetFaults replaces the worker's faults after validating them. DropEventBatches is
// applied at once as an action.
func (w *Worker) SetFaults(f Faults) error {
	if err := f.Validate(); err != nil {
		return fmt.Errorf("set faults: %w", err)
	}
	w.faultMu.Lock()
	w.faults = f
	w.faults.DropEventBatches = 0
	w.faultMu.Unlock()
	slow := f.SlowFactor
	if slow == 0 {
		slow = 1
	}
	for _, rk := range w.ranks {
		rk.eng.slow.Store(math.Float64bits(slow))
		if f.DropEventBatches > 0 {
			rk.pub.DropNext(f.DropEventBatches)
		}
		if d := time.Duration(f.EventDelayMS) * time.Millisecond; d != rk.pub.Delay() {
			rk.pub.SetDelay(d)
		}
	}
	return nil
}

// Faults returns the worker's current faults.
func (w *Worker) Faults() Faults {
	w.faultMu.Lock()
	defer w.faultMu.Unlock()
	return w.faults
}

// Restart simulates an engine restart: requests in flight lose their connection, the
// cache empties without BlockRemoved events, the event seq restarts at 0 with an empty
// replay buffer (and the event sockets are rebound with opt.Rebind), and the worker
// answers 503 for opt.Down. An error means the sockets could not be bound again.
func (w *Worker) Restart(opt RestartOptions) error {
	if opt.Down == 0 && opt.DownMS > 0 {
		opt.Down = time.Duration(opt.DownMS) * time.Millisecond
	}
	w.downUntil.Store(time.Now().Add(opt.Down).UnixNano())
	if opt.Offline {
		w.api.goOffline(opt.Down)
		w.pd.side.goOffline(opt.Down)
	}
	var err error
	for _, rk := range w.ranks {
		err = errors.Join(err, rk.eng.restart(opt.AnnounceClear, opt.Rebind))
	}
	if err != nil {
		return fmt.Errorf("restart %s: %w", w.id, err)
	}
	return nil
}

// ResetPrefixCache empties the prefix cache and publishes AllBlocksCleared, like vLLM's
// POST /reset_prefix_cache. It fails while requests are running.
func (w *Worker) ResetPrefixCache() error {
	var err error
	for _, rk := range w.ranks {
		err = errors.Join(err, rk.eng.resetPrefixCache())
	}
	if err != nil {
		return fmt.Errorf("reset prefix cache: %w", err)
	}
	return nil
}

// Close stops the worker at once: open connections are closed, the engine stops and the
// event sockets close.
func (w *Worker) Close() error {
	err := errors.Join(w.api.close(), w.pd.close())
	w.cancel()
	return errors.Join(err, closeRanks(w.ranks))
}

// Shutdown stops accepting requests and waits for the ones in flight to finish (or ctx
// to end), then closes the worker.
func (w *Worker) Shutdown(ctx context.Context) error {
	var err error
	if srv := w.api.current(); srv != nil {
		err = srv.Shutdown(ctx)
	}
	return errors.Join(err, w.Close())
}

func (w *Worker) down() bool { return time.Now().UnixNano() < w.downUntil.Load() }

func (w *Worker) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/completions", func(rw http.ResponseWriter, r *http.Request) { w.serveGenerate(rw, r, false) })
	mux.HandleFunc("POST /v1/chat/completions", func(rw http.ResponseWriter, r *http.Request) { w.serveGenerate(rw, r, true) })
	mux.HandleFunc("GET /v1/models", w.serveModels)
	mux.HandleFunc("POST /tokenize", w.serveTokenize)
	w.resp = newRespStore()
	mux.HandleFunc("POST /v1/responses", w.serveResponses)
	mux.HandleFunc("GET /v1/responses/{id}", w.serveResponseByID)
	mux.HandleFunc("DELETE /v1/responses/{id}", w.serveResponseByID)
	mux.HandleFunc("POST /v1/responses/{id}/cancel", w.serveResponseByID)
	mux.HandleFunc("POST /detokenize", w.serveAux("detokenize"))
	for _, p := range []string{"/v1/rerank", "/rerank"} {
		mux.HandleFunc("POST "+p, w.serveAux("rerank"))
	}
	for _, p := range []string{"/v1/score", "/score"} {
		mux.HandleFunc("POST "+p, w.serveAux("score"))
	}
	mux.HandleFunc("POST /pooling", w.serveAux("pooling"))
	mux.HandleFunc("POST /classify", w.serveAux("classify"))
	mux.HandleFunc("POST /v1/audio/transcriptions", w.serveAux("audio"))
	mux.HandleFunc("POST /v1/audio/translations", w.serveAux("audio"))
	mux.HandleFunc("GET /health", func(rw http.ResponseWriter, _ *http.Request) {
		if w.down() {
			rw.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		rw.WriteHeader(http.StatusOK)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(w.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("POST /reset_prefix_cache", func(rw http.ResponseWriter, _ *http.Request) {
		if err := w.ResetPrefixCache(); err != nil {
			writeError(rw, &apiError{status: http.StatusConflict, typ: "ConflictError", msg: err.Error()})
			return
		}
		rw.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("GET /sim/fault", func(rw http.ResponseWriter, _ *http.Request) { writeJSON(rw, w.Faults()) })
	mux.HandleFunc("POST /sim/fault", w.serveSetFault)
	mux.HandleFunc("POST /sim/restart", w.serveRestart)
	mux.HandleFunc("GET /sim/stats", func(rw http.ResponseWriter, _ *http.Request) { writeJSON(rw, w.Stats()) })
	if w.cfg.RequireAPIKey == "" {
		return mux
	}
	want := "Bearer " + w.cfg.RequireAPIKey
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		got := r.Header.Values("Authorization")
		if !strings.HasPrefix(r.URL.Path, "/sim/") && (len(got) != 1 || subtle.ConstantTimeCompare([]byte(got[0]), []byte(want)) != 1) {
			w.unauthorized.Add(1)
			writeError(rw, &apiError{status: http.StatusUnauthorized, typ: "Unauthorized", msg: "missing or wrong API key"})
			return
		}
		mux.ServeHTTP(rw, r)
	})
}

const maxBody = 64 << 20

func readBody(r *http.Request) ([]byte, error) {
	body, err := readAllLimit(http.MaxBytesReader(nil, r.Body, maxBody))
	if err != nil {
		return nil, badRequest("read body: %v", err)
	}
	return body, nil
}

func (w *Worker) serveSetFault(rw http.ResponseWriter, r *http.Request) {
	body, err := readBody(r)
	if err != nil {
		writeError(rw, err)
		return
	}
	var f Faults
	if err := strictJSON(body, &f); err != nil {
		writeError(rw, badRequest("fault body: %v", err))
		return
	}
	if err := w.SetFaults(f); err != nil {
		writeError(rw, badRequest("%v", err))
		return
	}
	writeJSON(rw, w.Faults())
}

func (w *Worker) serveRestart(rw http.ResponseWriter, r *http.Request) {
	body, err := readBody(r)
	if err != nil {
		writeError(rw, err)
		return
	}
	var opt RestartOptions
	if len(body) > 0 {
		if err := strictJSON(body, &opt); err != nil {
			writeError(rw, badRequest("restart body: %v", err))
			return
		}
	}
	if opt.DownMS < 0 {
		writeError(rw, badRequest("down_ms must not be negative, got %d", opt.DownMS))
		return
	}
	if opt.Offline {
		// The restart closes this very connection: answer completely first.
		rw.Header().Set("Content-Length", "0")
		rw.WriteHeader(http.StatusOK)
		if fl, ok := rw.(http.Flusher); ok {
			fl.Flush()
		}
		_ = w.Restart(opt) // sockets rebind errors cannot be reported any more
		return
	}
	if err := w.Restart(opt); err != nil {
		writeError(rw, err)
		return
	}
	rw.WriteHeader(http.StatusOK)
}

// modelJSON returns the JSON string of the model a request with LoRA id loraID names.
func (w *Worker) modelJSON(loraID int64) []byte { return w.modelJS[loraID] }

// loraID returns the id of the served model named model: 0 for the base model, i+1 for
// the adapter cfg.LoRA[i]; ok is false when the worker does not serve model. An empty
// name is the base model, as vLLM takes a request without a model.
func (w *Worker) loraID(model string) (id int64, ok bool) {
	if model == "" || model == w.cfg.Model {
		return 0, true
	}
	if i := slices.Index(w.cfg.LoRA, model); i >= 0 {
		return int64(i) + 1, true
	}
	return 0, false
}

// loraName returns the adapter of LoRA id loraID, "" for the base model.
func (w *Worker) loraName(loraID int64) string {
	if loraID == 0 {
		return ""
	}
	return w.cfg.LoRA[loraID-1]
}

// serveModels lists the base model, then its LoRA adapters as vLLM lists them
// (vllm/entrypoints/openai/serving_models.py): "parent" the base model's name (null for
// the base model itself) and "root" the adapter's path.
func (w *Worker) serveModels(rw http.ResponseWriter, _ *http.Request) {
	type model struct {
		ID          string  `json:"id"`
		Object      string  `json:"object"`
		Created     int64   `json:"created"`
		OwnedBy     string  `json:"owned_by"`
		Root        string  `json:"root"`
		Parent      *string `json:"parent"`
		MaxModelLen int     `json:"max_model_len"`
	}
	now := time.Now().Unix()
	data := []model{{ID: w.cfg.Model, Object: "model", Created: now, OwnedBy: "vllm", Root: w.cfg.Model, MaxModelLen: w.maxLen}}
	for _, a := range w.cfg.LoRA {
		data = append(data, model{ID: a, Object: "model", Created: now, OwnedBy: "vllm",
			Root: "/adapters/" + a, Parent: &w.cfg.Model, MaxModelLen: w.maxLen})
	}
	writeJSON(rw, map[string]any{"object": "list", "data": data})
}

func (w *Worker) serveTokenize(rw http.ResponseWriter, r *http.Request) {
	body, err := readBody(r)
	if err != nil {
		writeError(rw, err)
		return
	}
	toks, err := decodeTokenize(body, w.tz)
	if err != nil {
		writeError(rw, err)
		return
	}
	writeJSON(rw, map[string]any{"count": len(toks), "max_model_len": w.maxLen, "tokens": toks, "token_strs": nil})
}

// roll reports whether a fault with probability rate fires for this request.
func (w *Worker) roll(rate float64) bool {
	if rate <= 0 {
		return false
	}
	w.faultMu.Lock()
	defer w.faultMu.Unlock()
	return w.rng.Float64() < rate
}

func (w *Worker) serveGenerate(rw http.ResponseWriter, hr *http.Request, chat bool) {
	if w.down() {
		writeError(rw, &apiError{status: http.StatusServiceUnavailable, typ: "ServiceUnavailableError", msg: "engine is restarting"})
		return
	}
	body, err := readBody(hr)
	if err != nil {
		writeError(rw, err)
		return
	}
	p, err := decodeRequest(body, chat, w.tz)
	if err != nil {
		writeError(rw, err)
		return
	}
	loraID, ok := w.loraID(p.model)
	if !ok {
		writeError(rw, &apiError{status: http.StatusNotFound, typ: "NotFoundError",
			msg: fmt.Sprintf("The model `%s` does not exist.", p.model)})
		return
	}
	n := len(p.tokens)
	if n >= w.maxLen || (p.maxTokens > 0 && n+p.maxTokens > w.maxLen) {
		writeError(rw, badRequest("This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the messages, %d in the completion). Please reduce the length of the messages or completion.",
			w.maxLen, n+p.maxTokens, n, p.maxTokens))
		return
	}
	if err := w.pdCheck(p); err != nil {
		writeError(rw, err)
		return
	}
	f := w.Faults()
	if w.roll(f.ErrorRate) {
		w.failed.Add(1)
		writeError(rw, &apiError{status: http.StatusInternalServerError, typ: "InternalServerError", msg: "kvsim: injected fault"})
		return
	}
	if w.roll(f.HangRate) {
		w.hung.Add(1)
		select {
		case <-hr.Context().Done():
		case <-w.hangCtx.Done():
			abortConn() // never answer, even when the server stops
		}
		return
	}
	rk, err := w.pickRank(hr)
	if err != nil {
		writeError(rw, err)
		return
	}
	req := w.newRequest(p, loraID)
	remote, err := w.pdPull(hr.Context(), rk, p, req)
	if err != nil {
		if hr.Context().Err() == nil {
			writeError(rw, err)
		}
		return
	}
	w.pdAttach(req, rk, p, remote)
	rk.eng.submit(req)
	s := stream{w: w, rk: rk, rw: rw, p: p, r: req, chat: chat, dieAfter: f.DieAfterChunks}
	s.run(hr.Context())
}

// pickRank chooses the DP rank of a request: the one named by the X-data-parallel-rank
// header (vLLM's way for an external router to pin a rank), else the least loaded by
// vLLM's score waiting*4 + running, lowest index on ties.
func (w *Worker) pickRank(hr *http.Request) (*Rank, error) {
	if h := hr.Header.Get("X-data-parallel-rank"); h != "" {
		i, err := strconv.Atoi(h)
		if err != nil || i < 0 || i >= len(w.ranks) {
			return nil, badRequest("X-data-parallel-rank %q is not a rank in [0, %d)", h, len(w.ranks))
		}
		return w.ranks[i], nil
	}
	best := w.ranks[0]
	for _, rk := range w.ranks[1:] {
		if rk.load() < best.load() {
			best = rk
		}
	}
	return best, nil
}

func (w *Worker) newRequest(p *genParams, loraID int64) *request {
	n := len(p.tokens)
	maxTokens := p.maxTokens
	if maxTokens == 0 {
		maxTokens = w.maxLen - n
	}
	var hb [4]byte
	var d xxhash.Digest
	d.Reset()
	for _, t := range p.tokens {
		binary.LittleEndian.PutUint32(hb[:], t)
		_, _ = d.Write(hb[:])
	}
	seed := d.Sum64()
	target := maxTokens
	if !p.ignoreEOS {
		natural := 1 + int(seed%uint64(2*w.cfg.MeanOutputTokens))
		target = min(max(natural, p.minTokens), maxTokens)
	}
	tokens := make([]uint32, n, n+target)
	copy(tokens, p.tokens)
	prefix := "cmpl-"
	if p.chat {
		prefix = "chatcmpl-"
	}
	return &request{
		id:        prefix + w.id + "-" + strconv.FormatUint(w.reqSeq.Add(1), 10),
		promptLen: n, target: target, maxTokens: maxTokens, outSeed: seed, salt: p.salt, stream: p.stream,
		loraID: loraID, lora: w.loraName(loraID),
		arrival: time.Now(), notify: make(chan struct{}, 1), tokens: tokens,
	}
}

func writeJSON(rw http.ResponseWriter, v any) {
	rw.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(rw).Encode(v)
}

// writeError answers err with its status and an OpenAI-shaped JSON body; errors other
// than *apiError are 500s. It is the one place errors become statuses.
func writeError(rw http.ResponseWriter, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = &apiError{status: http.StatusInternalServerError, typ: "InternalServerError", msg: err.Error()}
	}
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(ae.status)
	_ = json.NewEncoder(rw).Encode(map[string]any{"error": map[string]any{
		"message": ae.msg, "type": ae.typ, "param": nil, "code": ae.status,
	}})
}
