package blockhash

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/router/jsonscan"
)

// Engine defaults.
const (
	// DefaultTimeout bounds one /tokenize call.
	DefaultTimeout = 300 * time.Millisecond
	// DefaultCooldown is how long a worker whose call failed is not asked again.
	DefaultCooldown = time.Second
	// DefaultCacheEntries bounds the requests the cache holds.
	DefaultCacheEntries = 16384
	// DefaultCacheBlocks bounds the block hashes the cache holds (8 bytes each).
	DefaultCacheBlocks = 1 << 21
	// DefaultMaxResponseBytes bounds a /tokenize answer.
	DefaultMaxResponseBytes = 16 << 20
)

// errTransport is wrapped by errors reaching a worker (refused, reset, ...).
var errTransport = errors.New("prefix: tokenize transport")

// EngineOptions configure an [Engine].
type EngineOptions struct {
	// Pick returns the base URL (e.g. "http://10.0.0.5:8000") of a healthy worker serving
	// model (the request's LoRA adapter when it names one, else its Model: a worker that
	// serves the base model but not the adapter would refuse the adapter's /tokenize);
	// ok false means none. Required. It is called once per call, never for cache hits.
	Pick func(model string) (baseURL string, ok bool)
	// Client makes the calls; nil means a client with its own connection pool. Its
	// Timeout should be 0: Timeout below bounds each call.
	Client *http.Client
	// Timeout bounds one /tokenize call, connection included. Default DefaultTimeout
	// (300ms); must not be negative.
	Timeout time.Duration
	// Cooldown is how long a worker whose call failed with a timeout, a transport error,
	// a 5xx status or 404/405 (no /tokenize endpoint) is not asked again (calls fail at once with ErrCooldown). Default
	// DefaultCooldown (1s); negative disables it.
	Cooldown time.Duration
	// CacheEntries bounds the cached requests (LRU). Default DefaultCacheEntries.
	CacheEntries int
	// CacheBlocks bounds the block hashes held by the cache over all entries; a request
	// with more blocks than this is not cached. Default DefaultCacheBlocks (16 MiB).
	CacheBlocks int
	// MaxResponseBytes bounds a /tokenize answer. Default DefaultMaxResponseBytes.
	MaxResponseBytes int
	// Metrics records calls, hits, errors and latency; nil records nothing.
	Metrics *Metrics
	// Now is the clock for cooldowns; nil means time.Now.
	Now func() time.Time
}

// Engine hashes requests with token ids from a worker's POST /tokenize, so the engine's
// own chat template and tokenizer are used and the hashes match the workers' KV events.
//
// Results are cached in an LRU keyed by a 64-bit xxhash of everything the hashes depend
// on (model, LoRA, cache salt, block size, the raw messages or prompt and the raw
// options), so a retried or duplicate request costs no call and each turn of a
// conversation costs at most one. Identical requests arriving while a call is under way
// wait for that call instead of making their own. Two different requests with the same
// 64-bit key (probability about n²/2⁶⁵ for n cached requests) would share hashes: a
// worse routing decision, never a wrong answer, since routing is advisory.
//
// Each call is bounded by Timeout (300ms by default), independently of the caller's
// context so that a waiter is not failed by the first caller going away. On any failure
// Hash returns an error and caches nothing; the router answers it by hashing that
// request in approx mode instead (see [Fallback]), so routing never waits for a dead or
// slow worker for longer than the timeout, and, through the cooldown, not even that on
// the following requests.
//
// A token-id prompt is hashed directly, without a call. Engine is safe for concurrent
// use and must not be copied.
type Engine struct {
	opts   EngineOptions
	client *http.Client
	now    func() time.Time

	// mu guards every field below.
	mu      sync.Mutex
	entries map[uint64]*entry
	lru     entry // sentinel of the LRU ring: lru.next is the most recent
	blocks  int   // hashes held by entries
	flights map[uint64]*flight
	cool    map[string]time.Time // worker base URL -> end of its cooldown
}

// entry is one cached result. hashes is never modified after the entry is created, so
// it can be read after mu is released.
type entry struct {
	key        uint64
	hashes     []proto.BlockHash
	tokens     int
	prev, next *entry
}

// flight is a call under way; its result fields are written before done is closed.
type flight struct {
	done   chan struct{}
	hashes []proto.BlockHash
	tokens int
	err    error
}

// NewEngine returns an Engine; it starts no goroutine.
func NewEngine(opts EngineOptions) (*Engine, error) {
	if opts.Pick == nil {
		return nil, errors.New("prefix: EngineOptions.Pick is required")
	}
	if opts.Timeout < 0 || opts.CacheEntries < 0 || opts.CacheBlocks < 0 || opts.MaxResponseBytes < 0 {
		return nil, fmt.Errorf("prefix: negative engine option (timeout %v, cache entries %d, cache blocks %d, max response bytes %d)",
			opts.Timeout, opts.CacheEntries, opts.CacheBlocks, opts.MaxResponseBytes)
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&opts.CacheEntries, DefaultCacheEntries)
	def(&opts.CacheBlocks, DefaultCacheBlocks)
	def(&opts.MaxResponseBytes, DefaultMaxResponseBytes)
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Cooldown == 0 {
		opts.Cooldown = DefaultCooldown
	}
	e := &Engine{opts: opts, client: opts.Client, now: opts.Now,
		entries: map[uint64]*entry{}, flights: map[uint64]*flight{}, cool: map[string]time.Time{}}
	if e.now == nil {
		e.now = time.Now
	}
	if e.client == nil {
		e.client = &http.Client{Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: opts.Timeout, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		}}
	}
	e.lru.next, e.lru.prev = &e.lru, &e.lru
	return e, nil
}

// Close releases the idle connections of the Engine's own client.
func (e *Engine) Close() {
	if e.opts.Client == nil {
		e.client.CloseIdleConnections()
	}
}

// Len returns the number of cached requests.
func (e *Engine) Len() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.entries)
}

// Hash implements [Hasher]. Errors wrap ErrBadInput, ErrNoWorker, ErrCooldown, ErrEngine,
// context.DeadlineExceeded (the call's timeout) or context.Canceled (ctx ended while
// waiting for another request's call), or a transport error.
func (e *Engine) Hash(ctx context.Context, req *Request, dst []proto.BlockHash) (Result, error) {
	k, lit, err := classify(req)
	if err != nil {
		e.opts.Metrics.fail(err)
		return Result{}, err
	}
	if k == kindTokens {
		r, err := hashTokenPrompt(req, lit, dst)
		if err != nil {
			e.opts.Metrics.fail(err)
		}
		return r, err
	}
	cut := false
	if k == kindChat {
		buf := bufPool.Get().(*bytes.Buffer)
		defer putBuf(buf)
		if req, lit, cut, err = cutChat(req, lit, buf.AvailableBuffer()); err != nil {
			e.opts.Metrics.fail(err)
			return Result{}, err
		}
		if cut && string(lit) == "[]" { // the first message is not text: nothing to hash
			return Result{Hashes: dst, Exact: true, Truncated: true}, nil
		}
	}
	r, err := e.hash(ctx, req, k, lit, dst)
	r.Truncated = cut && err == nil
	return r, err
}

// hash is Hash for a text prompt or a text-only chat.
func (e *Engine) hash(ctx context.Context, req *Request, k kind, lit []byte, dst []proto.BlockHash) (Result, error) {
	key := cacheKey(req, k, lit)
	e.mu.Lock()
	if ent, ok := e.entries[key]; ok {
		e.unlink(ent)
		e.pushFront(ent)
		dst = append(dst, ent.hashes...)
		n := ent.tokens
		e.mu.Unlock()
		e.opts.Metrics.hit()
		return Result{Hashes: dst, Tokens: n, Exact: true}, nil
	}
	if f, ok := e.flights[key]; ok {
		e.mu.Unlock()
		e.opts.Metrics.join()
		select {
		case <-f.done:
		case <-ctx.Done():
			err := fmt.Errorf("wait for tokenize call: %w", ctx.Err())
			e.opts.Metrics.fail(err)
			return Result{}, err
		}
		if f.err != nil {
			return Result{}, f.err
		}
		return Result{Hashes: append(dst, f.hashes...), Tokens: f.tokens, Exact: true}, nil
	}
	f := &flight{done: make(chan struct{})}
	e.flights[key] = f
	e.mu.Unlock()

	f.hashes, f.tokens, f.err = e.fetch(ctx, req, k, lit)
	e.mu.Lock()
	delete(e.flights, key)
	if f.err == nil {
		e.store(key, f.hashes, f.tokens)
	}
	n := len(e.entries)
	e.mu.Unlock()
	close(f.done)
	e.opts.Metrics.setEntries(n)
	if f.err != nil {
		e.opts.Metrics.fail(f.err)
		return Result{}, f.err
	}
	return Result{Hashes: append(dst, f.hashes...), Tokens: f.tokens, Exact: true}, nil
}

// cacheKey hashes everything a request's block hashes depend on. Variable-length fields
// are length-prefixed so that no two different requests give the same key input.
func cacheKey(req *Request, k kind, lit []byte) uint64 {
	var d xxhash.Digest
	d.Reset()
	var b [9]byte
	b[0] = byte(k)
	binary.LittleEndian.PutUint64(b[1:], uint64(req.BlockSize))
	_, _ = d.Write(b[:])
	writeLenString(&d, req.Model)
	writeLenString(&d, req.LoRA)
	writeLenString(&d, req.CacheSalt)
	writeLen(&d, lit)
	o := &req.Options
	for _, v := range [...][]byte{o.AddGenerationPrompt, o.ContinueFinalMessage, o.AddSpecialTokens,
		o.ChatTemplate, o.ChatTemplateKwargs, o.Tools, o.Documents, o.ReasoningEffort} {
		if present(v) {
			writeLen(&d, jsonscan.TrimWS(v))
		} else {
			writeLen(&d, nil)
		}
	}
	return d.Sum64()
}

func writeLen(d *xxhash.Digest, p []byte) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(len(p)))
	_, _ = d.Write(b[:])
	_, _ = d.Write(p)
}

func writeLenString(d *xxhash.Digest, s string) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(len(s)))
	_, _ = d.Write(b[:])
	_, _ = d.WriteString(s)
}

// bufPool recycles request and response bodies.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func putBuf(b *bytes.Buffer) {
	if b.Cap() > 1<<20 {
		return
	}
	b.Reset()
	bufPool.Put(b)
}

// fetch makes one /tokenize call and returns the request's hashes in a new slice.
func (e *Engine) fetch(ctx context.Context, req *Request, k kind, lit []byte) ([]proto.BlockHash, int, error) {
	// An adapter's /tokenize names the adapter, as a client of vLLM would: vLLM accepts
	// any served model id there and tokenizes with the adapter's tokenizer (the base
	// model's, unless the adapter ships its own), so the ids are those the adapter's
	// requests are computed from.
	model := req.Model
	if req.LoRA != "" {
		model = req.LoRA
	}
	base, ok := e.opts.Pick(model)
	if !ok {
		return nil, 0, fmt.Errorf("%w for model %q", ErrNoWorker, model)
	}
	base = strings.TrimSuffix(base, "/")
	now := e.now()
	e.mu.Lock()
	until, cooling := e.cool[base]
	if cooling && !now.Before(until) {
		delete(e.cool, base)
		cooling = false
	}
	e.mu.Unlock()
	if cooling {
		return nil, 0, fmt.Errorf("%w: %s until %s", ErrCooldown, base, until.Format(time.RFC3339Nano))
	}

	reqBuf := bufPool.Get().(*bytes.Buffer)
	defer putBuf(reqBuf)
	body, err := appendTokenizeBody(reqBuf.AvailableBuffer(), model, k, lit, &req.Options, true)
	if err != nil {
		return nil, 0, err
	}
	reqBuf.Write(body)

	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.opts.Timeout)
	defer cancel()
	e.opts.Metrics.call()
	start := time.Now()
	ids, err := e.post(cctx, base+"/tokenize", reqBuf.Bytes())
	e.opts.Metrics.observe(time.Since(start).Seconds())
	if err != nil {
		// Timeouts, transport errors and 5xx answers say the worker is unwell; other
		// answers (4xx, unreadable) are about this request.
		if e.opts.Cooldown > 0 && (!errors.Is(err, ErrEngine) || errors.Is(err, errServer)) {
			e.mu.Lock()
			e.cool[base] = e.now().Add(e.opts.Cooldown)
			e.mu.Unlock()
		}
		return nil, 0, fmt.Errorf("tokenize on %s: %w", base, err)
	}
	defer putTokens(ids)
	r := exact(req, *ids, make([]proto.BlockHash, 0, len(*ids)/req.BlockSize))
	return r.Hashes, r.Tokens, nil
}

// errServer marks 5xx, 404 and 405 answers, which start a cooldown like transport errors.
var errServer = errors.New("server error")

// post sends one /tokenize request and decodes the answer into a pooled buffer the
// caller returns with putTokens.
func (e *Engine) post(ctx context.Context, url string, body []byte) (*[]uint32, error) {
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrEngine, err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(hreq)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %w", errTransport, err)
	}
	defer resp.Body.Close()
	rb := bufPool.Get().(*bytes.Buffer)
	defer putBuf(rb)
	_, err = rb.ReadFrom(io.LimitReader(resp.Body, int64(e.opts.MaxResponseBytes)+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: read answer: %w", errTransport, err)
	}
	if resp.StatusCode != http.StatusOK {
		msg := rb.Bytes()
		if len(msg) > 200 {
			msg = msg[:200]
		}
		err := fmt.Errorf("%w: status %d: %q", ErrEngine, resp.StatusCode, msg)
		// 5xx: the worker is unwell. 404/405: it has no /tokenize at all (not vLLM, or
		// an engine without it), so asking again on every request would only add a round
		// trip each time: both start a cooldown.
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
			err = fmt.Errorf("%w (%w)", err, errServer)
		}
		return nil, err
	}
	if rb.Len() > e.opts.MaxResponseBytes {
		return nil, fmt.Errorf("%w: answer larger than %d bytes", ErrEngine, e.opts.MaxResponseBytes)
	}
	ids := getTokens()
	*ids, err = decodeTokenizeResponse(rb.Bytes(), (*ids)[:0])
	if err != nil {
		putTokens(ids)
		return nil, fmt.Errorf("%w: %w", ErrEngine, err)
	}
	return ids, nil
}

// store caches a result and evicts least recently used entries beyond the bounds. mu
// must be held.
func (e *Engine) store(key uint64, hashes []proto.BlockHash, tokens int) {
	if len(hashes) > e.opts.CacheBlocks {
		return
	}
	if old, ok := e.entries[key]; ok { // a concurrent identical call stored it first
		e.remove(old)
	}
	ent := &entry{key: key, hashes: hashes, tokens: tokens}
	e.entries[key] = ent
	e.pushFront(ent)
	e.blocks += len(hashes)
	for len(e.entries) > e.opts.CacheEntries || e.blocks > e.opts.CacheBlocks {
		e.remove(e.lru.prev)
	}
}

// remove drops an entry. mu must be held.
func (e *Engine) remove(ent *entry) {
	e.unlink(ent)
	delete(e.entries, ent.key)
	e.blocks -= len(ent.hashes)
}

// unlink takes an entry out of the LRU ring. mu must be held.
func (e *Engine) unlink(ent *entry) {
	ent.prev.next = ent.next
	ent.next.prev = ent.prev
	ent.prev, ent.next = nil, nil
}

// pushFront makes an entry the most recent. mu must be held.
func (e *Engine) pushFront(ent *entry) {
	ent.prev = &e.lru
	ent.next = e.lru.next
	e.lru.next.prev = ent
	e.lru.next = ent
}

var _ Hasher = (*Engine)(nil)
