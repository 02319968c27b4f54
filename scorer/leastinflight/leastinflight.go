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
	best, ties := 0, 1
	for i := 1; i < len(cands); i++ {
		switch {
		case cands[i].InFlight < cands[best].InFlight:
			best, ties = i, 1
		case cands[i].InFlight == cands[best].InFlight:
			// Reservoir sampling: each tied minimum is kept with probability 1/ties.
			ties++
			if r.IntN(ties) == 0 {
				best = i
			}
		}
	}
	return best
}

var _ scorer.Selector = (*Selector)(nil)
