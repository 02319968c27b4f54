package indexer

import (
	"iter"
	"math/bits"

	"github.com/kvroute/kvroute/proto"
)

// predMap holds a worker's predicted blocks and their expiries (unix ns, never 0): an
// open-addressing table of 16-byte slots (block, expiry), linear probing from a
// Fibonacci hash of the block, backward-shift deletion, at most 3/4 full, halved when
// under 1/8 full (down to minPredShrink slots). A refresh, done for every predicted
// block of every prompt routed to the worker again when no events confirm them, is one
// probe sequence and a store into the slot. It was a Go map from block to a slot of an expiry slab (a map of expiries
// before that took a lookup and an assignment): the map's lookup was about 80% of
// BenchmarkPredictRefresh in a CPU profile (2026-12-07), and refreshing the ~520 blocks
// of turn 40 of BenchmarkDecision's conversations 19% of the routing decision. The zero
// value is empty and usable.
type predMap struct {
	slots []predSlot // len a power of two, or 0
	n     int
	shift uint // 64 - log2(len(slots))
}

type predSlot struct {
	own proto.BlockHash
	exp int64 // 0: empty
}

func (p *predMap) len() int { return p.n }

// home is the slot own's probe sequence starts at.
func (p *predMap) home(own proto.BlockHash) int {
	return int((uint64(own) * 0x9e3779b97f4a7c15) >> p.shift)
}

// find returns own's slot, -1 when own is not predicted.
func (p *predMap) find(own proto.BlockHash) int {
	if p.n == 0 {
		return -1
	}
	mask := len(p.slots) - 1
	for i := p.home(own); ; i = (i + 1) & mask {
		s := &p.slots[i]
		if s.exp == 0 {
			return -1
		}
		if s.own == own {
			return i
		}
	}
}

// get returns own's expiry.
func (p *predMap) get(own proto.BlockHash) (int64, bool) {
	if i := p.find(own); i >= 0 {
		return p.slots[i].exp, true
	}
	return 0, false
}

// ref returns where own's expiry is stored, nil when own is not predicted. The pointer
// is valid until the next set or del.
func (p *predMap) ref(own proto.BlockHash) *int64 {
	if i := p.find(own); i >= 0 {
		return &p.slots[i].exp
	}
	return nil
}

// set sets own's expiry (not 0), adding own when it is not there.
func (p *predMap) set(own proto.BlockHash, exp int64) {
	if i := p.find(own); i >= 0 {
		p.slots[i].exp = exp
		return
	}
	if 4*(p.n+1) > 3*len(p.slots) {
		p.resize(max(2*len(p.slots), 8))
	}
	p.put(own, exp)
	p.n++
}

// put stores own, known absent, in the first empty slot of its probe sequence.
func (p *predMap) put(own proto.BlockHash, exp int64) {
	mask := len(p.slots) - 1
	i := p.home(own)
	for p.slots[i].exp != 0 {
		i = (i + 1) & mask
	}
	p.slots[i] = predSlot{own: own, exp: exp}
}

// resize moves the entries to a table of size slots (a power of two).
func (p *predMap) resize(size int) {
	old := p.slots
	p.slots = make([]predSlot, size)
	p.shift = uint(64 - bits.TrailingZeros(uint(size)))
	for _, s := range old {
		if s.exp != 0 {
			p.put(s.own, s.exp)
		}
	}
}

// del removes own and reports whether it was there. The entries after it in its probe
// run move back, so no probe sequence has a hole.
func (p *predMap) del(own proto.BlockHash) bool {
	i := p.find(own)
	if i < 0 {
		return false
	}
	p.n--
	mask := len(p.slots) - 1
	for j := (i + 1) & mask; p.slots[j].exp != 0; j = (j + 1) & mask {
		// The entry at j may fill the hole at i when its home is not in (i, j].
		if h := p.home(p.slots[j].own); (j-h)&mask >= (j-i)&mask {
			p.slots[i] = p.slots[j]
			i = j
		}
	}
	p.slots[i] = predSlot{}
	if len(p.slots) > minPredShrink && 8*p.n < len(p.slots) {
		p.resize(len(p.slots) / 2)
	}
	return true
}

// minPredShrink is the size (slots) down to which a table shrinks as it thins out, and
// which it keeps when it empties: with KV events a worker's predictions are confirmed, so deleted, soon after
// they are made, and freeing and regrowing its table from 8 slots at every turn was 2%
// of the routing decision at turns 30 to 40 of bench/decision (mode local-events, CPU
// profile, 2026-12-07). 16 KiB per worker at most stays allocated.
const minPredShrink = 1024

// all yields every predicted block and its expiry. The map must not change meanwhile.
func (p *predMap) all() iter.Seq2[proto.BlockHash, int64] {
	return func(yield func(proto.BlockHash, int64) bool) {
		for _, s := range p.slots {
			if s.exp != 0 && !yield(s.own, s.exp) {
				return
			}
		}
	}
}

// bytes is the memory held.
func (p *predMap) bytes() int { return 16 * cap(p.slots) }
