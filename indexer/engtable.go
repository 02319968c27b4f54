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
// map needs a lookup and an assignment), 16-byte slots, kept in Robin Hood order (see get).
// It is at most 3/4 full and grows by a quarter once it has 1024 slots (doubling below),
// so a large table is 60% to 75% full (runtable's shards do the same; at 7/8, inserts
// shifted about 32 slots and the Mooncake ingest benchmark in the steady state ran 1.5x
// slower); sizes need not be powers of two (multiply-shift range reduction). Not safe for concurrent mutation; Index.mu guards it.
type engTable struct {
	slots []engEntry
	n     int
	floor int // the table never shrinks below this many slots (see reserve)
}

const (
	engMinCap     = 16
	engBigGrowth  = 1024
	engMaxLoadNum = 3
	engMaxLoadDen = 4
)

// newEngTable returns an empty table sized for entries entries without growing (0: the
// minimum), which it keeps as its floor.
func newEngTable(entries int) *engTable {
	t := &engTable{slots: make([]engEntry, engMinCap)}
	t.reserve(entries)
	return t
}

// reserve grows the table, when needed, to hold entries entries at most 3/4 full, and
// keeps that size as the table's floor: a worker's engine entries never exceed its KV
// cache (the index reserves what the worker reports, see Index.Reserve), so sizing once
// spares the 20 or so rehashes of growing by a quarter from empty.
func (t *engTable) reserve(entries int) {
	size := max(engMinCap, entries*engMaxLoadDen/engMaxLoadNum+1)
	t.floor = size
	if size > len(t.slots) {
		t.resize(size)
	}
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

// homeSlot returns the address of fp's home slot, valid until the next upsert or del;
// for warming, as runtable.Table.HomeSlot.
func (t *engTable) homeSlot(fp uint64) *engEntry { return &t.slots[t.home(fp)] }

// dist returns how far slot i is from the home of the entry it holds: its probe
// distance.
func (t *engTable) dist(i uint64) uint64 {
	h := t.home(t.slots[i].fp())
	if i >= h {
		return i - h
	}
	return i + uint64(len(t.slots)) - h
}

// get returns the entry of fingerprint fp, or nil. The table keeps Robin Hood order
// (see runtable's find), so a miss stops at the first entry closer to its home than fp
// would be.
func (t *engTable) get(fp uint64) *engEntry {
	if i, ok := t.find(fp); ok {
		return &t.slots[i]
	}
	return nil
}

// find returns the slot of fingerprint fp; ok is false when fp is absent.
func (t *engTable) find(fp uint64) (i uint64, ok bool) {
	for i, d := t.home(fp), uint64(0); ; i, d = t.inc(i), d+1 {
		s := &t.slots[i]
		if s.tag == 0 {
			return 0, false
		}
		if s.fp() == fp {
			return i, true
		}
		if t.dist(i) < d {
			return 0, false
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
	for i, d := t.home(fp), uint64(0); ; i, d = t.inc(i), d+1 {
		s := &t.slots[i]
		if s.tag == 0 {
			*s = engEntry{tag: fp << 16}
			t.n++
			return s, true
		}
		if s.fp() == fp {
			return s, false
		}
		if t.dist(i) < d {
			// fp goes here: the entries from i to the next empty slot move up one.
			j := i
			for t.slots[j].tag != 0 {
				j = t.inc(j)
			}
			for j != i {
				p := j - 1
				if j == 0 {
					p = uint64(len(t.slots)) - 1
				}
				t.slots[j] = t.slots[p]
				j = p
			}
			*s = engEntry{tag: fp << 16}
			t.n++
			return s, true
		}
	}
}

// del removes fp if present (backward-shift deletion: the entries after it move back
// one slot until an empty slot or an entry at its home).
func (t *engTable) del(fp uint64) {
	if i, ok := t.find(fp); ok {
		t.delAt(i)
	}
}

// delAt removes the entry in slot i (from find, with no upsert or del since).
func (t *engTable) delAt(i uint64) {
	for {
		j := t.inc(i)
		if t.slots[j].tag == 0 || t.dist(j) == 0 {
			break
		}
		t.slots[i] = t.slots[j]
		i = j
	}
	t.slots[i] = engEntry{}
	t.n--
	if len(t.slots) > max(engMinCap, t.floor) && t.n*8 < len(t.slots) {
		t.resize(max(len(t.slots)/2, engMinCap, t.floor))
	}
}

// resize moves the entries to an array of size slots, taken in their order from an
// empty slot on (home order, so few swaps: entries that shared a home in the old table
// may have different homes in the new one), each placed in Robin Hood order.
func (t *engTable) resize(size int) {
	old := t.slots
	t.slots = make([]engEntry, size)
	start := 0
	for start < len(old) && old[start].tag != 0 {
		start++
	}
	for k := range old {
		o := old[(start+k)%len(old)]
		if o.tag == 0 {
			continue
		}
		for i, d := t.home(o.fp()), uint64(0); ; i, d = t.inc(i), d+1 {
			if t.slots[i].tag == 0 {
				t.slots[i] = o
				break
			}
			if cd := t.dist(i); cd < d {
				t.slots[i], o, d = o, t.slots[i], cd
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
