package scorer

import (
	"cmp"
	"math/rand/v2"
)

// Request is what a policy knows about the request being routed. The router reuses one
// per request; policies must not keep it after Select returns.
type Request struct {
	// Model is the requested model name.
	Model string
	// SessionKey identifies a conversation (a header or the OpenAI "user" field); ""
	// when none.
	SessionKey string
	// PromptTokens is the prompt's length in tokens, exact or estimated; 0 when unknown.
	PromptTokens int
	// Blocks is the number of full blocks of the prompt that were hashed; BlockSize is
	// the tokens per block (0 when the request was not hashed).
	Blocks, BlockSize int
}

// Candidate is one eligible worker's state at decision time, copied by the router so a
// policy reads a consistent snapshot without locks.
type Candidate struct {
	// ID is the worker's configured id.
	ID string
	// InFlight is the number of requests the router has sent to the worker that have
	// not finished, counted by this router (plus, with replica sync, those the other
	// replicas report: router/replica; likewise PendingPrefillTokens and ActiveBlocks).
	InFlight int64
	// OverlapBlocks is how many leading blocks of the request the worker has cached,
	// per the indexer (confirmed or predicted).
	OverlapBlocks int
	// CachedBlocks is OverlapBlocks weighted by storage tier (cache_aware.tier_weights:
	// a block on GPU or predicted counts 1, a block held only in a lower tier such as
	// CPU-offloaded memory its tier's weight), in (0, OverlapBlocks] when OverlapBlocks
	// > 0. 0 means "no tier information": policies then take OverlapBlocks as it is.
	CachedBlocks float64
	// AffinityBlocks is how many leading blocks of the request this router (or a
	// replica) sent to the worker within the prediction TTL, whether or not the worker
	// still holds them: its routing history, which survives the worker's evictions. At
	// least OverlapBlocks when set; 0 when the router keeps no separate history (then
	// the overlap is all the policy knows).
	AffinityBlocks int
	// PendingPrefillTokens are prompt tokens the router sent to the worker that have not
	// produced a first token yet: prefill work queued ahead of this request.
	PendingPrefillTokens int64
	// ActiveBlocks are the KV blocks of the requests the router has in flight on the
	// worker: its decode load.
	ActiveBlocks int64
	// Waiting and KVUsage (0..1) are scraped from the worker's /metrics; valid only when
	// HasMetrics is true (the scrape is fresh enough).
	Waiting    float64
	KVUsage    float64
	HasMetrics bool
}

// Cost is a cost-based policy's breakdown for one candidate, in KV blocks (the unit
// shared by prefill work and decode load). Lower is better.
type Cost struct {
	Prefill float64 // weighted prefill blocks: queued prefill plus the request's uncached part
	Decode  float64 // decode blocks: active blocks plus the request's own
	Queue   float64 // weighted scraped terms (waiting requests, KV usage)
	Total   float64
}

// Explainer is the optional ability of a cost-based policy to report why it chose: it
// selects like [Selector.Select] and fills costs[i] for cands[i] (len(costs) ==
// len(cands)).
type Explainer interface {
	SelectExplained(req *Request, cands []Candidate, costs []Cost) int
}

// Selector picks the worker for a request.
type Selector interface {
	// Select returns the index in cands of the chosen candidate. cands is never empty.
	// Select must be safe for concurrent use.
	Select(req *Request, cands []Candidate) int
}

// PrefixUser is the optional ability of a policy that reads the prefix terms of a
// [Candidate] (OverlapBlocks, AffinityBlocks): the router hashes a request's prompt and
// matches it against the KV index only when its policy reports true, so the baseline
// policies cost no hashing.
type PrefixUser interface {
	UsesPrefixes() bool
}

// Rand is the source of random choices; *rand.Rand from math/rand/v2 satisfies it.
// Implementations used by concurrent selectors must be safe for concurrent use.
type Rand interface {
	IntN(n int) int
}

// globalRand is the goroutine-safe process-wide source of math/rand/v2.
type globalRand struct{}

func (globalRand) IntN(n int) int { return rand.IntN(n) }

// DefaultRand returns a goroutine-safe Rand backed by math/rand/v2's global source.
func DefaultRand() Rand { return globalRand{} }

// ArgMin returns the index i in [0, n) with the smallest key(i), breaking ties
// uniformly at random with r (reservoir sampling over the tied minima). n must be
// positive. It does not allocate when key does not escape.
func ArgMin[K cmp.Ordered](n int, key func(i int) K, r Rand) int {
	best, bestKey, ties := 0, key(0), 1
	for i := 1; i < n; i++ {
		switch k := key(i); {
		case k < bestKey:
			best, bestKey, ties = i, k, 1
		case k == bestKey:
			ties++
			if r.IntN(ties) == 0 {
				best = i
			}
		}
	}
	return best
}
