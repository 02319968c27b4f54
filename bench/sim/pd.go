package sim

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvroute/kvroute/bench/sim/kvcache"
	"github.com/prometheus/client_golang/prometheus"
)

// Worker roles in prefill/decode disaggregation (Config.Role).
const (
	RoleBoth    = "both"
	RolePrefill = "prefill"
	RoleDecode  = "decode"
)

// Defaults of the P/D settings (a zero value in Config means the default).
const (
	DefaultPDLinkGbps          = 100
	DefaultPDTransferTimeoutMS = 30_000
	// DefaultPDKVHoldMS is vLLM's VLLM_NIXL_ABORT_REQUEST_TIMEOUT default (480 s):
	// how long a prefill worker keeps a finished request's blocks for the decode worker.
	DefaultPDKVHoldMS = 480_000
)

// PullPath is the side-channel endpoint a decode worker pulls KV from (kvsim's own; it
// stands in for NIXL's transfer and SGLang's transfer engine).
const PullPath = "/kvsim/pd/pull"

// sglangDefaultBootstrapPort is SGLang's --disaggregation-bootstrap-port default.
const sglangDefaultBootstrapPort = 8998

// Caps on P/D fields read from the wire.
const (
	maxPDString   = 256     // engine and request ids
	maxPDHost     = 253     // a DNS name
	maxPDBlockIDs = 1 << 20 // remote_block_ids entries
	maxPullBody   = 16 << 20
	maxPullAnswer = 64 << 10
)

func (c *Config) role() string {
	if c.Role == "" {
		return RoleBoth
	}
	return c.Role
}

func (c *Config) linkGbps() float64 {
	if c.PDLinkGbps == 0 {
		return DefaultPDLinkGbps
	}
	return c.PDLinkGbps
}

func (c *Config) transferTimeout() time.Duration {
	if c.PDTransferTimeoutMS == 0 {
		return DefaultPDTransferTimeoutMS * time.Millisecond
	}
	return time.Duration(c.PDTransferTimeoutMS) * time.Millisecond
}

func (c *Config) kvHold() time.Duration {
	if c.PDKVHoldMS == 0 {
		return DefaultPDKVHoldMS * time.Millisecond
	}
	return time.Duration(c.PDKVHoldMS) * time.Millisecond
}

// validatePD reports the first invalid P/D field.
func (c *Config) validatePD() error {
	switch c.Role {
	case "", RoleBoth, RolePrefill, RoleDecode:
	default:
		return fmt.Errorf("role must be prefill, decode or both, got %q", c.Role)
	}
	if c.BootstrapPort < 0 || c.BootstrapPort > 65535 {
		return fmt.Errorf("bootstrap_port must be in [0, 65535], got %d", c.BootstrapPort)
	}
	if !(c.PDLinkGbps >= 0 && c.PDLinkGbps <= 1e6) {
		return fmt.Errorf("pd_link_gbps must be in [0, 1e6] (0: %d), got %v", DefaultPDLinkGbps, c.PDLinkGbps)
	}
	if c.KVBytesPerToken < 0 || c.KVBytesPerToken > 1<<30 {
		return fmt.Errorf("kv_bytes_per_token must be in [0, 2^30] (0: the profile's), got %d", c.KVBytesPerToken)
	}
	if c.PDTransferTimeoutMS < 0 || c.PDTransferTimeoutMS > 3_600_000 {
		return fmt.Errorf("pd_transfer_timeout_ms must be in [0, 3600000], got %d", c.PDTransferTimeoutMS)
	}
	if c.PDKVHoldMS < 0 || c.PDKVHoldMS > 86_400_000 {
		return fmt.Errorf("pd_kv_hold_ms must be in [0, 86400000], got %d", c.PDKVHoldMS)
	}
	return nil
}

// pdKind is what a request asks of the worker in P/D.
type pdKind int

const (
	pdNone        pdKind = iota
	pdVLLMPrefill        // kv_transfer_params.do_remote_decode: prefill, hold the KV
	pdVLLMDecode         // kv_transfer_params.do_remote_prefill: pull the KV, decode
	pdSGLang             // bootstrap_host/port/room: prefill or decode by the worker's role
)

// pdRequest is the decoded P/D part of a generation request.
type pdRequest struct {
	kind pdKind
	// vLLM decode: where the KV is.
	engineID, requestID, host string
	port                      int
	blockIDs                  []int64
	// SGLang.
	room uint64
}

// wireKVParams is vLLM's kv_transfer_params as the NixlConnector reads and writes it
// (vllm/distributed/kv_transfer/kv_connector/v1/nixl/scheduler.py); unknown keys (tp_size,
// remote_pcp_size, ...) are ignored as vLLM's dict is open.
type wireKVParams struct {
	DoRemoteDecode  *bool           `json:"do_remote_decode"`
	DoRemotePrefill *bool           `json:"do_remote_prefill"`
	RemoteEngineID  *string         `json:"remote_engine_id"`
	RemoteRequestID *string         `json:"remote_request_id"`
	RemoteBlockIDs  json.RawMessage `json:"remote_block_ids"`
	RemoteHost      *string         `json:"remote_host"`
	RemotePort      *int64          `json:"remote_port"`
}

func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || bytes.Equal(raw, []byte("null"))
}

// decodePD decodes a request's kv_transfer_params and bootstrap_host, bootstrap_port,
// bootstrap_room fields (each raw JSON, absent as nil). It returns nil for a request
// without P/D fields. Errors are 400 *apiError.
func decodePD(kv, host, port, room json.RawMessage) (*pdRequest, error) {
	sg := !isNull(host) || !isNull(port) || !isNull(room)
	vl := !isNull(kv)
	if sg && vl {
		return nil, badRequest("kv_transfer_params (vLLM) and bootstrap_* (SGLang) must not be mixed")
	}
	if sg {
		return decodeBootstrap(host, port, room)
	}
	if !vl {
		return nil, nil
	}
	var w wireKVParams
	if err := json.Unmarshal(kv, &w); err != nil {
		return nil, badRequest("kv_transfer_params: %v", err)
	}
	dec, pre := w.DoRemoteDecode != nil && *w.DoRemoteDecode, w.DoRemotePrefill != nil && *w.DoRemotePrefill
	switch {
	case dec && pre:
		return nil, badRequest("kv_transfer_params: do_remote_decode and do_remote_prefill must not both be true")
	case dec:
		return &pdRequest{kind: pdVLLMPrefill}, nil
	case !pre:
		return nil, nil // nothing asked: an ordinary request
	}
	p := &pdRequest{kind: pdVLLMDecode}
	str := func(name string, v *string, limit int) (string, error) {
		if v == nil || *v == "" {
			return "", badRequest("kv_transfer_params.%s is required with do_remote_prefill", name)
		}
		if len(*v) > limit {
			return "", badRequest("kv_transfer_params.%s is longer than %d bytes", name, limit)
		}
		return *v, nil
	}
	var err error
	if p.engineID, err = str("remote_engine_id", w.RemoteEngineID, maxPDString); err != nil {
		return nil, err
	}
	if p.requestID, err = str("remote_request_id", w.RemoteRequestID, maxPDString); err != nil {
		return nil, err
	}
	if p.host, err = str("remote_host", w.RemoteHost, maxPDHost); err != nil {
		return nil, err
	}
	if err := checkHost(p.host); err != nil {
		return nil, badRequest("kv_transfer_params.remote_host: %v", err)
	}
	if w.RemotePort == nil || *w.RemotePort < 1 || *w.RemotePort > 65535 {
		return nil, badRequest("kv_transfer_params.remote_port must be a port in [1, 65535]")
	}
	p.port = int(*w.RemotePort)
	if p.blockIDs, err = decodeBlockIDs(w.RemoteBlockIDs); err != nil {
		return nil, badRequest("kv_transfer_params.remote_block_ids: %v", err)
	}
	if len(p.blockIDs) == 0 {
		// Nothing to pull (vLLM's update_state_after_alloc skips the transfer when
		// remote_block_ids is empty): the worker prefills locally.
		return nil, nil
	}
	return p, nil
}

// decodeBlockIDs accepts a list of block ids (older vLLM) or a list of lists, one per
// KV-cache group (vLLM's BlockIds), flattened; null is an empty list.
func decodeBlockIDs(raw json.RawMessage) ([]int64, error) {
	if isNull(raw) {
		return nil, nil
	}
	var flat []int64
	if err := json.Unmarshal(raw, &flat); err == nil {
		return checkBlockIDs(flat)
	}
	var groups [][]int64
	if err := json.Unmarshal(raw, &groups); err != nil {
		return nil, errors.New("must be a list of block ids or a list of lists of them")
	}
	n := 0
	for _, g := range groups {
		n += len(g)
	}
	if n > maxPDBlockIDs {
		return nil, fmt.Errorf("more than %d block ids", maxPDBlockIDs)
	}
	flat = make([]int64, 0, n)
	for _, g := range groups {
		flat = append(flat, g...)
	}
	return checkBlockIDs(flat)
}

func checkBlockIDs(ids []int64) ([]int64, error) {
	if len(ids) > maxPDBlockIDs {
		return nil, fmt.Errorf("more than %d block ids", maxPDBlockIDs)
	}
	for _, id := range ids {
		if id < 0 || id > math.MaxInt32 {
			return nil, fmt.Errorf("block id %d out of range", id)
		}
	}
	return ids, nil
}

// checkHost refuses hosts that would change the meaning of the side-channel URL.
func checkHost(h string) error {
	for _, c := range h {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune("/?#@\\", c) {
			return fmt.Errorf("%q is not a host name or address", h)
		}
	}
	return nil
}

// decodeBootstrap decodes SGLang's bootstrap fields (one request, not a batch). A null
// bootstrap_port is 0: the decode worker's own default, as in SGLang.
func decodeBootstrap(host, port, room json.RawMessage) (*pdRequest, error) {
	if isNull(host) || isNull(room) {
		return nil, badRequest("bootstrap_host and bootstrap_room must be given together (bootstrap_port may be null)")
	}
	var h string
	if err := json.Unmarshal(host, &h); err != nil {
		return nil, badRequest("bootstrap_host must be a string (batched requests are not supported by kvsim)")
	}
	if h == "" || len(h) > maxPDHost {
		return nil, badRequest("bootstrap_host must have 1 to %d bytes", maxPDHost)
	}
	if err := checkHost(h); err != nil {
		return nil, badRequest("bootstrap_host: %v", err)
	}
	var pt int64
	if !isNull(port) {
		if err := json.Unmarshal(port, &pt); err != nil || pt < 1 || pt > 65535 {
			return nil, badRequest("bootstrap_port must be a port in [1, 65535] or null")
		}
	}
	var rm uint64
	if err := json.Unmarshal(room, &rm); err != nil || rm > math.MaxInt64 {
		return nil, badRequest("bootstrap_room must be an integer in [0, 2^63-1]")
	}
	return &pdRequest{kind: pdSGLang, host: h, port: int(pt), room: rm}, nil
}

// pullRequest is the body of POST /kvsim/pd/pull on a prefill worker's side channel:
// vLLM's handshake (engine, request and block ids from kv_transfer_params) or SGLang's
// (the room, with how long to wait for its prefill to finish).
type pullRequest struct {
	EngineID  string          `json:"engine_id,omitempty"`
	RequestID string          `json:"request_id,omitempty"`
	BlockIDs  json.RawMessage `json:"block_ids,omitempty"`
	Room      *uint64         `json:"room,omitempty"`
	WaitMS    int64           `json:"wait_ms,omitempty"`
	// Tokens is how many of the held tokens move (the rest are in the decode worker's
	// own prefix cache); 0 moves them all.
	Tokens int64 `json:"tokens,omitempty"`

	blockIDs []int64
}

// pullAnswer is the side channel's answer to a completed transfer.
type pullAnswer struct {
	Tokens     int     `json:"tokens"`
	Bytes      int64   `json:"bytes"`
	TransferMS float64 `json:"transfer_ms"`
}

// decodePull decodes and checks a pull body. Errors are 400 *apiError.
func decodePull(body []byte) (*pullRequest, error) {
	var p pullRequest
	if err := strictJSON(body, &p); err != nil {
		return nil, badRequest("pull body: %v", err)
	}
	if p.Tokens < 0 || p.Tokens > math.MaxInt32 {
		return nil, badRequest("tokens must be in [0, 2^31-1]")
	}
	switch {
	case p.Room != nil:
		if *p.Room > math.MaxInt64 {
			return nil, badRequest("room must be in [0, 2^63-1]")
		}
		if p.EngineID != "" || p.RequestID != "" || !isNull(p.BlockIDs) {
			return nil, badRequest("room excludes engine_id, request_id and block_ids")
		}
		if p.WaitMS < 0 || p.WaitMS > 3_600_000 {
			return nil, badRequest("wait_ms must be in [0, 3600000]")
		}
	default:
		if p.EngineID == "" || p.RequestID == "" || len(p.EngineID) > maxPDString || len(p.RequestID) > maxPDString {
			return nil, badRequest("engine_id and request_id are required (at most %d bytes each), or room", maxPDString)
		}
		ids, err := decodeBlockIDs(p.BlockIDs)
		if err != nil {
			return nil, badRequest("block_ids: %v", err)
		}
		p.blockIDs = ids
	}
	return &p, nil
}

// heldKV is a finished prefill's KV kept for a decode worker to pull.
type heldKV struct {
	blocks []kvcache.BlockID
	tokens int
	gen    uint64 // the engine generation (restarts) the blocks belong to
	timer  *time.Timer
	// onRelease runs (without the engine lock) when the hold expires or is dropped.
	onRelease func()
}

// holdLocked keeps r's blocks for a transfer instead of freeing them, when r asked for
// it; it reports whether it did. mu must be held.
func (e *engine) holdLocked(r *request) bool {
	if r.holdKey == "" || len(r.blocks) == 0 || (!r.holdAnyFinish && r.finish != "length") {
		return false
	}
	if e.held == nil {
		e.held = make(map[string]*heldKV)
	}
	if _, dup := e.held[r.holdKey]; dup {
		return false
	}
	h := &heldKV{blocks: r.blocks, tokens: r.promptLen, gen: e.gen, onRelease: r.onRelease}
	key := r.holdKey
	h.timer = time.AfterFunc(e.cfg.kvHold(), func() { e.expire(key, h) })
	e.held[key] = h
	r.held = true
	r.heldIDs = make([]int64, len(r.blocks))
	for i, b := range r.blocks {
		r.heldIDs[i] = int64(b)
	}
	if r.onHold != nil {
		r.onHold()
	}
	return true
}

// claim takes the KV held under key for a transfer; the caller must give it back with
// freeHeld.
func (e *engine) claim(key string) (*heldKV, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	h, ok := e.held[key]
	if !ok {
		return nil, false
	}
	h.timer.Stop()
	delete(e.held, key)
	return h, true
}

// freeHeld frees claimed blocks, unless the engine restarted since (its pool is new).
func (e *engine) freeHeld(h *heldKV) {
	e.mu.Lock()
	if h.gen == e.gen {
		e.pool.Free(h.blocks)
		e.updateGauges()
	}
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}: // blocks freed: waiting requests may fit now
	default:
	}
}

// expire frees a hold nobody pulled in time.
func (e *engine) expire(key string, h *heldKV) {
	e.mu.Lock()
	if e.held[key] != h {
		e.mu.Unlock()
		return
	}
	delete(e.held, key)
	e.stats.pdExpired.Add(1)
	e.mu.Unlock()
	e.freeHeld(h)
	if h.onRelease != nil {
		h.onRelease()
	}
}

// localHit returns the tokens of r's prompt in the prefix cache now (as admission would
// find them: leading full blocks, at most the prompt less one token).
func (e *engine) localHit(r *request) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.hashFull(r)
	maxHit := (len(r.tokens) - 1) / e.blockSize
	return e.pool.Match(r.hashes[:maxHit]) * e.blockSize
}

// reservation is blocks taken for a KV in transit.
type reservation struct {
	blocks []kvcache.BlockID
	gen    uint64
}

// reserve takes the blocks for tokens tokens, if that many are free (evicting cached
// ones as an allocation does); nothing when they are not (the request then queues for
// blocks after the transfer).
func (e *engine) reserve(tokens int) reservation {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := (tokens + e.blockSize - 1) / e.blockSize
	ids, ev, err := e.pool.Allocate(nil, n, e.evicted)
	if err != nil {
		return reservation{}
	}
	e.evicted = ev
	e.updateGauges()
	return reservation{blocks: ids, gen: e.gen}
}

// unreserve gives reserved blocks back (uncached: the request allocates its own).
func (e *engine) unreserve(r reservation) {
	if len(r.blocks) == 0 {
		return
	}
	e.freeHeld(&heldKV{blocks: r.blocks, gen: r.gen})
}

// dropHeldLocked forgets every hold (the pool is being replaced). mu must be held.
func (e *engine) dropHeldLocked() {
	for k, h := range e.held {
		h.timer.Stop()
		delete(e.held, k)
		if h.onRelease != nil {
			go h.onRelease()
		}
	}
}

// pdStarts numbers worker starts in this process, to make engine ids unique.
var pdStarts atomic.Uint64

// pdState is a worker's P/D machinery: the side channel (vLLM's NIXL side channel and
// SGLang's bootstrap server in one) and the rooms SGLang decode workers wait on.
type pdState struct {
	w        *Worker
	nonce    string
	side     server // the side channel: a prefill worker's only
	host     string
	port     int // side-channel port; 0 when the worker has none (roles decode and both)
	client   *http.Client
	xferSecs *prometheus.HistogramVec
	xfers    *prometheus.CounterVec

	mu    sync.Mutex
	rooms map[uint64]*room

	sent, received, failed, receivedTokens atomic.Uint64
}

// room is an SGLang bootstrap room: ready is closed when a prefill holds its KV.
type room struct {
	ready   chan struct{}
	isReady bool
	rk      *Rank
	waiters int
}

// startPD registers the P/D metrics and starts the side channel of a prefill worker on
// host:cfg.BootstrapPort.
func (w *Worker) startPD(host string) error {
	ps := &pdState{w: w, rooms: make(map[uint64]*room), host: host,
		nonce:  strconv.FormatInt(time.Now().UnixNano()%1e9, 36) + strconv.FormatUint(pdStarts.Add(1), 36),
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}}
	w.pd = ps
	ps.xfers = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvsim:pd_transfers_total",
		Help: "KV transfers by side (send: this prefill worker served a pull; recv: this decode worker pulled) and result."},
		[]string{"side", "result"})
	ps.xferSecs = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "kvsim:pd_transfer_seconds",
		Help: "Wall time of completed KV pulls, by side.", Buckets: ttftBuckets}, []string{"side"})
	w.metrics.reg.MustRegister(ps.xfers, ps.xferSecs)
	if w.cfg.role() != RolePrefill {
		return nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(w.cfg.BootstrapPort)))
	if err != nil {
		return fmt.Errorf("listen bootstrap: %w", err)
	}
	ps.port = ln.Addr().(*net.TCPAddr).Port
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(rw http.ResponseWriter, _ *http.Request) { rw.WriteHeader(http.StatusOK) })
	mux.HandleFunc("POST "+PullPath, ps.servePull)
	ps.side = server{handler: mux, ctx: w.ctx, addr: ln.Addr().String()}
	ps.side.start(ln)
	return nil
}

// close stops the side channel and the hold timers (a closed worker holds nothing).
func (ps *pdState) close() error {
	if ps == nil {
		return nil
	}
	for _, rk := range ps.w.ranks {
		rk.eng.mu.Lock()
		for k, h := range rk.eng.held {
			h.timer.Stop()
			delete(rk.eng.held, k)
		}
		rk.eng.mu.Unlock()
	}
	return ps.side.close()
}

// engineID names a rank's engine in kv_transfer_params: unique per worker start.
func (ps *pdState) engineID(rk *Rank) string {
	return "kvsim-" + ps.w.id + "-" + ps.nonce + "-dp" + strconv.Itoa(rk.index)
}

func (ps *pdState) rankByEngine(id string) *Rank {
	for _, rk := range ps.w.ranks {
		if ps.engineID(rk) == id {
			return rk
		}
	}
	return nil
}

// BootstrapPort returns the port of a prefill worker's P/D side channel (SGLang's
// bootstrap_port, vLLM's remote_port), or 0: decode and both workers have none.
func (w *Worker) BootstrapPort() int { return w.pd.port }

// Role returns the worker's P/D role: "prefill", "decode" or "both".
func (w *Worker) Role() string { return w.cfg.role() }

// transferTime is the modelled time to move tokens' KV over the link, time-scaled.
func (w *Worker) transferTime(tokens int) (time.Duration, int64) {
	per := w.cfg.KVBytesPerToken
	if per == 0 {
		per = w.prof.KVBytesPerToken
	}
	b := int64(tokens) * int64(per)
	secs := float64(b) * 8 / (w.cfg.linkGbps() * 1e9)
	return time.Duration(secs * w.cfg.TimeScale * float64(time.Second)), b
}

// servePull is the side channel: it hands a held KV to a decode worker, taking the
// modelled transfer time, then frees the blocks.
func (ps *pdState) servePull(rw http.ResponseWriter, hr *http.Request) {
	w := ps.w
	body, err := readAllLimit(http.MaxBytesReader(nil, hr.Body, maxPullBody))
	if err != nil {
		writeError(rw, badRequest("read body: %v", err))
		return
	}
	pr, err := decodePull(body)
	if err != nil {
		writeError(rw, err)
		return
	}
	fail := func(e error) {
		ps.xfers.WithLabelValues("send", "error").Inc()
		writeError(rw, e)
	}
	f := w.Faults()
	if w.roll(f.TransferErrorRate) {
		fail(&apiError{status: http.StatusInternalServerError, typ: "InternalServerError", msg: "kvsim: injected transfer fault"})
		return
	}
	if f.TransferHang {
		ps.xfers.WithLabelValues("send", "hung").Inc()
		select {
		case <-hr.Context().Done():
		case <-w.hangCtx.Done():
			abortConn()
		}
		return
	}
	var rk *Rank
	key := pr.RequestID
	if pr.Room != nil {
		key = roomKey(*pr.Room)
		if rk, err = ps.waitRoom(hr.Context(), *pr.Room, time.Duration(pr.WaitMS)*time.Millisecond); err != nil {
			fail(err)
			return
		}
	} else if rk = ps.rankByEngine(pr.EngineID); rk == nil {
		fail(&apiError{status: http.StatusNotFound, typ: "NotFoundError", msg: fmt.Sprintf("unknown engine %q", pr.EngineID)})
		return
	}
	h, ok := rk.eng.claim(key)
	if !ok {
		fail(&apiError{status: http.StatusNotFound, typ: "NotFoundError",
			msg: fmt.Sprintf("no KV held for %q: unknown, already pulled or expired", key)})
		return
	}
	defer rk.eng.freeHeld(h)
	if pr.Room == nil && len(pr.blockIDs) != len(h.blocks) {
		fail(badRequest("block_ids name %d blocks, %d are held", len(pr.blockIDs), len(h.blocks)))
		return
	}
	for i, id := range pr.blockIDs {
		if id != int64(h.blocks[i]) {
			fail(badRequest("block_ids[%d] is %d, the held block is %d", i, id, h.blocks[i]))
			return
		}
	}
	start := time.Now()
	moved := h.tokens
	if pr.Tokens > 0 {
		moved = min(moved, int(pr.Tokens))
	}
	d, nbytes := w.transferTime(moved)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-hr.Context().Done():
		ps.xfers.WithLabelValues("send", "aborted").Inc()
		return
	case <-w.ctx.Done():
		abortConn()
	}
	ps.sent.Add(1)
	ps.xfers.WithLabelValues("send", "ok").Inc()
	ps.xferSecs.WithLabelValues("send").Observe(time.Since(start).Seconds())
	writeJSON(rw, pullAnswer{Tokens: moved, Bytes: nbytes, TransferMS: float64(d) / 1e6})
}

func roomKey(room uint64) string { return "room:" + strconv.FormatUint(room, 10) }

// waitRoom waits up to wait (at most the transfer timeout) for a prefill to hold the
// KV of room and returns the rank holding it.
func (ps *pdState) waitRoom(ctx context.Context, id uint64, wait time.Duration) (*Rank, error) {
	if lim := ps.w.cfg.transferTimeout(); wait <= 0 || wait > lim {
		wait = lim
	}
	ps.mu.Lock()
	rm := ps.rooms[id]
	if rm == nil {
		rm = &room{ready: make(chan struct{})}
		ps.rooms[id] = rm
	}
	rm.waiters++
	ps.mu.Unlock()
	t := time.NewTimer(wait)
	defer t.Stop()
	var err error
	select {
	case <-rm.ready:
	case <-t.C:
		err = &apiError{status: http.StatusGatewayTimeout, typ: "TimeoutError",
			msg: fmt.Sprintf("no prefill finished for bootstrap_room %d within %v", id, wait)}
	case <-ctx.Done():
		err = ctx.Err()
	case <-ps.w.ctx.Done():
		err = errors.New("worker closed")
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	rm.waiters--
	if err == nil || rm.waiters == 0 && !rm.isReady {
		if ps.rooms[id] == rm {
			delete(ps.rooms, id)
		}
	}
	if err != nil {
		return nil, err
	}
	return rm.rk, nil
}

// roomReady marks room id's KV held on rk (called under rk's engine lock).
func (ps *pdState) roomReady(id uint64, rk *Rank) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	rm := ps.rooms[id]
	if rm == nil {
		rm = &room{ready: make(chan struct{})}
		ps.rooms[id] = rm
	}
	if rm.isReady {
		return // a duplicate room: the first prefill's KV is served
	}
	rm.isReady, rm.rk = true, rk
	close(rm.ready)
}

// roomGone forgets room id once its hold expired unpulled.
func (ps *pdState) roomGone(id uint64, rk *Rank) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if rm := ps.rooms[id]; rm != nil && rm.isReady && rm.rk == rk {
		delete(ps.rooms, id)
	}
}

// pdCheck refuses P/D requests the worker's role cannot take. It runs before faults.
func (w *Worker) pdCheck(p *genParams) error {
	if p.pd == nil {
		return nil
	}
	role := w.cfg.role()
	switch {
	case p.pd.kind == pdVLLMPrefill && role == RoleDecode:
		return badRequest("this worker's role is decode; it cannot take kv_transfer_params.do_remote_decode (a prefill request)")
	case p.pd.kind == pdVLLMPrefill && p.stream:
		return badRequest("kv_transfer_params.do_remote_decode needs stream false: the KV handle comes in the non-streamed answer")
	case p.pd.kind == pdVLLMDecode && role == RolePrefill:
		return badRequest("this worker's role is prefill; it cannot take kv_transfer_params.do_remote_prefill (a decode request)")
	}
	return nil
}

// pdPull runs the decode side's transfer before the request enters the engine: it
// pulls the KV from the prefill worker named by the request (bounded by
// pd_transfer_timeout_ms) and reports whether the request must skip its prefill.
func (w *Worker) pdPull(ctx context.Context, rk *Rank, p *genParams, r *request) (remote bool, err error) {
	pd := p.pd
	if pd == nil {
		return false, nil
	}
	var body pullRequest
	switch {
	case pd.kind == pdVLLMDecode:
		ids, _ := json.Marshal(pd.blockIDs)
		body = pullRequest{EngineID: pd.engineID, RequestID: pd.requestID, BlockIDs: ids}
	case pd.kind == pdSGLang && w.cfg.role() == RoleDecode:
		room := pd.room
		if pd.port == 0 {
			// SGLang's scheduler (handle_generate_request) fills a null bootstrap_port
			// with its own disaggregation_bootstrap_port, 8998 by default.
			pd.port = cmp.Or(w.cfg.BootstrapPort, sglangDefaultBootstrapPort)
		}
		// The prefill side gives up a little before this side does, so its answer says why.
		body = pullRequest{Room: &room, WaitMS: max(1, w.cfg.transferTimeout().Milliseconds()*9/10)}
	default:
		return false, nil
	}
	// Only what the local prefix cache lacks moves, as vLLM's decode side pulls the
	// prompt tokens beyond its own hit (get_num_new_matched_tokens).
	body.Tokens = int64(len(p.tokens) - rk.eng.localHit(r))
	rk.stats.pdWaiting.Add(1)
	defer rk.stats.pdWaiting.Add(-1)
	// The blocks the KV lands in are taken while it moves, as vLLM allocates them
	// before its asynchronous load, so the decode worker's KV usage shows the transfer.
	res := rk.eng.reserve(int(body.Tokens))
	defer rk.eng.unreserve(res)
	start := time.Now()
	ans, err := w.pd.pull(ctx, pd.host, pd.port, &body)
	if err != nil {
		w.pd.failed.Add(1)
		w.pd.xfers.WithLabelValues("recv", "error").Inc()
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return false, &apiError{status: http.StatusServiceUnavailable, typ: "ServiceUnavailableError",
			msg: fmt.Sprintf("kv transfer from %s failed: %v", net.JoinHostPort(pd.host, strconv.Itoa(pd.port)), err)}
	}
	w.pd.received.Add(1)
	w.pd.receivedTokens.Add(uint64(max(ans.Tokens, 0)))
	w.pd.xfers.WithLabelValues("recv", "ok").Inc()
	w.pd.xferSecs.WithLabelValues("recv").Observe(time.Since(start).Seconds())
	return true, nil
}

// pull calls a prefill worker's side channel, within the transfer timeout.
func (ps *pdState) pull(ctx context.Context, host string, port int, body *pullRequest) (*pullAnswer, error) {
	ctx, cancel := context.WithTimeout(ctx, ps.w.cfg.transferTimeout())
	defer cancel()
	b, _ := json.Marshal(body)
	u := url.URL{Scheme: "http", Host: net.JoinHostPort(host, strconv.Itoa(port)), Path: PullPath}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := ps.client.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("no KV within %v", ps.w.cfg.transferTimeout())
		}
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, maxPullAnswer))
	if err != nil {
		return nil, fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		_ = json.Unmarshal(out, &e)
		return nil, fmt.Errorf("side channel answered %d: %s", resp.StatusCode, e.Error.Message)
	}
	var a pullAnswer
	if err := json.Unmarshal(out, &a); err != nil {
		return nil, fmt.Errorf("side channel answer: %w", err)
	}
	return &a, nil
}

// pdAttach sets the engine-side P/D behaviour of a new request.
func (w *Worker) pdAttach(r *request, rk *Rank, p *genParams, remote bool) {
	pd := p.pd
	if pd == nil {
		return
	}
	r.remoteKV = remote
	switch {
	case pd.kind == pdVLLMPrefill && w.pd.port != 0:
		r.holdKey = r.id
	case pd.kind == pdSGLang && w.cfg.role() == RolePrefill:
		// SGLang's prefill server computes the prompt and one token; its answer is
		// discarded by the router.
		r.target = 1
		r.holdKey, r.holdAnyFinish = roomKey(pd.room), true
		id, ps := pd.room, w.pd
		r.onHold = func() { ps.roomReady(id, rk) }
		r.onRelease = func() { ps.roomGone(id, rk) }
	}
}

// pdResponseParams returns the kv_transfer_params of a vLLM prefill answer, or nil.
func (s *stream) pdResponseParams(pr progress) any {
	if s.p.pd == nil || s.p.pd.kind != pdVLLMPrefill || !pr.held {
		return nil
	}
	ps := s.w.pd
	return map[string]any{
		"do_remote_prefill": true,
		"do_remote_decode":  false,
		"remote_block_ids":  [][]int64{pr.heldIDs},
		"remote_engine_id":  ps.engineID(s.rk),
		"remote_request_id": s.r.id,
		"remote_host":       ps.host,
		"remote_port":       ps.port,
		"tp_size":           1,
	}
}

// PDStats counts a worker's KV transfers since start.
type PDStats struct {
	// Sent counts transfers this worker's side channel completed (prefill side).
	Sent uint64
	// Received counts transfers this worker pulled (decode side); Failed those that
	// failed (the request was answered with an error).
	Received, Failed uint64
	// ReceivedTokens sums the tokens whose KV this worker pulled (a prompt less the
	// decode worker's own prefix-cache hit).
	ReceivedTokens uint64
	// Expired counts held KVs freed unpulled after pd_kv_hold_ms.
	Expired uint64
	// Held is the number of KVs held for a transfer now; PullsWaiting the requests
	// waiting for their KV now.
	Held, PullsWaiting int
}

// PDStats returns the worker's transfer counters.
func (w *Worker) PDStats() PDStats {
	s := PDStats{Sent: w.pd.sent.Load(), Received: w.pd.received.Load(), Failed: w.pd.failed.Load(),
		ReceivedTokens: w.pd.receivedTokens.Load()}
	for _, rk := range w.ranks {
		s.Expired += uint64(rk.stats.pdExpired.Load())
		s.PullsWaiting += int(rk.stats.pdWaiting.Load())
		rk.eng.mu.Lock()
		s.Held += len(rk.eng.held)
		rk.eng.mu.Unlock()
	}
	return s
}
