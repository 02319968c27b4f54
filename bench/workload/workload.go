package workload

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/cespare/xxhash/v2"
)

// Request is one request of a workload.
type Request struct {
	// At is the arrival time from the start of the run.
	At time.Duration
	// Prompt holds the prompt's token ids.
	Prompt []uint32
	// MaxTokens is the forced output length (sent with ignore_eos).
	MaxTokens int
	// Prev is the index of the request that must finish before this one is sent (the
	// previous turn of a conversation), or -1.
	Prev int
}

// Workload is a named list of requests in non-decreasing arrival order.
type Workload struct {
	Name     string
	Requests []Request
}

// Validate reports the first malformed request.
func (w *Workload) Validate() error {
	if len(w.Requests) == 0 {
		return errors.New("workload has no requests")
	}
	for i, r := range w.Requests {
		if len(r.Prompt) == 0 {
			return fmt.Errorf("request %d: empty prompt", i)
		}
		if r.MaxTokens < 1 {
			return fmt.Errorf("request %d: max_tokens %d < 1", i, r.MaxTokens)
		}
		if r.Prev >= i {
			return fmt.Errorf("request %d: prev %d is not an earlier request", i, r.Prev)
		}
		if i > 0 && r.At < w.Requests[i-1].At {
			return fmt.Errorf("request %d: arrival %s before the previous one", i, r.At)
		}
	}
	return nil
}

// PromptTokens returns the sum of prompt lengths.
func (w *Workload) PromptTokens() int64 {
	var n int64
	for _, r := range w.Requests {
		n += int64(len(r.Prompt))
	}
	return n
}

// OutputTokens returns the sum of forced output lengths.
func (w *Workload) OutputTokens() int64 {
	var n int64
	for _, r := range w.Requests {
		n += int64(r.MaxTokens)
	}
	return n
}

// Scale divides every arrival time by speedup (> 0): 2 replays twice as fast.
func (w *Workload) Scale(speedup float64) {
	for i := range w.Requests {
		w.Requests[i].At = time.Duration(float64(w.Requests[i].At) / speedup)
	}
}

// vocabLow and vocabSpan bound generated token ids: ordinary ids of any large vocabulary,
// clear of the special tokens at both ends.
const (
	vocabLow  = 1000
	vocabSpan = 100000
)

// fillTokens appends n deterministic token ids derived from (kind, key).
func fillTokens(dst []uint32, kind string, key uint64, n int) []uint32 {
	var b [8]byte
	for i := range b {
		b[i] = byte(key >> (8 * i))
	}
	d := xxhash.New()
	_, _ = d.WriteString(kind)
	_, _ = d.Write(b[:])
	r := rand.New(rand.NewPCG(d.Sum64(), key))
	for range n {
		dst = append(dst, uint32(vocabLow+r.IntN(vocabSpan)))
	}
	return dst
}

// poissonArrivals returns n arrival times of a Poisson process at rate per second.
func poissonArrivals(r *rand.Rand, n int, rate float64) []time.Duration {
	out := make([]time.Duration, n)
	var t float64
	for i := range out {
		t += r.ExpFloat64() / rate
		out[i] = time.Duration(t * float64(time.Second))
	}
	return out
}

// sortByArrival orders requests by At, keeping Prev links valid.
func sortByArrival(reqs []Request) []Request {
	idx := make([]int, len(reqs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		switch {
		case reqs[a].At < reqs[b].At:
			return -1
		case reqs[a].At > reqs[b].At:
			return 1
		}
		return 0
	})
	pos := make([]int, len(reqs))
	for newI, oldI := range idx {
		pos[oldI] = newI
	}
	out := make([]Request, len(reqs))
	for newI, oldI := range idx {
		r := reqs[oldI]
		if r.Prev >= 0 {
			r.Prev = pos[r.Prev]
		}
		out[newI] = r
	}
	return out
}
