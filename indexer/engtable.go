package indexer

import (
	"github.com/kvroute/kvroute/proto"
)

// engTable is a worker's map engine hash -> engEntry: open addressing with linear probing
// and backward-shift deletion, one probe sequence for get-or-insert (a Go map needs a
// lookup and an assignment), 24-byte slots, at most 13/16 full. Not safe for concurrent
// mutation; Index.mu guards it.
type engTable struct {
	slots []engSlot
	n     int
	mask  uint64
}

type engSlot struct {
	eh proto.EngineHash
	engEntry
	used bool
}

const engMinCap = 16

func newEngTable() *engTable {
	return &engTable{slots: make([]engSlot, engMinCap), mask: engMinCap - 1}
}

// engMix spreads an engine hash (opaque, possibly small sequential ids) over the table.
func engMix(k proto.EngineHash) uint64 {
	h := uint64(k)
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	return h
}

func (t *engTable) len() int { return t.n }

func (t *engTable) bytes() int { return len(t.slots) * 24 }

// get returns the entry of eh, or nil.
func (t *engTable) get(eh proto.EngineHash) *engEntry {
	for i := engMix(eh) & t.mask; ; i = (i + 1) & t.mask {
		s := &t.slots[i]
		if !s.used {
			return nil
		}
		if s.eh == eh {
			return &s.engEntry
		}
	}
}

// upsert returns the entry of eh, inserting a zero one when absent (inserted true). The
// pointer is valid until the next upsert or del.
func (t *engTable) upsert(eh proto.EngineHash) (e *engEntry, inserted bool) {
	if (t.n+1)*16 > len(t.slots)*13 {
		t.resize(len(t.slots) * 2)
	}
	for i := engMix(eh) & t.mask; ; i = (i + 1) & t.mask {
		s := &t.slots[i]
		if !s.used {
			*s = engSlot{eh: eh, used: true}
			t.n++
			return &s.engEntry, true
		}
		if s.eh == eh {
			return &s.engEntry, false
		}
	}
}

// del removes eh if present.
func (t *engTable) del(eh proto.EngineHash) {
	i := engMix(eh) & t.mask
	for {
		s := &t.slots[i]
		if !s.used {
			return
		}
		if s.eh == eh {
			break
		}
		i = (i + 1) & t.mask
	}
	j := i
	for {
		j = (j + 1) & t.mask
		sj := &t.slots[j]
		if !sj.used {
			break
		}
		home := engMix(sj.eh) & t.mask
		if (j-home)&t.mask >= (j-i)&t.mask {
			t.slots[i] = *sj
			i = j
		}
	}
	t.slots[i] = engSlot{}
	t.n--
	if len(t.slots) > engMinCap && t.n*8 < len(t.slots) {
		t.resize(len(t.slots) / 2)
	}
}

func (t *engTable) resize(size int) {
	old := t.slots
	t.slots = make([]engSlot, size)
	t.mask = uint64(size - 1)
	for _, o := range old {
		if !o.used {
			continue
		}
		for i := engMix(o.eh) & t.mask; ; i = (i + 1) & t.mask {
			if !t.slots[i].used {
				t.slots[i] = o
				break
			}
		}
	}
}

// sample returns up to len(dst) entries found scanning from position r, for sampled
// eviction, as (engine hash, entry) pairs appended to dst[:0].
func (t *engTable) sample(r uint64, dst []engSlot) []engSlot {
	dst = dst[:0]
	if t.n == 0 {
		return dst
	}
	for i, c := r&t.mask, 0; c < len(t.slots) && len(dst) < cap(dst); i, c = (i+1)&t.mask, c+1 {
		if t.slots[i].used {
			dst = append(dst, t.slots[i])
		}
	}
	return dst
}

// each calls fn for every entry; fn must not mutate the table.
func (t *engTable) each(fn func(proto.EngineHash, engEntry)) {
	for i := range t.slots {
		if t.slots[i].used {
			fn(t.slots[i].eh, t.slots[i].engEntry)
		}
	}
}
