package indexer

import (
	"iter"

	"github.com/kvroute/kvroute/proto"
)

// predMap holds a worker's predicted blocks and their expiries (unix ns): a map from
// block to a slot of exp, with freed slots reused. A refresh, done for every predicted
// block of every prompt routed to the worker again, is one map lookup and a store into
// the slot, where a map of expiries took a lookup and an assignment (two hashes and
// probes). Refreshing the ~520 blocks of turn 40 of BenchmarkDecision's conversations
// was 17% of the routing decision in a CPU profile (2026-12-07). BenchmarkPredictRefresh,
// the map against this, alternated, 5 pairs (2026-12-07 13:04 UTC, load about 1.3):
// 24.9, 23.4, 22.1, 23.6, 23.0 -> 18.9, 40.6, 16.1, 16.9, 14.8 ns per block. The zero
// value is empty and usable.
type predMap struct {
	slot map[proto.BlockHash]int32
	exp  []int64
	free []int32
}

func (p *predMap) len() int { return len(p.slot) }

// get returns own's expiry.
func (p *predMap) get(own proto.BlockHash) (int64, bool) {
	s, ok := p.slot[own]
	if !ok {
		return 0, false
	}
	return p.exp[s], true
}

// ref returns where own's expiry is stored, nil when own is not predicted. The pointer
// is valid until the next set.
func (p *predMap) ref(own proto.BlockHash) *int64 {
	s, ok := p.slot[own]
	if !ok {
		return nil
	}
	return &p.exp[s]
}

// set sets own's expiry, adding own when it is not there.
func (p *predMap) set(own proto.BlockHash, exp int64) {
	if s, ok := p.slot[own]; ok {
		p.exp[s] = exp
		return
	}
	if p.slot == nil {
		p.slot = make(map[proto.BlockHash]int32)
	}
	p.slot[own] = putSlot(&p.exp, &p.free, exp)
}

// putSlot stores v in the last freed slot of slab, or appends it, and returns its
// index.
func putSlot[I ~int32 | ~uint32, T any](slab *[]T, free *[]I, v T) I {
	if n := len(*free); n > 0 {
		i := (*free)[n-1]
		*free = (*free)[:n-1]
		(*slab)[i] = v
		return i
	}
	*slab = append(*slab, v)
	return I(len(*slab) - 1)
}

// del removes own and reports whether it was there.
func (p *predMap) del(own proto.BlockHash) bool {
	s, ok := p.slot[own]
	if !ok {
		return false
	}
	delete(p.slot, own)
	p.free = append(p.free, s)
	if len(p.slot) == 0 { // the slab's memory goes with the last prediction
		*p = predMap{slot: p.slot}
	}
	return true
}

// all yields every predicted block and its expiry.
func (p *predMap) all() iter.Seq2[proto.BlockHash, int64] {
	return func(yield func(proto.BlockHash, int64) bool) {
		for own, s := range p.slot {
			if !yield(own, p.exp[s]) {
				return
			}
		}
	}
}

// bytes estimates the memory held: the map's entries at Go's average swiss-map load of
// about 0.8, and the slab with its free list.
func (p *predMap) bytes() int {
	return len(p.slot)*predSlotBytes*5/4 + 8*cap(p.exp) + 4*cap(p.free)
}
