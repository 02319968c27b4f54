package router

import (
	"fmt"
	"slices"
	"sync"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/scorer"
	"github.com/kvroute/kvroute/scorer/leastinflight"
	"github.com/kvroute/kvroute/scorer/poweroftwo"
	"github.com/kvroute/kvroute/scorer/random"
	"github.com/kvroute/kvroute/scorer/roundrobin"
	"github.com/kvroute/kvroute/upstream"
)

// NewSelector returns the routing policy named name (one of [configs.Policies]).
func NewSelector(name string) (scorer.Selector, error) {
	switch name {
	case "round_robin":
		return &roundrobin.Selector{}, nil
	case "random":
		return &random.Selector{}, nil
	case "least_inflight":
		return &leastinflight.Selector{}, nil
	case "power_of_two":
		return &poweroftwo.Selector{}, nil
	}
	return nil, fmt.Errorf("unknown policy %q (want one of %v)", name, configs.Policies)
}

// routeState is the per-request scratch space of routing, pooled so a decision does not
// allocate.
type routeState struct {
	req     scorer.Request
	workers []*upstream.Worker
	cands   []scorer.Candidate
	tried   []*upstream.Worker
}

var routeStates = sync.Pool{New: func() any { return new(routeState) }}

func getRouteState() *routeState { return routeStates.Get().(*routeState) }

func putRouteState(st *routeState) {
	clear(st.workers[:cap(st.workers)])
	clear(st.tried[:cap(st.tried)])
	st.workers, st.tried, st.cands = st.workers[:0], st.tried[:0], st.cands[:0]
	st.req = scorer.Request{}
	routeStates.Put(st)
}

// pick returns the worker for the next attempt of st.req: the policy's choice among the
// available workers serving the model that have not been tried yet; nil when none is
// left.
func (s *Server) pick(st *routeState) *upstream.Worker {
	st.workers = s.pool.Candidates(st.workers[:0], st.req.Model)
	st.workers = slices.DeleteFunc(st.workers, func(w *upstream.Worker) bool {
		return slices.Contains(st.tried, w)
	})
	if len(st.workers) == 0 {
		return nil
	}
	st.cands = st.cands[:0]
	for _, w := range st.workers {
		st.cands = append(st.cands, scorer.Candidate{ID: w.ID, InFlight: w.InFlight()})
	}
	i := s.sel.Select(&st.req, st.cands)
	if i < 0 || i >= len(st.workers) {
		i = 0 // a policy bug must not become a panic on the request path
	}
	return st.workers[i]
}
