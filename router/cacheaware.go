package router

import (
	"context"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/router/blockhash"
	"github.com/kvroute/kvroute/scorer"
	"github.com/kvroute/kvroute/upstream"
	"github.com/kvroute/kvroute/upstream/scrape"
)

// defaultBlockSize is used for a model until its workers report theirs; it is vLLM's
// default.
const defaultBlockSize = 16

// blockSizes holds the KV block size of each model, as configured or as read from its
// workers' metrics. Safe for concurrent use.
type blockSizes struct {
	configured int
	// mu guards byModel.
	mu      sync.RWMutex
	byModel map[string]int
}

// learn records a worker's block size for model and returns the size the router uses for
// it; known is false when this is the first size seen (it becomes the model's).
func (b *blockSizes) learn(model string, n int) (use int, known bool) {
	if b.configured > 0 {
		return b.configured, true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if cur, ok := b.byModel[model]; ok {
		return cur, true
	}
	if b.byModel == nil {
		b.byModel = map[string]int{}
	}
	b.byModel[model] = n
	return n, false
}

func (b *blockSizes) get(model string) int {
	if b.configured > 0 {
		return b.configured
	}
	b.mu.RLock()
	n := b.byModel[model]
	b.mu.RUnlock()
	if n > 0 {
		return n
	}
	return defaultBlockSize
}

// OnScrape receives a worker's scraped metrics (a [scrape.Callback]): it stores them for
// the policy, sizes the index's tables for the worker's KV capacity, and learns or checks
// the block size of the worker's models. A block size that differs from the
// configured one, or between workers of one model, makes every prefix match of those
// workers fail silently, so it is logged loudly and counted
// (kvroute_router_block_size_mismatch). A failed scrape (err != nil) and an unknown
// worker id are ignored. Safe for concurrent use.
func (s *Server) OnScrape(id string, m scrape.Sample, at time.Time, err error) {
	w := s.pool.Worker(id)
	if w == nil || err != nil {
		return
	}
	w.SetMetrics(upstream.EngineMetrics{
		Running: m.Running, Waiting: m.Waiting, KVUsage: m.KVUsage, BlockSize: m.BlockSize, NumBlocks: m.NumBlocks,
		PrefixQueries: m.PrefixQueries, PrefixHits: m.PrefixHits, Engine: m.Engine, At: at,
	})
	if s.index != nil {
		// Size the worker's engine-hash tables for its whole cache once, instead of
		// rehashing them as the cache fills (a no-op after the first scrape).
		s.index.Reserve(id, m.NumBlocks)
	}
	if m.BlockSize <= 0 {
		return
	}
	mismatch := false
	for _, model := range w.Models() {
		want, known := s.blocks.learn(model, m.BlockSize)
		if known && want != m.BlockSize {
			mismatch = true
			if s.mismatchLogged.CompareAndSwap(false, true) || s.log.Enabled(context.Background(), slog.LevelDebug) {
				s.log.Error("KV block size mismatch: this worker's prefixes will never match requests",
					"worker", id, "model", model, "worker_block_size", m.BlockSize, "router_block_size", want)
			}
		}
	}
	s.metrics.blockMismatch.WithLabelValues(id).Set(b2f(mismatch))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// hashPrompt fills st with the request's block hashes and prompt length, and asks the
// index which workers hold them. It never fails the request: the hasher falls back to
// approx mode when the configured mode fails (see blockhash.Fallback), and a request that
// cannot be hashed at all (say, an embeddings input) is routed on load alone.
//
// A request naming a LoRA adapter is hashed as vLLM hashes it: under the adapter's base
// model with the adapter's name in the seed (upstream.Pool.ResolveModel), which is how
// the index keys the blocks of the adapter's KV events (the worker's base model and the
// event's lora_name). Hashed under the adapter's name alone, it would never match them.
//
// A chat holding a non-text content part (an image, ...) is hashed only up to it
// (blockhash.Result.Truncated), counted in kvroute_router_multimodal_truncated_total: the
// engine hashes the part by its content, which the router does not see, so two requests
// with the same text and different images must not match past it.
func (s *Server) hashPrompt(ctx context.Context, r *request, st *routeState) {
	if s.hasher == nil || !s.prefixes {
		return // the baseline policies do not look at prefixes
	}
	base, lora := s.pool.ResolveModel(r.Model)
	pr := blockhash.Request{
		Model: base, LoRA: lora, Messages: r.Msgs, Prompt: r.Prompt, CacheSalt: r.CacheSalt,
		BlockSize: s.blocks.get(r.Model), Options: r.Options, Body: r.Body,
	}
	res, err := s.hasher.Hash(ctx, &pr, st.hashes[:0])
	if err != nil {
		s.log.Debug("prompt not hashed", "model", r.Model, "err", err)
		return
	}
	if res.Truncated {
		s.metrics.mmTruncated.WithLabelValues(r.Model).Inc()
	}
	st.hashes = res.Hashes
	st.exact = res.Exact
	st.req.PromptTokens, st.req.Blocks, st.req.BlockSize = res.Tokens, len(res.Hashes), pr.BlockSize
	if s.index != nil && len(st.hashes) > 0 {
		st.matches = s.index.Match(st.hashes, st.matches[:0])
		st.staleWeight = s.cfg.Events.StaleWeight
	}
	if s.history != nil && len(st.hashes) > 0 {
		st.hist = s.history.Match(st.hashes, st.hist[:0])
	}
}

// overlap returns how many leading blocks of the request worker id holds (the best of
// its data-parallel ranks), a stale rank's counted at events.stale_weight.
func (st *routeState) overlap(id string) int { return bestMatch(st.matches, id, st.staleWeight) }

// held returns how many leading blocks of the request worker id holds per the index,
// stale or not: the router's belief, where overlap is the cost's weighed figure.
func (st *routeState) held(id string) int { return bestMatch(st.matches, id, 1) }

// bestMatch returns the longest match of worker id in ms (the best of its data-parallel
// ranks), 0 when it has none. The match of a rank whose event feed is stale
// (indexer.WorkerMatch.Stale, see upstream/kvevents.Staleness) counts staleWeight of its
// blocks, rounded down: its entries may show blocks the engine has evicted since.
func bestMatch(ms []indexer.WorkerMatch, id string, staleWeight float64) int {
	best := 0
	for i := range ms {
		if m := &ms[i]; m.Worker.ID == id {
			n := m.Blocks
			if m.Stale {
				n = int(float64(n) * staleWeight)
			}
			best = max(best, n)
		}
	}
	return best
}

// candidate builds the policy's view of w for the request in st.
func (s *Server) candidate(w *upstream.Worker, st *routeState) scorer.Candidate {
	c := scorer.Candidate{
		ID: w.ID, InFlight: w.InFlight(),
		PendingPrefillTokens: w.PendingPrefillTokens(), ActiveBlocks: w.ActiveBlocks(),
	}
	c.OverlapBlocks, c.CachedBlocks = overlapCached(st.matches, w.ID, st.staleWeight)
	if s.history != nil {
		c.AffinityBlocks = max(c.OverlapBlocks, bestMatch(st.hist, w.ID, 1))
	}
	if s.replica != nil {
		// The other replicas' load on w: the policy and the guard see the fleet's.
		r := s.replica.Remote(w.ID)
		c.InFlight, c.PendingPrefillTokens, c.ActiveBlocks = c.InFlight+r.InFlight, c.PendingPrefillTokens+r.PrefillTokens, c.ActiveBlocks+r.Blocks
	}
	if m, ok := w.Metrics(s.cfg.CacheAware.MetricsMaxAge); ok {
		c.Waiting, c.KVUsage, c.HasMetrics = m.Waiting, m.KVUsage, true
	}
	return c
}

// admissible applies the hard limits that filter candidates before any policy runs.
func (s *Server) admissible(c *scorer.Candidate) bool {
	ca := &s.cfg.CacheAware
	if ca.MaxInFlight > 0 && c.InFlight >= int64(ca.MaxInFlight) {
		return false
	}
	return !c.HasMetrics || c.KVUsage < ca.MaxKVUsage
}

// beginLoad counts the request on w: its uncached prompt tokens as pending prefill and
// its prompt blocks as held, for at most the total timeout plus a minute.
func (s *Server) beginLoad(w *upstream.Worker, st *routeState, overlap int) *upstream.Load {
	if st.phase == phaseDecode {
		return s.beginDecodeLoad(w, st) // pd.go
	}
	bs := st.req.BlockSize
	if bs <= 0 {
		bs = defaultBlockSize
	}
	prompt := st.req.PromptTokens
	prefill := max(0, prompt-overlap*bs)
	blocks := int(math.Ceil(float64(prompt) / float64(bs)))
	l := w.BeginNotify(int64(prefill), int64(blocks), s.cfg.Timeouts.Total+loadGrace, s.queue.ended)
	if s.replica != nil {
		s.replica.Changed() // the other replicas learn of it within replica.flush_interval
	}
	return l
}

// committed records what a successful routing decision implies: the worker now holds
// (or soon will) the request's blocks. Called by settle.
func (s *Server) committed(w *upstream.Worker, st *routeState, overlap int, model string) {
	if s.index != nil && len(st.hashes) > 0 {
		// The router does not pick a data-parallel rank (the engine's own DP balancer
		// does), so the prediction is recorded under rank 0 as "somewhere on this
		// worker": overlap takes the best rank of a worker, so the worker-level overlap
		// is right; if another rank stores the blocks, the rank-0 prediction is not
		// replaced by them and lasts until its TTL.
		s.index.Predict(proto.WorkerKey{ID: w.ID}, st.hashes, s.cfg.CacheAware.PredictionTTL)
		if s.history != nil {
			s.history.Predict(proto.WorkerKey{ID: w.ID}, st.hashes, s.cfg.CacheAware.PredictionTTL)
		}
		if s.replica != nil {
			s.replica.Predicted(w.ID, st.hashes)
		}
	}
	set := s.series(w.ID, model)
	if st.req.Blocks > 0 {
		set.overlapObserver().Observe(float64(overlap) / float64(st.req.Blocks))
	}
	set.promptTokensCounter().Add(float64(st.req.PromptTokens))
	set.predictedHitCounter().Add(float64(overlap * st.req.BlockSize))
}

// setCachedBlocksHeader tells the client how much of its prompt the router expected to
// be cached on the chosen worker (headers.cached_blocks).
func (s *Server) setCachedBlocksHeader(ctx *fasthttp.RequestCtx, st *routeState, overlap int) {
	if s.cfg.Headers.CachedBlocks {
		b := strconv.AppendInt(st.hdr[:0], int64(overlap), 10)
		b = append(b, '/')
		b = strconv.AppendInt(b, int64(st.req.Blocks), 10)
		ctx.Response.Header.SetBytesV("x-kvroute-cached-blocks", b)
	}
}
