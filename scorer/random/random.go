// Package random implements the random policy: a uniformly random candidate.
package random

import "github.com/kvroute/kvroute/scorer"

// Selector picks a uniformly random candidate.
type Selector struct {
	// Rand is the source of choices; nil means [scorer.DefaultRand].
	Rand scorer.Rand
}

// Select implements [scorer.Selector].
func (s *Selector) Select(_ *scorer.Request, cands []scorer.Candidate) int {
	r := s.Rand
	if r == nil {
		r = scorer.DefaultRand()
	}
	return r.IntN(len(cands))
}

var _ scorer.Selector = (*Selector)(nil)
