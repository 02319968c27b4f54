package indexer

import (
	"github.com/kvroute/kvroute/proto"
)

// engEntry is what one engine hash of a worker resolves to, packed in 16 bytes: the
// engine hash's 48-bit fingerprint, a reference count per tier (4 bits each: vLLM sends
// duplicate stores and removes, e.g. one per KV-cache group of a hybrid model; a count
// that reaches refMax saturates and never decrements) and kvroute's own hash of the block.
type engEntry struct {
	tag uint64 // fingerprint<<16 | refs; 0 only in an empty slot
	own proto.BlockHash
}

// refMax is the saturation value of a per-tier reference count.
const refMax = 15

func (e *engEntry) ref(t Tier) uint8 { return uint8(e.tag>>(4*uint(t))) & 0xf }

func (e *engEntry) setRef(t Tier, v uint8) {
	sh := 4 * uint(t)
	e.tag = e.tag&^(0xf<<sh) | uint64(v&0xf)<<sh
}

func (e *engEntry) empty() bool { return e.tag&0xffff == 0 }

func (e *engEntry) fp() uint64 { return e.tag >> 16 }

// engFP returns the fingerprint that stands for an engine hash: the top 48 bits of a
// bijective mix, never 0. Two engine hashes of one worker share a fingerprint with
// probability 2^-48 per pair; the index then treats them as one block id (the engine's
// own 32-byte digests are already folded to 64 bits by the decoders).
func engFP(eh proto.EngineHash) uint64 {
	h := uint64(eh)
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	if fp := h >> 16; fp != 0 {
		return fp
	}
	return 1
}

// engTable is a worker's map engine-hash fingerprint -> engEntry: open addressing with
// linear probing and backward-shift deletion, one probe sequence for get-or-insert (a Go
// map needs a lookup and an assignment), 16-byte slots. It is at most 7/8 full and grows
// by a quarter once it has 1024 slots (doubling below), so a large table is 70% to 87.5%
// full (runtable's shards do the same); sizes need not be powers of two (multiply-shift
// range reduction). Not safe for concurrent mutation; Index.mu guards it.
type engTable struct {
	slots []engEntry
	n     int
}

const (
	engMinCap     = 16
	engBigGrowth  = 1024
	engMaxLoadNum = 7
	engMaxLoadDen = 8
)

func newEngTable() *engTable {
	return &engTable{slots: make([]engEntry, engMinCap)}
}

func (t *engTable) len() int { return t.n }

func (t *engTable) bytes() int { return len(t.slots) * 16 }

// home returns fingerprint fp's home slot (fp has 48 bits; its top 32 are scaled).
func (t *engTable) home(fp uint64) uint64 { return (fp >> 16) * uint64(len(t.slots)) >> 32 }

func (t *engTable) inc(i uint64) uint64 {
	if i++; i == uint64(len(t.slots)) {
		return 0
	}
	return i
}

// warm loads fp's home slot and returns a value derived from it; see
// runtable.Table.Warm.
func (t *engTable) warm(fp uint64) uint64 { return t.slots[t.home(fp)].tag }

// get returns the entry of fingerprint fp, or nil.
func (t *engTable) get(fp uint64) *engEntry {
	for i := t.home(fp); ; i = t.inc(i) {
		s := &t.slots[i]
		if s.tag == 0 {
			return nil
		}
		if s.fp() == fp {
			return s
		}
	}
}

// upsert returns the entry of fp, inserting one with no references and no own hash when
// absent (inserted true). The pointer is valid until the next upsert or del.
func (t *engTable) upsert(fp uint64) (e *engEntry, inserted bool) {
	if (t.n+1)*engMaxLoadDen > len(t.slots)*engMaxLoadNum {
		size := 2 * len(t.slots)
		if len(t.slots) >= engBigGrowth {
			size = len(t.slots) + len(t.slots)/4
		}
		t.resize(size)
	}
	for i := t.home(fp); ; i = t.inc(i) {
		s := &t.slots[i]
		if s.tag == 0 {
			*s = engEntry{tag: fp << 16}
			t.n++
			return s, true
		}
		if s.fp() == fp {
			return s, false
		}
	}
}

// del removes fp if present.
func (t *engTable) del(fp uint64) {
	i := t.home(fp)
	for {
		s := &t.slots[i]
		if s.tag == 0 {
			return
		}
		if s.fp() == fp {
			break
		}
		i = t.inc(i)
	}
	size := uint64(len(t.slots))
	j := i
	for {
		j = t.inc(j)
		sj := &t.slots[j]
		if sj.tag == 0 {
			break
		}
		// The entry at j may move to i when i lies cyclically in [home, j).
		if (j+size-t.home(sj.fp()))%size >= (j+size-i)%size {
			t.slots[i] = *sj
			i = j
		}
	}
	t.slots[i] = engEntry{}
	t.n--
	if len(t.slots) > engMinCap && t.n*8 < len(t.slots) {
		t.resize(max(len(t.slots)/2, engMinCap))
	}
}

func (t *engTable) resize(size int) {
	old := t.slots
	t.slots = make([]engEntry, size)
	for _, o := range old {
		if o.tag == 0 {
			continue
		}
		for i := t.home(o.fp()); ; i = t.inc(i) {
			if t.slots[i].tag == 0 {
				t.slots[i] = o
				break
			}
		}
	}
}

// sample appends to dst[:0] up to cap(dst) entries found scanning from position r, for
// sampled eviction.
func (t *engTable) sample(r uint64, dst []engEntry) []engEntry {
	dst = dst[:0]
	if t.n == 0 {
		return dst
	}
	for i, c := r%uint64(len(t.slots)), 0; c < len(t.slots) && len(dst) < cap(dst); i, c = t.inc(i), c+1 {
		if t.slots[i].tag != 0 {
			dst = append(dst, t.slots[i])
		}
	}
	return dst
}
