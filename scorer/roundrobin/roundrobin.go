// Package roundrobin implements the round_robin policy: candidates in turn.
package roundrobin

import (
	"sync/atomic"

	"github.com/kvroute/kvroute/scorer"
)

// Selector picks candidates in turn. Because the candidate slice can change between
// requests (a worker ejected or re-admitted), the turn is a global counter modulo the
// current number of candidates: even but not strictly cyclic while membership changes.
// The zero value is ready to use; it must not be copied after first use.
type Selector struct {
	next atomic.Uint64
}

// Select implements [scorer.Selector].
func (s *Selector) Select(_ *scorer.Request, cands []scorer.Candidate) int {
	return int((s.next.Add(1) - 1) % uint64(len(cands)))
}

var _ scorer.Selector = (*Selector)(nil)
