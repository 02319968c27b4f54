// Package leastinflight implements the least_inflight policy: the candidate with the
// fewest requests in flight from this router, ties broken at random.
package leastinflight

import "github.com/kvroute/kvroute/scorer"

// Selector picks the candidate with the fewest in-flight requests.
type Selector struct {
	// Rand breaks ties; nil means [scorer.DefaultRand].
	Rand scorer.Rand
}

// Select implements [scorer.Selector]. It does not allocate.
func (s *Selector) Select(_ *scorer.Request, cands []scorer.Candidate) int {
	r := s.Rand
	if r == nil {
		r = scorer.DefaultRand()
	}
	return scorer.ArgMin(len(cands), func(i int) int64 { return cands[i].InFlight }, r)
}

var _ scorer.Selector = (*Selector)(nil)
