package scorer

import (
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
}

// Candidate is one eligible worker's state at decision time, copied by the router so a
// policy reads a consistent snapshot without locks.
type Candidate struct {
	// ID is the worker's configured id.
	ID string
	// InFlight is the number of requests the router has sent to the worker that have
	// not finished, counted by this router.
	InFlight int64
}

// Selector picks the worker for a request.
type Selector interface {
	// Select returns the index in cands of the chosen candidate. cands is never empty.
	// Select must be safe for concurrent use.
	Select(req *Request, cands []Candidate) int
}

// Scorer rates every candidate for a request: out[i] in [0,1] is the rating of cands[i],
// higher is better. len(out) == len(cands). Score must be safe for concurrent use.
type Scorer interface {
	Score(req *Request, cands []Candidate, out []float64)
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

// ArgMin returns the index of the smallest value in vals, breaking ties uniformly at
// random with r. vals must not be empty. It does not allocate.
func ArgMin(vals []float64, r Rand) int {
	best, ties := 0, 1
	for i := 1; i < len(vals); i++ {
		switch {
		case vals[i] < vals[best]:
			best, ties = i, 1
		case vals[i] == vals[best]:
			// Reservoir sampling over the tied minima: each is kept with probability 1/ties.
			ties++
			if r.IntN(ties) == 0 {
				best = i
			}
		}
	}
	return best
}
