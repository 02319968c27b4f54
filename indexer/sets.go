package indexer

import (
	"slices"
)

// setID names an interned holder set; 0 is the empty set.
type setID uint32

// A holder code packs one worker's membership of a block: wid<<8 | flags, flags nonzero.
// Codes in a set are sorted, hence sorted by wid, one code per wid.
const (
	flagPredicted uint8 = 1 << 7
	flagTierMask  uint8 = 1<<numTiers - 1
)

func codeWID(c uint32) uint32  { return c >> 8 }
func codeFlags(c uint32) uint8 { return uint8(c) }

// setRec is one interned set.
type setRec struct {
	members []uint32
	refs    int32
	hash    uint64
	used    bool // allocated (possibly with refs 0 until collected)
}

// transKey is "the set from, with worker wid's flags replaced by flags" (flags 0 removes).
type transKey struct {
	from setID
	code uint32
}

// holderSets interns holder sets (hash-consing): every node of the block table stores a
// 4-byte set id instead of its own list of holders, and a chain stored by the same workers
// shares one set, which is what makes Match cheap (an unchanged id means an unchanged
// intersection). Transitions are memoized. Sets whose refcount drops to zero are collected
// in bulk. Not safe for concurrent mutation; Index.mu guards it.
type holderSets struct {
	recs    []setRec
	free    []setID
	byHash  map[uint64]setID
	trans   map[transKey]setID
	dead    int // used recs with refs == 0
	scratch []uint32
}

const maxTrans = 1 << 16

func newHolderSets() holderSets {
	return holderSets{
		recs:   make([]setRec, 1, 64), // id 0: the empty set
		byHash: make(map[uint64]setID),
		trans:  make(map[transKey]setID),
	}
}

// members returns the sorted codes of set id (nil for 0).
func (hs *holderSets) members(id setID) []uint32 { return hs.recs[id].members }

// flagsOf returns worker wid's flags in set id, 0 when absent.
func (hs *holderSets) flagsOf(id setID, wid uint32) uint8 {
	m := hs.recs[id].members
	if len(m) <= 8 {
		for _, c := range m {
			if codeWID(c) == wid {
				return codeFlags(c)
			}
		}
		return 0
	}
	i, ok := slices.BinarySearchFunc(m, wid, func(c, w uint32) int {
		switch {
		case codeWID(c) < w:
			return -1
		case codeWID(c) > w:
			return 1
		}
		return 0
	})
	if !ok {
		return 0
	}
	return codeFlags(m[i])
}

// with returns the id of set from with wid's flags replaced by flags (0 removes wid).
// It does not change reference counts.
func (hs *holderSets) with(from setID, wid uint32, flags uint8) setID {
	code := wid<<8 | uint32(flags)
	tk := transKey{from, code}
	if to, ok := hs.trans[tk]; ok {
		return to
	}
	src := hs.recs[from].members
	dst := hs.scratch[:0]
	placed := flags == 0
	for _, c := range src {
		if w := codeWID(c); w == wid {
			continue
		} else if w > wid && !placed {
			dst = append(dst, code)
			placed = true
		}
		dst = append(dst, c)
	}
	if !placed {
		dst = append(dst, code)
	}
	hs.scratch = dst
	to := hs.intern(dst)
	if len(hs.trans) >= maxTrans {
		clear(hs.trans)
	}
	hs.trans[tk] = to
	return to
}

func hashCodes(m []uint32) uint64 {
	h := uint64(len(m)) * 0x9e3779b97f4a7c15
	for _, c := range m {
		h ^= uint64(c)
		h *= 0xff51afd7ed558ccd
		h ^= h >> 32
	}
	return h
}

// intern returns the id of the set with exactly members m (copied when new).
func (hs *holderSets) intern(m []uint32) setID {
	if len(m) == 0 {
		return 0
	}
	h := hashCodes(m)
	if id, ok := hs.byHash[h]; ok && slices.Equal(hs.recs[id].members, m) {
		return id
	}
	// On a 64-bit hash collision the new set is simply not deduplicated: two ids with the
	// same content are still correct, only slower to match across.
	rec := setRec{members: slices.Clone(m), hash: h, used: true}
	id := putSlot(&hs.recs, &hs.free, rec)
	if _, ok := hs.byHash[h]; !ok {
		hs.byHash[h] = id
	}
	hs.dead++ // refs 0 until a node takes it
	return id
}

func (hs *holderSets) incRef(id setID) {
	if id == 0 {
		return
	}
	r := &hs.recs[id]
	if r.refs == 0 {
		hs.dead--
	}
	r.refs++
}

func (hs *holderSets) decRef(id setID) {
	if id == 0 {
		return
	}
	r := &hs.recs[id]
	r.refs--
	if r.refs == 0 {
		hs.dead++
	}
}

// collect frees unreferenced sets once they outnumber the live ones (amortized O(1) per
// release) and reports whether it did. It clears the transition memo, whose entries may
// name freed ids; callers must drop their own memos too.
func (hs *holderSets) collect() bool {
	if hs.dead < 1024 || hs.dead*2 < len(hs.recs) {
		return false
	}
	for i := 1; i < len(hs.recs); i++ {
		r := &hs.recs[i]
		if !r.used || r.refs != 0 {
			continue
		}
		if hs.byHash[r.hash] == setID(i) {
			delete(hs.byHash, r.hash)
		}
		*r = setRec{}
		hs.free = append(hs.free, setID(i))
	}
	hs.dead = 0
	clear(hs.trans)
	return true
}

// live returns the number of sets referenced by at least one node.
func (hs *holderSets) live() int {
	n := 0
	for i := 1; i < len(hs.recs); i++ {
		if hs.recs[i].refs > 0 {
			n++
		}
	}
	return n
}

// bytes estimates the memory held by the sets.
func (hs *holderSets) bytes() int {
	b := cap(hs.recs)*48 + len(hs.byHash)*24 + len(hs.trans)*24
	for i := range hs.recs {
		b += cap(hs.recs[i].members) * 4
	}
	return b
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
