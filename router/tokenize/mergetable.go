package tokenize

import "math/bits"

// mergeTable maps a pair of token ids to its merge. It is an open-addressing hash
// table with linear probing and a Fibonacci hash: the BPE inner loop does one
// lookup per adjacent pair, and this is about twice as fast as a Go map for
// uint64 keys. Read-only after construction.
type mergeTable struct {
	keys  []uint64 // emptyKey marks a free slot
	vals  []mergeTo
	shift uint
	n     int
}

// emptyKey cannot be a pair: Parse rejects ids above 2^24.
const emptyKey = ^uint64(0)

func newMergeTable(n int) *mergeTable {
	size := 16
	for size < 2*n {
		size <<= 1
	}
	t := &mergeTable{keys: make([]uint64, size), vals: make([]mergeTo, size), shift: uint(64 - bits.TrailingZeros(uint(size)))}
	for i := range t.keys {
		t.keys[i] = emptyKey
	}
	return t
}

func (t *mergeTable) slot(k uint64) uint64 { return (k * 0x9E3779B97F4A7C15) >> t.shift }

// put sets k to v, replacing an earlier value (a later duplicate merge wins, as in
// the Rust crate's HashMap collect).
func (t *mergeTable) put(k uint64, v mergeTo) {
	mask := uint64(len(t.keys) - 1)
	for i := t.slot(k); ; i = (i + 1) & mask {
		switch t.keys[i] {
		case emptyKey:
			t.keys[i], t.vals[i] = k, v
			t.n++
			return
		case k:
			t.vals[i] = v
			return
		}
	}
}

func (t *mergeTable) get(k uint64) (mergeTo, bool) {
	mask := uint64(len(t.keys) - 1)
	for i := t.slot(k); ; i = (i + 1) & mask {
		switch t.keys[i] {
		case k:
			return t.vals[i], true
		case emptyKey:
			return mergeTo{}, false
		}
	}
}
