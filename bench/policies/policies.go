package policies

import (
	"math"

	"github.com/kvroute/kvroute/scorer"
)

// SGLang re-implements the SGLang model gateway's cache_aware policy
// (sgl-model-gateway, policies/cache_aware.rs): when the load is imbalanced (max - min
// in-flight above BalanceAbs and max above min*BalanceRel) it routes to the least loaded
// worker; otherwise, if the best prefix match covers more than CacheThreshold of the
// request, to the best-matching worker, else to the least loaded one.
//
// Differences from the original: SGLang matches characters in a text radix tree of its
// own routing history; here the match is the router's block overlap (OverlapBlocks over
// Blocks), which is the same signal at block granularity when the run gives the router no
// engine events (its index then holds only routing predictions, as SGLang's tree does).
// Load is the router's in-flight count, as SGLang's is.
type SGLang struct {
	// BalanceAbs and BalanceRel are SGLang's balance_abs_threshold (32) and
	// balance_rel_threshold (1.1); CacheThreshold its cache_threshold (0.5).
	BalanceAbs     int64
	BalanceRel     float64
	CacheThreshold float64
	// Rand breaks ties; nil means scorer.DefaultRand().
	Rand scorer.Rand
}

// NewSGLang returns the policy with SGLang's default thresholds.
func NewSGLang() *SGLang { return &SGLang{BalanceAbs: 32, BalanceRel: 1.1, CacheThreshold: 0.5} }

// Select implements [scorer.Selector].
func (p *SGLang) Select(req *scorer.Request, cands []scorer.Candidate) int {
	r := p.Rand
	if r == nil {
		r = scorer.DefaultRand()
	}
	lo, hi := cands[0].InFlight, cands[0].InFlight
	for _, c := range cands[1:] {
		lo, hi = min(lo, c.InFlight), max(hi, c.InFlight)
	}
	if hi-lo > p.BalanceAbs && float64(hi) > float64(lo)*p.BalanceRel {
		return leastInFlight(cands, r)
	}
	best, ties := 0, 1
	for i := 1; i < len(cands); i++ {
		switch {
		case cands[i].OverlapBlocks > cands[best].OverlapBlocks:
			best, ties = i, 1
		case cands[i].OverlapBlocks == cands[best].OverlapBlocks:
			ties++
			if r.IntN(ties) == 0 {
				best = i
			}
		}
	}
	if req.Blocks > 0 && float64(cands[best].OverlapBlocks)/float64(req.Blocks) > p.CacheThreshold {
		return best
	}
	return leastInFlight(cands, r)
}

// leastInFlight returns the candidate with the fewest in-flight requests, random among
// ties.
func leastInFlight(cands []scorer.Candidate, r scorer.Rand) int {
	return scorer.ArgMin(len(cands), func(i int) int64 { return cands[i].InFlight }, r)
}

// LLMD re-implements llm-d's default scheduling profile with its approximate prefix
// scorer: score = PrefixWeight*prefix + QueueWeight*queue + KVWeight*kv, highest wins,
// where prefix = matched blocks / request blocks, queue = min-max normalised waiting
// requests (1 for the shortest queue), kv = 1 - KV-cache usage (llm-d's
// prefix-cache-scorer, queue-scorer, kv-cache-utilization-scorer, weights 3, 2, 2).
//
// Differences from the original: llm-d hashes characters of the prompt into its own LRU
// of 31,250 blocks per server updated with each routing decision; here the match comes
// from the router's index, which holds the same routing predictions (with a TTL instead
// of an LRU) when the run gives it no engine events. Waiting and KV usage are the
// router's scraped worker metrics; a candidate without fresh metrics scores 0 on both.
type LLMD struct {
	PrefixWeight, QueueWeight, KVWeight float64
	// Rand breaks ties; nil means scorer.DefaultRand().
	Rand scorer.Rand
}

// NewLLMD returns the policy with llm-d's default weights 3/2/2.
func NewLLMD() *LLMD { return &LLMD{PrefixWeight: 3, QueueWeight: 2, KVWeight: 2} }

// Select implements [scorer.Selector].
func (p *LLMD) Select(req *scorer.Request, cands []scorer.Candidate) int {
	r := p.Rand
	if r == nil {
		r = scorer.DefaultRand()
	}
	wmin, wmax := math.Inf(1), math.Inf(-1)
	for _, c := range cands {
		if c.HasMetrics {
			wmin, wmax = min(wmin, c.Waiting), max(wmax, c.Waiting)
		}
	}
	best, ties := 0, 0
	var bestScore float64
	for i, c := range cands {
		var s float64
		if req.Blocks > 0 {
			s += p.PrefixWeight * float64(c.OverlapBlocks) / float64(req.Blocks)
		}
		if c.HasMetrics {
			q := 1.0
			if wmax > wmin {
				q = (wmax - c.Waiting) / (wmax - wmin)
			}
			s += p.QueueWeight*q + p.KVWeight*(1-c.KVUsage)
		}
		switch {
		case ties == 0 || s > bestScore:
			best, bestScore, ties = i, s, 1
		case s == bestScore:
			ties++
			if r.IntN(ties) == 0 {
				best = i
			}
		}
	}
	return best
}

// Dynamo re-implements the cost function of NVIDIA Dynamo's KV router
// (lib/kv-router, scheduler): cost = OverlapWeight * prefill_tokens / block_size +
// decode_blocks, lowest wins, where prefill_tokens = the worker's active prefill tokens
// plus the request's tokens not cached there and decode_blocks = the worker's active
// blocks plus the request's blocks; ties at random (temperature 0).
//
// Differences from the original: Dynamo breaks ties first by the smaller radix tree;
// here at random. The load terms are kvroute's router-side bookkeeping (pending prefill
// tokens, active blocks), which follow Dynamo's definition (added on route, prefill done
// at the first token, freed at the end).
type Dynamo struct {
	// OverlapWeight is Dynamo's kv_overlap_score_weight (default 1).
	OverlapWeight float64
	// Rand breaks ties; nil means scorer.DefaultRand().
	Rand scorer.Rand
}

// NewDynamo returns the policy with Dynamo's default overlap weight 1.
func NewDynamo() *Dynamo { return &Dynamo{OverlapWeight: 1} }

// Select implements [scorer.Selector].
func (p *Dynamo) Select(req *scorer.Request, cands []scorer.Candidate) int {
	r := p.Rand
	if r == nil {
		r = scorer.DefaultRand()
	}
	bs := req.BlockSize
	if bs <= 0 {
		bs = 16
	}
	reqBlocks := float64((req.PromptTokens + bs - 1) / bs)
	best, ties := 0, 0
	var bestCost float64
	for i, c := range cands {
		uncached := max(0, req.PromptTokens-c.OverlapBlocks*bs)
		prefill := float64(c.PendingPrefillTokens) + float64(uncached)
		cost := p.OverlapWeight*prefill/float64(bs) + float64(c.ActiveBlocks) + reqBlocks
		switch {
		case ties == 0 || cost < bestCost:
			best, bestCost, ties = i, cost, 1
		case cost == bestCost:
			ties++
			if r.IntN(ties) == 0 {
				best = i
			}
		}
	}
	return best
}

// UsesPrefixes implements [scorer.PrefixUser]: the router must hash prompts for it.
func (p *SGLang) UsesPrefixes() bool { return true }

// UsesPrefixes implements [scorer.PrefixUser]: the router must hash prompts for it.
func (p *LLMD) UsesPrefixes() bool { return true }

// UsesPrefixes implements [scorer.PrefixUser]: the router must hash prompts for it.
func (p *Dynamo) UsesPrefixes() bool { return true }

var (
	_ scorer.PrefixUser = (*SGLang)(nil)
	_ scorer.PrefixUser = (*LLMD)(nil)
	_ scorer.PrefixUser = (*Dynamo)(nil)
	_ scorer.Selector   = (*SGLang)(nil)
	_ scorer.Selector   = (*LLMD)(nil)
	_ scorer.Selector   = (*Dynamo)(nil)
)
