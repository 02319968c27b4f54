package sim

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/kvroute/kvroute/bench/sim/kvcache"
	"github.com/kvroute/kvroute/bench/sim/kvevents"
	"github.com/kvroute/kvroute/proto"
)

// errRestarted ends requests that were in the engine when it restarted.
var errRestarted = errors.New("engine restarted")

// errBusy is returned by a prefix-cache reset while requests hold blocks.
var errBusy = errors.New("requests are running; prefix cache not reset")

// request is one generation request inside the engine. Fields below mu in the engine are
// guarded by the engine's mu.
type request struct {
	id        string
	promptLen int
	target    int    // output tokens to produce
	maxTokens int    // the request's max_tokens
	outSeed   uint64 // picks the output words
	salt      string
	lora      string // the LoRA adapter ("" for the base model)
	loraID    int64  // its id (1-based position in Config.LoRA), 0 for the base model
	stream    bool   // notify per chunk; otherwise only at the end
	arrival   time.Time
	// notify gets a token (non-blocking send) whenever output advanced enough for a
	// chunk, or the request ended.
	notify chan struct{}

	// Guarded by engine.mu.
	tokens    []uint32 // prompt then generated tokens
	hashes    []uint64 // engine hashes of the full blocks of tokens, memoized
	committed int      // leading blocks of hashes committed to the pool
	blocks    []kvcache.BlockID
	computed  int // tokens whose KV is computed
	cached    int // cached_tokens reported (first admission)
	admitted  bool
	out       int // generated tokens
	notified  int // out at the last notification
	done      bool
	finish    string // "length" or "stop"
	err       error
	aborted   bool
	running   bool

	// P/D (pd.go). holdKey, holdAnyFinish, onHold, onRelease and remoteKV are set
	// before submit; held and heldIDs are guarded by engine.mu.
	holdKey       string // keep the blocks under this key when finished
	holdAnyFinish bool   // hold whatever the finish reason (SGLang); vLLM: "length" only
	onHold        func() // called under engine.mu once the blocks are held
	onRelease     func() // called without the lock when the hold expires unpulled
	remoteKV      bool   // the prompt's KV was pulled: skip its prefill
	held          bool
	heldIDs       []int64
}

// planned is one request's share of a step: n tokens to compute.
type planned struct {
	r *request
	n int
}

// engine is a continuous-batching scheduler over a paged KV cache, modelled on vLLM v1's
// scheduler: each step first serves running requests (one decode token each, or the next
// chunk of a prefill), then admits waiting requests in arrival order while the step's
// token budget, max_num_seqs and free blocks allow.
type engine struct {
	cfg       *Config
	prof      Profile
	blockSize int
	pub       *kvevents.Publisher
	enc       *kvevents.Encoder
	hashSeed  uint64
	dpRank    int // sent in event batches; -1 omits it
	wake      chan struct{}
	stats     *engineStats
	slow      atomic.Uint64 // float64 bits of the slow-down factor
	outIDs    [len(outputWords)]uint32

	// mu guards the fields below and every request's guarded fields.
	mu       sync.Mutex
	pool     *kvcache.Pool
	waiting  []*request
	running  []*request
	plan     []planned
	events   []kvevents.Event
	evicted  []uint64
	finished []*request
	held     map[string]*heldKV // finished prefills' KV kept for a transfer (pd.go)
	gen      uint64             // restarts so far: held blocks of an older pool are not freed
	// The CPU offload tier (offload.go); cpu is nil without one.
	cpu      *kvcache.Offload
	cpuQueue []kvevents.Event // its events of the current step, in order
	evictBuf []uint64
	loadTime time.Duration // CPU-to-GPU copies charged to the current step
}

// engineStats are the engine's counters and gauges, read without the engine lock.
// It must not be copied.
type engineStats struct {
	requests, finished, aborted  atomic.Uint64
	promptTokens, cachedTokens   atomic.Uint64
	generatedTokens, preemptions atomic.Uint64
	prefixQueries, prefixHits    atomic.Uint64
	steps                        atomic.Uint64
	busyNanos, lagNanos          atomic.Int64
	running, waiting, usedBlocks atomic.Int64
	cachedBlocks                 atomic.Int64
	pdWaiting, pdExpired         atomic.Int64 // requests pulling their KV; holds expired
	cpuLoadedTokens              atomic.Uint64
	cpuBlocks                    atomic.Int64
}

func newEngine(cfg *Config, prof Profile, capacity int, pub *kvevents.Publisher, seed uint64, dpRank int, stats *engineStats) *engine {
	e := &engine{
		cfg:       cfg,
		prof:      prof,
		blockSize: cfg.BlockSize,
		pub:       pub,
		enc:       kvevents.NewEncoder(cfg.eventFormat()),
		hashSeed:  seed,
		dpRank:    dpRank,
		wake:      make(chan struct{}, 1),
		stats:     stats,
		pool:      kvcache.New(capacity),
		cpu:       newOffload(cfg),
	}
	e.slow.Store(math.Float64bits(1))
	tz := cfg.tokenizers()
	for i, w := range outputWords {
		if ids := tz.word(w); len(ids) > 0 {
			e.outIDs[i] = ids[0]
		}
	}
	e.updateGauges()
	return e
}

// submit queues r and wakes the engine.
func (e *engine) submit(r *request) {
	e.mu.Lock()
	e.waiting = append(e.waiting, r)
	e.stats.requests.Add(1)
	e.stats.promptTokens.Add(uint64(r.promptLen))
	e.stats.waiting.Store(int64(len(e.waiting)))
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// abort removes r from the engine (client gone). Its blocks are freed at the next step.
func (e *engine) abort(r *request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if r.done {
		return
	}
	r.aborted, r.done = true, true
	e.stats.aborted.Add(1)
	for i, w := range e.waiting {
		if w == r {
			e.waiting = append(e.waiting[:i], e.waiting[i+1:]...)
			break
		}
	}
	e.stats.waiting.Store(int64(len(e.waiting)))
}

// run is the engine loop: schedule a step, sleep its modelled duration, apply it. It
// sleeps on a timer per step, never spins; when the scaled step time is under a
// millisecond, several steps run back to back and the clock catches up at the next
// sleep, so a fast time scale costs CPU per simulated step only.
func (e *engine) run(ctx context.Context) {
	const minSleep = time.Millisecond
	const maxLag = 50 * time.Millisecond
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	next := time.Now()
	for {
		e.mu.Lock()
		d := e.schedule()
		e.mu.Unlock()
		if d < 0 {
			select {
			case <-e.wake:
				next = time.Now()
				continue
			case <-ctx.Done():
				return
			}
		}
		scaled := time.Duration(float64(d) * e.cfg.TimeScale * math.Float64frombits(e.slow.Load()))
		e.stats.busyNanos.Add(int64(scaled))
		next = next.Add(scaled)
		wait := time.Until(next)
		switch {
		case wait >= minSleep:
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				return
			}
		case wait < -maxLag:
			// The host did not run the engine on time (CPU contention): the lost
			// wall time is not modelled work; count it so reports can tell.
			e.stats.lagNanos.Add(int64(-wait))
			next = time.Now()
		}
		e.mu.Lock()
		e.apply()
		e.mu.Unlock()
	}
}

// schedule builds the next step's plan and returns its modelled duration, or -1 when
// there is nothing to do. mu must be held.
func (e *engine) schedule() time.Duration {
	e.plan = e.plan[:0]
	e.purgeAborted()
	budget := e.cfg.MaxNumBatchedTokens
	prefillTokens, decodes, context := 0, 0, 0
	for i := 0; i < len(e.running) && budget > 0; i++ {
		r := e.running[i]
		n := min(len(r.tokens)-r.computed, budget)
		if n <= 0 {
			continue
		}
		if !e.ensureBlocks(r, r.computed+n) {
			// r itself was preempted; running shrank.
			i--
			continue
		}
		// More than one token is a prefill chunk (a preempted request recomputes its
		// generated tokens as prompt); a single token past the prompt is a decode.
		prefill := n > 1 || r.computed < r.promptLen
		if prefill {
			prefillTokens += n
		} else {
			decodes++
			context += r.computed
		}
		budget -= n
		e.plan = append(e.plan, planned{r: r, n: n})
	}
	for len(e.waiting) > 0 && len(e.running) < e.cfg.MaxNumSeqs && budget > 0 {
		r := e.waiting[0]
		n, ok := e.admit(r, budget)
		if !ok {
			break
		}
		e.waiting = e.waiting[1:]
		e.running = append(e.running, r)
		r.running = true
		budget -= n
		prefillTokens += n
		e.plan = append(e.plan, planned{r: r, n: n})
	}
	e.updateGauges()
	if len(e.plan) == 0 {
		return -1
	}
	e.stats.steps.Add(1)
	return e.prof.StepTime(prefillTokens, decodes, context) + e.takeLoadTime()
}

// admit looks up r's cached prefix, pins it and allocates blocks for the first chunk of
// the rest. It returns the tokens to compute this step, or false when the blocks are not
// available (r stays at the head of the queue, as in vLLM). mu must be held.
func (e *engine) admit(r *request, budget int) (int, bool) {
	bs := e.blockSize
	e.hashFull(r)
	// At least one token must be computed to sample from, so a fully cached prompt
	// recomputes its last block (vLLM: max cache hit length is num_tokens - 1).
	maxHit := (len(r.tokens) - 1) / bs
	hit := e.pool.Match(r.hashes[:maxHit])
	r.blocks = e.pool.Touch(r.blocks[:0], r.hashes[:hit])
	cpuHit := e.cpuMatch(r, hit, maxHit)
	r.computed = (hit + cpuHit) * bs
	r.committed = hit
	n := min(len(r.tokens)-r.computed, budget)
	upto := r.computed + n
	if r.remoteKV {
		// The prompt's KV came from the prefill worker: blocks for all of it, and
		// only the last token computed here, to sample the first output token (once:
		// a preempted request recomputes locally, as vLLM does).
		n, upto = 1, len(r.tokens)
	}
	if !e.ensureBlocksNoPreempt(r, upto) {
		e.pool.Free(r.blocks)
		r.blocks = r.blocks[:0]
		r.computed, r.committed = 0, 0
		return 0, false
	}
	e.loadFromCPU(r, hit, cpuHit)
	e.stats.prefixQueries.Add(uint64(len(r.tokens)))
	e.stats.prefixHits.Add(uint64(hit * bs)) // the GPU prefix cache's hits only
	if r.remoteKV {
		r.remoteKV = false
		r.computed = len(r.tokens) - 1
	}
	if !r.admitted {
		r.admitted = true
		r.cached = r.computed
		e.stats.cachedTokens.Add(uint64(r.cached))
	}
	return n, true
}

// ensureBlocksNoPreempt allocates blocks so r can hold upto tokens. mu must be held.
func (e *engine) ensureBlocksNoPreempt(r *request, upto int) bool {
	need := (upto+e.blockSize-1)/e.blockSize - len(r.blocks)
	if need <= 0 {
		return true
	}
	var err error
	r.blocks, e.evicted, err = e.pool.Allocate(r.blocks, need, e.evicted)
	return err == nil
}

// ensureBlocks allocates blocks for a running request, preempting the most recently
// admitted running requests (vLLM's recompute preemption) until they fit. It returns
// false if r itself had to be preempted. mu must be held.
func (e *engine) ensureBlocks(r *request, upto int) bool {
	for !e.ensureBlocksNoPreempt(r, upto) {
		victim := e.running[len(e.running)-1]
		e.preempt(victim)
		if victim == r {
			return false
		}
	}
	return true
}

// preempt frees r's blocks (they stay cached) and puts it back at the head of the
// waiting queue; its generated tokens are kept and recomputed as prompt. mu must be held.
func (e *engine) preempt(r *request) {
	e.running = e.running[:len(e.running)-1]
	for i := range e.plan {
		if e.plan[i].r == r {
			e.plan = append(e.plan[:i], e.plan[i+1:]...)
			break
		}
	}
	e.pool.Free(r.blocks)
	r.blocks = r.blocks[:0]
	r.computed, r.committed = 0, 0
	r.running = false
	e.waiting = append([]*request{r}, e.waiting...)
	e.stats.preemptions.Add(1)
}

// purgeAborted drops aborted requests from the running set. mu must be held.
func (e *engine) purgeAborted() {
	kept := e.running[:0]
	for _, r := range e.running {
		if r.aborted {
			e.pool.Free(r.blocks)
			r.blocks = nil
			r.running = false
			continue
		}
		kept = append(kept, r)
	}
	clear(e.running[len(kept):])
	e.running = kept
}

// apply completes the planned step: KV computed, full blocks cached (BlockStored), a
// token sampled for every request whose computed KV reached its last token, finished
// requests released. mu must be held.
func (e *engine) apply() {
	now := time.Now()
	bs := e.blockSize
	for _, p := range e.plan {
		r := p.r
		if r.aborted || !r.running {
			continue
		}
		r.computed += p.n
		e.hashFull(r)
		if full := r.computed / bs; full > r.committed {
			ev := kvevents.Event{Kind: proto.BlockStored, Hashes: r.hashes[r.committed:full],
				Tokens: r.tokens[r.committed*bs : full*bs], BlockSize: bs, LoRAName: r.lora, LoRAID: r.loraID}
			if r.committed > 0 {
				ev.Parent, ev.HasParent = r.hashes[r.committed-1], true
			}
			for i := r.committed; i < full; i++ {
				e.pool.Commit(r.blocks[i], r.hashes[i])
			}
			e.offload(r.hashes[r.committed:full])
			r.committed = full
			e.events = append(e.events, ev)
		}
		if r.computed < len(r.tokens) {
			continue // prefill continues next step
		}
		r.tokens = append(r.tokens, e.outputToken(r, r.out))
		r.out++
		e.stats.generatedTokens.Add(1)
		if r.out >= r.target {
			r.done = true
			r.finish = "length"
			if !r.forcedLength() {
				r.finish = "stop"
			}
			e.finished = append(e.finished, r)
		}
		if r.done || (r.stream && (r.out == 1 || r.out-r.notified >= e.cfg.StreamChunkTokens)) {
			r.notified = r.out
			signal(r.notify)
		}
	}
	if len(e.finished) > 0 {
		for _, r := range e.finished {
			if !e.holdLocked(r) {
				e.pool.Free(r.blocks)
			}
			r.blocks = nil
			r.running = false
			e.stats.finished.Add(1)
		}
		kept := e.running[:0]
		for _, r := range e.running {
			if r.running {
				kept = append(kept, r)
			}
		}
		clear(e.running[len(kept):])
		e.running = kept
		clear(e.finished)
		e.finished = e.finished[:0]
	}
	e.publish(now)
	e.updateGauges()
}

// publish sends the step's events as one batch: evictions first (they happened at
// scheduling), then stores. mu must be held.
func (e *engine) publish(now time.Time) {
	if len(e.evicted) == 0 && len(e.events) == 0 && len(e.cpuQueue) == 0 {
		return
	}
	all := make([]kvevents.Event, 0, len(e.evicted)+len(e.events)+len(e.cpuQueue))
	for i := range e.evicted {
		all = append(all, kvevents.Event{Kind: proto.BlockRemoved, Hashes: e.evicted[i : i+1]})
	}
	all = append(all, e.events...)
	all = append(all, e.cpuQueue...) // after the GPU stores they resolve through
	ts := float64(now.UnixNano()) / 1e9
	e.pub.Publish(e.enc.Encode(ts, e.dpRank, all))
	e.evicted = e.evicted[:0]
	clear(e.events)
	e.events = e.events[:0]
	clear(e.cpuQueue)
	e.cpuQueue = e.cpuQueue[:0]
}

// hashFull extends r.hashes to every full block of r.tokens. The engine hash is
// xxhash64 over a "kvsim" domain tag, the parent hash (or, for the first block, the
// worker's seed mixed with the cache salt and the LoRA adapter, which vLLM puts in the
// extra keys of every block, so the chain of an adapter never meets the base model's) and
// the block's token ids: opaque, and unlike kvroute's own hash, so nothing can rely on the
// two matching. mu must be held.
func (e *engine) hashFull(r *request) {
	bs := e.blockSize
	var buf [8]byte
	for len(r.hashes) < len(r.tokens)/bs {
		i := len(r.hashes)
		var parent uint64
		if i == 0 {
			parent = e.hashSeed ^ xxhash.Sum64String(r.salt)
			if r.lora != "" {
				parent ^= xxhash.Sum64String("lora/" + r.lora)
			}
		} else {
			parent = r.hashes[i-1]
		}
		var d xxhash.Digest
		d.Reset()
		_, _ = d.WriteString("kvsim")
		binary.BigEndian.PutUint64(buf[:], parent)
		_, _ = d.Write(buf[:])
		for _, t := range r.tokens[i*bs : (i+1)*bs] {
			binary.BigEndian.PutUint32(buf[:4], t)
			_, _ = d.Write(buf[:4])
		}
		r.hashes = append(r.hashes, d.Sum64())
	}
}

// outputToken returns the id of r's i-th generated token.
func (e *engine) outputToken(r *request, i int) uint32 {
	return e.outIDs[outputWordIndex(r.outSeed, i)]
}

// restart ends every request with errRestarted, empties the cache without events and
// restarts the event sequence, as a new engine process would; with rebind the event
// sockets are closed and bound again. mu must not be held.
func (e *engine) restart(announceClear, rebind bool) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, list := range [][]*request{e.running, e.waiting} {
		for _, r := range list {
			r.err, r.done, r.running = errRestarted, true, false
			signal(r.notify)
		}
	}
	e.running, e.waiting = e.running[:0], e.waiting[:0]
	e.plan = e.plan[:0]
	e.dropHeldLocked()
	e.gen++
	e.pool = kvcache.New(e.pool.Capacity())
	e.cpu = newOffload(e.cfg)
	e.events, e.evicted, e.cpuQueue, e.loadTime = e.events[:0], e.evicted[:0], e.cpuQueue[:0], 0
	var err error
	if rebind {
		err = e.pub.Rebind()
	} else {
		e.pub.Restart()
	}
	if announceClear {
		e.events = append(e.events, kvevents.Event{Kind: proto.AllBlocksCleared})
		e.publish(time.Now())
	}
	e.updateGauges()
	return err
}

// resetPrefixCache drops every cache entry and publishes AllBlocksCleared, like vLLM's
// reset_prefix_cache; it refuses while requests hold blocks. mu must not be held.
func (e *engine) resetPrefixCache() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.running) > 0 || len(e.held) > 0 {
		return errBusy
	}
	e.pool.Reset(nil)
	e.cpu = newOffload(e.cfg) // AllBlocksCleared clears every tier
	e.cpuQueue = e.cpuQueue[:0]
	e.events = append(e.events, kvevents.Event{Kind: proto.AllBlocksCleared})
	e.publish(time.Now())
	e.updateGauges()
	return nil
}

// cachedHashes returns the engine hashes of every cached block (one per copy).
func (e *engine) cachedHashes() []uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.pool.Hashes(nil)
}

// updateGauges publishes the engine's gauges. mu must be held.
func (e *engine) updateGauges() {
	e.stats.running.Store(int64(len(e.running)))
	e.stats.waiting.Store(int64(len(e.waiting)))
	e.stats.usedBlocks.Store(int64(e.pool.Capacity() - e.pool.NumFree()))
	e.stats.cachedBlocks.Store(int64(e.pool.NumCached()))
	if e.cpu != nil {
		e.stats.cpuBlocks.Store(int64(e.cpu.Len()))
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// forcedLength reports whether the request stopped at max_tokens rather than at its
// natural end; set by the API layer through target and maxTokens.
func (r *request) forcedLength() bool { return r.target == r.maxTokens }

// outputWordIndex picks the index in outputWords of a request's i-th output token:
// splitmix64 of seed+i, so replies are deterministic per prompt.
func outputWordIndex(seed uint64, i int) int {
	z := seed + uint64(i)*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	return int(z % uint64(len(outputWords)))
}
