// Package cacheaware implements the cache_aware policy: each candidate's cost is the
// prefill work the request would cost there plus the worker's decode load, in KV blocks,
// and the cheapest wins.
//
// For candidate i, with B the block size and P the prompt's tokens:
//
//	history_i  = max(0, affinity_i - overlap_i)               routed there, no longer cached
//	uncached_i = max(0, P - (overlap_i + AffinityWeight*history_i)*B)   tokens to prefill there
//	prefill_i  = OverlapWeight * (PendingWeight*pending_i + uncached_i) / B  queued + own prefill, in blocks
//	decode_i   = active_i + ceil(P/B)                          KV blocks held while decoding
//	queue_i    = WaitingWeight*waiting_i + KVUsageWeight*usage_i   (fresh scraped metrics only)
//	cost_i     = prefill_i + decode_i + queue_i
//
// This is NVIDIA Dynamo's KV-router cost (overlap_weight * prefill blocks + decode
// blocks; https://docs.nvidia.com/dynamo/latest/router/README.html and
// github.com/ai-dynamo/dynamo lib/kv-router) with optional scraped terms; with
// PendingWeight 1 it is Dynamo's. The default 0.25 counts a token of prefill already
// queued on a worker as a quarter of a token this request must prefill itself: Dynamo's
// cost minimises this request's TTFT, but recomputing a prefix elsewhere also leaves a
// second copy that evicts other content, and the next requests with that prefix split
// between the copies. On llm-d's shared-prefix shape 0.25 raised output tokens/s from
// 1.35x to 1.50x random's and cut TTFT p90 from 17.6 s to 0.31 s; on the Mooncake trace
// its gain is within the run-to-run spread (hit rate 8.8% against 8.5%, means of 6 and
// 5 runs of the first 1,500 requests; 8.3% against 7.7% on the whole trace) for a TTFT
// p50 about 20% and p90 about 10% higher (bench/RESULTS.md, 2026-12-02). A cached
// prefix lowers prefill; queued prefill the router itself sent (pending) and held
// blocks (active) raise the cost, so a burst of same-prefix requests spreads once the
// holder is loaded enough to cost more than recomputing the prefix elsewhere.
//
// Storage tiers: with cache_aware.tier_weights, overlap_i above is the candidate's
// CachedBlocks, each leading block counted at its tier's weight (a CPU-offloaded block
// is loaded back faster than it is recomputed, but not for free), so at equal load a
// GPU holder beats a CPU holder, which beats a worker holding nothing.
//
// Affinity: a worker's routing history (blocks of this prompt the router sent there
// within the prediction TTL, which survives the worker's evictions; the candidate's
// AffinityBlocks) counts AffinityWeight of a cached block for the part the worker no
// longer holds. With KV events the index is exact, so once a conversation's older turns
// are evicted everywhere, a cost that counts only cached blocks places its next turn by
// load alone, anywhere: its content ends up on several workers, each copy evicting other
// content, and its later turns find only pieces of it. Kept on the worker it was routed
// to, a conversation stays in one copy, refreshed by each turn (the routing histories of
// SGLang's and llm-d's approximate policies have that effect). Off by default: on the
// Mooncake trace at 85-90% load (bench/RESULTS.md) it doubled the share of turns sent
// back to their previous turn's worker but the hit rate moved by -0.9 to +0.3 points
// between runs, within run-to-run noise. With exact events the index already knows
// where the newest copy of a conversation is (where its last turn went), so the
// history adds little; what makes llm-d's policy hit more is that it weighs load less.
//
// Load guard: a candidate is skipped when taking the request would put its in-flight
// requests above MaxImbalance times one more than the candidates' mean (the request
// counted): inflight+1 > MaxImbalance*((total+1)/n + 1). The "one more" leaves room for
// affinity at low load, where one conversation more is a large ratio; at high load no
// decision leaves a worker much above MaxImbalance times the mean. The least loaded
// candidate always passes when MaxImbalance >= 1. (SGLang's cache-aware policy has the
// same kind of balance threshold.) Costs steer the
// common case; the guard bounds the worst case, e.g. a long shared prefix cached on one
// worker attracting a burst faster than the router's own load figures catch up.
//
// Temperature 0 picks the minimum, ties at random; a positive temperature samples with
// probability proportional to exp(-(cost_i - min)/Temperature) (temperature in blocks).
// When no candidate has any overlap and the request has a session key, the choice is
// the session's rendezvous-hash winner among the candidates whose cost is within
// SessionSlack of the minimum, so a new conversation sticks to one worker from its first
// turn without ignoring load.
package cacheaware

import (
	"math"

	"github.com/cespare/xxhash/v2"

	"github.com/kvroute/kvroute/scorer"
)

// Options are the policy's weights. The zero value is not useful: start from [Defaults].
type Options struct {
	// OverlapWeight scales prefill blocks against decode blocks. Default 8 (Dynamo's
	// default is 1): recomputing a block delays this request's first token by the whole
	// block's prefill, while a block of another request's KV adds only a little memory
	// traffic to each shared decode step; the load guard, not this weight, keeps a
	// popular prefix from overloading its holder.
	OverlapWeight float64
	// PendingWeight is what a token of prefill already queued on the candidate counts
	// against a token of this request's prefill there. 1 is Dynamo's cost; below 1 a
	// worker holding the prefix keeps the request under more queueing. Default 0.25.
	PendingWeight float64
	// WaitingWeight is the cost, in blocks, of each request waiting in the worker's
	// queue per its scraped metrics. Default 0 (off: the router's own bookkeeping
	// already counts what it sent).
	WaitingWeight float64
	// KVUsageWeight is the cost, in blocks, of a full KV cache (usage 1.0) per the
	// scraped metrics. Default 0 (off).
	KVUsageWeight float64
	// AffinityWeight is the share of a cached block's worth credited for each block of
	// the candidate's routing history it no longer holds (AffinityBlocks beyond
	// OverlapBlocks), in [0, 1]; 0 ignores the history. Default 0 (see the package doc).
	AffinityWeight float64
	// Temperature softens the choice; 0 picks the cheapest. Default 0.
	Temperature float64
	// SessionSlack is how much more expensive, in blocks, than the cheapest a session's
	// sticky worker may be and still be chosen when no worker has overlap. Default 8.
	SessionSlack float64
	// MaxImbalance is the load guard's factor (see the package doc), at least 1; 0
	// disables the guard. Default 1.5.
	MaxImbalance float64
	// Rand breaks ties and samples; nil means [scorer.DefaultRand].
	Rand scorer.Rand
}

// Defaults returns the documented default options.
func Defaults() Options {
	return Options{OverlapWeight: 8, PendingWeight: 0.25, SessionSlack: 8, MaxImbalance: 1.5}
}

// Selector is the cache_aware policy. It is safe for concurrent use if its Rand is.
type Selector struct {
	opts Options
}

// New returns a Selector with the given options.
func New(opts Options) *Selector {
	if opts.Rand == nil {
		opts.Rand = scorer.DefaultRand()
	}
	return &Selector{opts: opts}
}

// UsesPrefixes implements [scorer.PrefixUser]: the cost reads each candidate's overlap.
func (s *Selector) UsesPrefixes() bool { return true }

// Select implements [scorer.Selector].
func (s *Selector) Select(req *scorer.Request, cands []scorer.Candidate) int {
	var buf [64]scorer.Cost
	var costs []scorer.Cost
	if len(cands) <= len(buf) {
		costs = buf[:len(cands)]
	} else {
		costs = make([]scorer.Cost, len(cands))
	}
	return s.SelectExplained(req, cands, costs)
}

// SelectExplained implements [scorer.Explainer]. It does not allocate.
func (s *Selector) SelectExplained(req *scorer.Request, cands []scorer.Candidate, costs []scorer.Cost) int {
	bs := float64(req.BlockSize)
	if bs <= 0 {
		bs = 16 // unhashed request: costs still compare load in 16-token blocks
	}
	prompt := float64(req.PromptTokens)
	reqBlocks := math.Ceil(prompt / bs)
	bar := math.Inf(1) // the guard: candidates with inflight+1 above it are skipped
	if s.opts.MaxImbalance > 0 && len(cands) > 1 {
		total := 0.0
		for i := range cands {
			total += float64(cands[i].InFlight)
		}
		bar = s.opts.MaxImbalance * ((total+1)/float64(len(cands)) + 1)
	}
	best, maxOverlap := 0, 0
	for i := range cands {
		c := &cands[i]
		held := float64(c.OverlapBlocks)
		if c.CachedBlocks > 0 {
			held = c.CachedBlocks // tier-weighted: a CPU block is cheaper than recompute, dearer than GPU
		}
		if h := c.AffinityBlocks - c.OverlapBlocks; h > 0 {
			held += s.opts.AffinityWeight * float64(h)
		}
		uncached := math.Max(0, prompt-held*bs)
		k := scorer.Cost{
			Prefill: s.opts.OverlapWeight * (s.opts.PendingWeight*float64(c.PendingPrefillTokens) + uncached) / bs,
			Decode:  float64(c.ActiveBlocks) + reqBlocks,
		}
		if c.HasMetrics {
			k.Queue = s.opts.WaitingWeight*c.Waiting + s.opts.KVUsageWeight*c.KVUsage
		}
		k.Total = k.Prefill + k.Decode + k.Queue
		if float64(c.InFlight)+1 > bar {
			k.Total = math.Inf(1) // skipped by the guard; the least loaded never is
		}
		costs[i] = k
		if k.Total < costs[best].Total {
			best = i
		}
		maxOverlap = max(maxOverlap, c.OverlapBlocks)
	}
	if maxOverlap == 0 && req.SessionKey != "" {
		return s.sticky(req.SessionKey, cands, costs, costs[best].Total)
	}
	if s.opts.Temperature > 0 {
		return s.sample(costs, costs[best].Total)
	}
	return scorer.ArgMin(len(costs), func(i int) float64 { return costs[i].Total }, s.opts.Rand)
}

// sticky returns the rendezvous-hash winner for key among candidates within
// SessionSlack of the cheapest.
func (s *Selector) sticky(key string, cands []scorer.Candidate, costs []scorer.Cost, minCost float64) int {
	best, bestScore := -1, uint64(0)
	for i := range cands {
		if costs[i].Total > minCost+s.opts.SessionSlack {
			continue
		}
		var d xxhash.Digest
		d.Reset()
		_, _ = d.WriteString(key)
		_, _ = d.WriteString(cands[i].ID)
		if h := d.Sum64(); best < 0 || h > bestScore {
			best, bestScore = i, h
		}
	}
	return best
}

func (s *Selector) sample(costs []scorer.Cost, minCost float64) int {
	var total float64
	for _, c := range costs {
		total += math.Exp(-(c.Total - minCost) / s.opts.Temperature)
	}
	// A uniform draw in [0, total) from the injected integer source.
	const res = 1 << 30
	x := float64(s.opts.Rand.IntN(res)) / res * total
	for i, c := range costs {
		x -= math.Exp(-(c.Total - minCost) / s.opts.Temperature)
		if x < 0 {
			return i
		}
	}
	return len(costs) - 1
}

var (
	_ scorer.Selector   = (*Selector)(nil)
	_ scorer.Explainer  = (*Selector)(nil)
	_ scorer.PrefixUser = (*Selector)(nil)
)
