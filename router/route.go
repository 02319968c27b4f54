package router

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/scorer"
	"github.com/kvroute/kvroute/scorer/cacheaware"
	"github.com/kvroute/kvroute/scorer/registry"
	"github.com/kvroute/kvroute/upstream"
)

// NewSelector returns the routing policy named cfg.Policy, from the policy registry
// (scorer/registry) with the cache_aware weights of cfg.
func NewSelector(cfg *configs.Config) (scorer.Selector, error) {
	ca := cfg.CacheAware
	return registry.New(cfg.Policy, registry.Params{CacheAware: cacheaware.Options{
		OverlapWeight: ca.OverlapWeight, PendingWeight: ca.PendingWeight, AffinityWeight: ca.AffinityWeight, WaitingWeight: ca.WaitingWeight, KVUsageWeight: ca.KVUsageWeight,
		Temperature: ca.Temperature, SessionSlack: ca.SessionSlack, MaxImbalance: ca.MaxImbalance,
	}})
}

// routeState is the per-request scratch space of routing, pooled so a decision does not
// allocate.
type routeState struct {
	req     scorer.Request
	workers []*upstream.Worker
	cands   []scorer.Candidate
	costs   []scorer.Cost
	tried   []*upstream.Worker
	hashes  []proto.BlockHash
	matches []indexer.WorkerMatch
	hist    []indexer.WorkerMatch // matches in the routing history (Server.history)
	// staleWeight is events.stale_weight, set with matches (overlap reads it).
	staleWeight float64
	// guarded counts the candidates of the last pick filtered out by the load guard
	// (admissible): when pick finds none and guarded > 0, the fleet is full, not down.
	guarded int
	exact   bool
	hdr     [24]byte
	// only restricts the candidates to these endpoints (an endpoint picker's subset
	// hint, pick.go); nil means no restriction.
	only *endpointSet
	// dec is the decision of the current attempt, for the worker's reported usage.
	dec decisionRef
	hop hopScratch // stripHopByHop's
	// phase restricts pick to one pool of a prefill/decode disaggregated request and
	// chooses its selector (pd.go); phaseAll (the zero value) is aggregated serving.
	phase pdPhase
	// decodeTokens is the output budget of the request (max_tokens), counted on its
	// decode worker while it runs (pd.go).
	decodeTokens int64
}

var routeStates = sync.Pool{New: func() any { return new(routeState) }}

func getRouteState() *routeState { return routeStates.Get().(*routeState) }

func putRouteState(st *routeState) {
	clear(st.workers[:cap(st.workers)])
	clear(st.tried[:cap(st.tried)])
	clear(st.matches[:cap(st.matches)]) // they hold worker id strings
	clear(st.hist[:cap(st.hist)])
	st.workers, st.tried, st.cands, st.costs = st.workers[:0], st.tried[:0], st.cands[:0], st.costs[:0]
	st.hashes, st.matches, st.hist, st.exact = st.hashes[:0], st.matches[:0], st.hist[:0], false
	st.only = nil
	st.req = scorer.Request{}
	st.phase, st.decodeTokens = phaseAll, 0
	routeStates.Put(st)
}

// pick returns the worker for the next attempt of st.req and its overlap: the policy's
// choice among the available, admissible workers serving the model that have not been
// tried yet; nil when none is left. It records the decision.
func (s *Server) pick(st *routeState, reqID string, attempt int) (*upstream.Worker, int) {
	st.workers = s.pool.Candidates(st.workers[:0], st.req.Model)
	st.cands = st.cands[:0]
	st.guarded = 0
	n := 0
	for _, w := range st.workers {
		if slices.Contains(st.tried, w) || !st.phase.admits(w) || st.only != nil && !st.only.has(w) {
			continue
		}
		c := s.candidate(w, st)
		if !s.admissible(&c) {
			st.guarded++
			continue
		}
		st.workers[n] = w
		st.cands = append(st.cands, c)
		n++
	}
	st.workers = st.workers[:n]
	if n == 0 {
		return nil, 0
	}
	var i int
	var costs []scorer.Cost
	if st.phase == phaseDecode {
		st.costs = slices.Grow(st.costs[:0], n)[:n]
		costs = st.costs
		i = s.selectDecode(st.cands, costs)
	} else if ex, ok := s.sel.(scorer.Explainer); ok {
		st.costs = slices.Grow(st.costs[:0], n)[:n]
		costs = st.costs
		i = ex.SelectExplained(&st.req, st.cands, costs)
	} else {
		i = s.sel.Select(&st.req, st.cands)
	}
	if i < 0 || i >= n {
		i = 0 // a policy bug must not become a panic on the request path
	}
	// The cost weighed a stale worker's blocks events.stale_weight; what the router
	// believes the chosen worker holds (its load accounting, predicted cached tokens,
	// the cached-blocks header) is the index's overlap, unweighted.
	held := st.held(st.workers[i].ID)
	st.dec = s.decisions.record(Decision{
		Time: time.Now(), RequestID: reqID, Model: st.req.Model, Policy: s.cfg.Policy,
		PromptTokens: st.req.PromptTokens, Blocks: st.req.Blocks, Exact: st.exact,
		Chosen: st.workers[i].ID, Attempt: attempt, Phase: st.phase.label(),
		PredictedCachedTokens: predictedTokens(&st.req, held),
	}, st.cands, costs)
	return st.workers[i], held
}

// Decision is one routing decision with every candidate's figures, for the admin API
// and the dashboard.
type Decision struct {
	Time         time.Time           `json:"time"`
	RequestID    string              `json:"request_id"`
	Model        string              `json:"model"`
	Policy       string              `json:"policy"`
	PromptTokens int                 `json:"prompt_tokens"`
	Blocks       int                 `json:"blocks"`
	Exact        bool                `json:"exact"` // token-exact hashes (not approx)
	Chosen       string              `json:"chosen"`
	Attempt      int                 `json:"attempt"`
	Candidates   []DecisionCandidate `json:"candidates"`
	// PredictedCachedTokens is the prompt tokens the chosen worker was believed to hold
	// (its overlap in blocks times the block size, at most the prompt).
	PredictedCachedTokens int `json:"predicted_cached_tokens"`
	// Phase is "prefill" or "decode" for the two picks of a disaggregated request
	// (pd.go), "" for aggregated serving. A decode pick's costs are its load:
	// DecodeCost the KV usage term, QueueCost requests in flight and queued decode tokens.
	Phase string `json:"phase,omitempty"`
	// Reported is the worker's own usage for this request, once its answer has said
	// (usage.prompt_tokens and usage.prompt_tokens_details.cached_tokens); nil before,
	// and for answers without usage.
	Reported *ReportedUsage `json:"reported"`
}

// ReportedUsage is what a worker reported of a request's prompt.
type ReportedUsage struct {
	PromptTokens int `json:"prompt_tokens"`
	CachedTokens int `json:"cached_tokens"`
}

// decisionRef names one recorded decision; a ref whose slot has been reused since
// refers to nothing.
type decisionRef struct {
	slot int
	seq  uint64
}

// DecisionCandidate is one candidate's figures at decision time; costs are in blocks.
type DecisionCandidate struct {
	Worker         string  `json:"worker"`
	OverlapBlocks  int     `json:"overlap_blocks"`
	AffinityBlocks int     `json:"affinity_blocks,omitempty"` // routing history (scorer.Candidate.AffinityBlocks)
	InFlight       int64   `json:"in_flight"`
	PendingPrefill int64   `json:"pending_prefill_tokens"`
	ActiveBlocks   int64   `json:"active_blocks"`
	PrefillCost    float64 `json:"prefill_cost"`
	DecodeCost     float64 `json:"decode_cost"`
	QueueCost      float64 `json:"queue_cost"`
	TotalCost      float64 `json:"total_cost"`
}

// decisionLog is a fixed-size ring of the most recent decisions. Recording reuses the
// slots' candidate slices, so it does not allocate once warm.
type decisionLog struct {
	// mu guards the fields below.
	mu   sync.Mutex
	ring []Decision
	seqs []uint64 // the record count when each slot was written
	seq  uint64
	next int
	full bool
}

func newDecisionLog(n int) *decisionLog {
	return &decisionLog{ring: make([]Decision, n), seqs: make([]uint64, n)}
}

// report attaches a worker's reported usage to the decision ref names, if it is still in
// the ring.
func (l *decisionLog) report(ref decisionRef, u ReportedUsage) {
	if ref.seq == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seqs[ref.slot] == ref.seq {
		l.ring[ref.slot].Reported = &u // off the decision path: one small allocation
	}
}

// record stores a decision; cands and costs are copied (costs may be nil).
func (l *decisionLog) record(d Decision, cands []scorer.Candidate, costs []scorer.Cost) decisionRef {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	ref := decisionRef{slot: l.next, seq: l.seq}
	l.seqs[l.next] = l.seq
	slot := &l.ring[l.next]
	reuse := slot.Candidates[:0]
	*slot = d
	for i, c := range cands {
		dc := DecisionCandidate{
			Worker: c.ID, OverlapBlocks: c.OverlapBlocks, AffinityBlocks: c.AffinityBlocks, InFlight: c.InFlight,
			PendingPrefill: c.PendingPrefillTokens, ActiveBlocks: c.ActiveBlocks,
		}
		if costs != nil {
			k := costs[i]
			dc.PrefillCost, dc.DecodeCost, dc.QueueCost, dc.TotalCost = k.Prefill, k.Decode, k.Queue, k.Total
		}
		reuse = append(reuse, dc)
	}
	slot.Candidates = reuse
	l.next = (l.next + 1) % len(l.ring)
	if l.next == 0 {
		l.full = true
	}
	return ref
}

// Decisions returns up to n of the most recent routing decisions, newest first. The
// result is the caller's.
func (s *Server) Decisions(n int) []Decision { return s.decisions.recent(n) }

// recent returns up to n decisions, newest first, as deep copies.
func (l *decisionLog) recent(n int) []Decision {
	l.mu.Lock()
	defer l.mu.Unlock()
	size := l.next
	if l.full {
		size = len(l.ring)
	}
	n = min(n, size)
	out := make([]Decision, 0, n)
	for i := 1; i <= n; i++ {
		d := l.ring[(l.next-i+len(l.ring))%len(l.ring)]
		d.Candidates = slices.Clone(d.Candidates)
		if d.Reported != nil {
			r := *d.Reported
			d.Reported = &r
		}
		out = append(out, d)
	}
	return out
}

// Explain says in one line why d chose its worker: the chosen worker's cached share of
// the prompt and cost against the next cheapest candidate (costs in blocks).
func Explain(d *Decision) string {
	var chosen *DecisionCandidate
	var next *DecisionCandidate
	for i := range d.Candidates {
		c := &d.Candidates[i]
		if c.Worker == d.Chosen {
			chosen = c
		} else if next == nil || c.TotalCost < next.TotalCost || math.IsInf(next.TotalCost, 1) && c.TotalCost <= next.TotalCost {
			next = c
		}
	}
	if chosen == nil {
		return fmt.Sprintf("%s chose %s", d.Policy, d.Chosen)
	}
	if d.Phase == "decode" { // pd.go selectDecode: load only
		return fmt.Sprintf("decode on %s by load: KV usage term %.1f, queue %.1f (requests in flight + queued decode tokens/%d), total %.1f among %d decode workers",
			d.Chosen, chosen.DecodeCost, chosen.QueueCost, decodeTokensPerUnit, chosen.TotalCost, len(d.Candidates))
	}
	b := fmt.Sprintf("%s holds %d of %d prompt blocks", d.Chosen, chosen.OverlapBlocks, d.Blocks)
	if !d.Exact && d.Blocks > 0 {
		b += " (approx hashes)"
	}
	costs := false
	for _, c := range d.Candidates {
		costs = costs || c.TotalCost != 0
	}
	switch {
	case next == nil:
		b += "; the only candidate"
	case costs:
		b += fmt.Sprintf("; cost %.1f blocks (prefill %.1f, decode %.1f, queue %.1f) vs %.1f for %s, the next cheapest",
			chosen.TotalCost, chosen.PrefillCost, chosen.DecodeCost, chosen.QueueCost, next.TotalCost, next.Worker)
		if chosen.TotalCost > next.TotalCost {
			b += " (session stickiness or temperature)"
		}
		if guarded := countGuarded(d.Candidates); guarded > 0 {
			b += fmt.Sprintf("; %d over the load guard", guarded)
		}
	default:
		b += fmt.Sprintf("; picked by %s among %d candidates", d.Policy, len(d.Candidates))
	}
	if d.Attempt > 0 {
		b += fmt.Sprintf("; retry %d", d.Attempt)
	}
	if d.Phase != "" {
		b = d.Phase + ": " + b
	}
	return b
}

func countGuarded(cs []DecisionCandidate) int {
	n := 0
	for _, c := range cs {
		if math.IsInf(c.TotalCost, 1) {
			n++
		}
	}
	return n
}
