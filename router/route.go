package router

import (
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
	exact   bool
	hdr     [24]byte
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
	st.req = scorer.Request{}
	routeStates.Put(st)
}

// pick returns the worker for the next attempt of st.req and its overlap: the policy's
// choice among the available, admissible workers serving the model that have not been
// tried yet; nil when none is left. It records the decision.
func (s *Server) pick(st *routeState, reqID string, attempt int) (*upstream.Worker, int) {
	st.workers = s.pool.Candidates(st.workers[:0], st.req.Model)
	st.cands = st.cands[:0]
	n := 0
	for _, w := range st.workers {
		if slices.Contains(st.tried, w) {
			continue
		}
		c := s.candidate(w, st)
		if !s.admissible(&c) {
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
	if ex, ok := s.sel.(scorer.Explainer); ok {
		st.costs = slices.Grow(st.costs[:0], n)[:n]
		costs = st.costs
		i = ex.SelectExplained(&st.req, st.cands, costs)
	} else {
		i = s.sel.Select(&st.req, st.cands)
	}
	if i < 0 || i >= n {
		i = 0 // a policy bug must not become a panic on the request path
	}
	s.decisions.record(Decision{
		Time: time.Now(), RequestID: reqID, Model: st.req.Model, Policy: s.cfg.Policy,
		PromptTokens: st.req.PromptTokens, Blocks: st.req.Blocks, Exact: st.exact,
		Chosen: st.workers[i].ID, Attempt: attempt,
	}, st.cands, costs)
	return st.workers[i], st.cands[i].OverlapBlocks
}
