// Package poweroftwo implements the power_of_two policy: two distinct candidates drawn
// at random, the one with fewer in-flight requests wins (Mitzenmacher, "The Power of Two
// Choices in Randomized Load Balancing", 2001). It avoids the herd that least_inflight
// causes when many routers share stale load figures.
package poweroftwo

import "github.com/kvroute/kvroute/scorer"

// Selector picks the less loaded of two random candidates.
type Selector struct {
	// Rand draws the two candidates; nil means [scorer.DefaultRand].
	Rand scorer.Rand
}

// Select implements [scorer.Selector]. It does not allocate.
func (s *Selector) Select(_ *scorer.Request, cands []scorer.Candidate) int {
	if len(cands) == 1 {
		return 0
	}
	r := s.Rand
	if r == nil {
		r = scorer.DefaultRand()
	}
	a := r.IntN(len(cands))
	b := r.IntN(len(cands) - 1)
	if b >= a {
		b++ // distinct from a, uniform over the rest
	}
	if cands[b].InFlight < cands[a].InFlight {
		return b
	}
	return a
}

var _ scorer.Selector = (*Selector)(nil)
