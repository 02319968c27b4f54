package blocktable

import (
	"math/bits"
)

const (
	shardBits   = 8
	numShards   = 1 << shardBits
	minShardCap = 8
)

// Slot is one entry of the table. Val is nonzero for an occupied slot. Touch is free for
// the caller (kvroute stores a coarse last-use time); readers may update it with atomic
// stores while no goroutine mutates the table.
type Slot struct {
	Key   uint64
	Val   uint32
	Touch uint32
}

// SlotBytes is the size of one slot in bytes.
const SlotBytes = 16

type shard struct {
	slots []Slot
	n     int
	mask  uint64
}

// Table maps 64-bit keys to nonzero 32-bit values. The zero Table is not usable; call
// [New]. A Table must not be copied after first use.
type Table struct {
	seed   uint64
	n      int
	shards [numShards]shard
}

// New returns an empty table whose keys are mixed with seed before placement, so that an
// adversary who controls keys but not the seed cannot force collisions.
func New(seed uint64) *Table {
	t := &Table{seed: seed}
	for i := range t.shards {
		t.shards[i] = shard{slots: make([]Slot, minShardCap), mask: minShardCap - 1}
	}
	return t
}

// mix is the murmur3 64-bit finalizer over the seeded key.
func (t *Table) mix(k uint64) uint64 {
	h := k ^ t.seed
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// Len returns the number of entries.
func (t *Table) Len() int { return t.n }

// Bytes returns the memory held by the slot arrays in bytes.
func (t *Table) Bytes() int {
	b := 0
	for i := range t.shards {
		b += len(t.shards[i].slots) * SlotBytes
	}
	return b
}

// Find returns the slot holding key, or nil when key is absent. The pointer is valid
// until the next Insert or Delete.
func (t *Table) Find(key uint64) *Slot {
	h := t.mix(key)
	s := &t.shards[h>>(64-shardBits)]
	for i := h & s.mask; ; i = (i + 1) & s.mask {
		sl := &s.slots[i]
		if sl.Val == 0 {
			return nil
		}
		if sl.Key == key {
			return sl
		}
	}
}

// Warm loads the key of key's home slot and returns it. It does nothing useful by itself:
// a caller about to Find many keys calls Warm on a batch of them first, in a tight loop,
// so that the processor has many cache misses in flight at once instead of one per Find
// (Go has no prefetch instruction; the caller must use the result, e.g. fold it into a
// value it checks, or the compiler drops the load).
func (t *Table) Warm(key uint64) uint64 {
	h := t.mix(key)
	s := &t.shards[h>>(64-shardBits)]
	return s.slots[h&s.mask].Key
}

// Home returns key's home slot, whatever it holds: a caller may test it for key before
// falling back to Find. It is small enough to be inlined, which Find is not; most keys sit
// in their home slot.
func (t *Table) Home(key uint64) *Slot {
	h := t.mix(key)
	s := &t.shards[h>>(64-shardBits)]
	return &s.slots[h&s.mask]
}

// Get returns the value stored for key and whether it is present.
func (t *Table) Get(key uint64) (uint32, bool) {
	if sl := t.Find(key); sl != nil {
		return sl.Val, true
	}
	return 0, false
}

// Lookup returns key's slot and true, or, when key is absent, the empty slot where it
// belongs and false. An empty slot may only be passed to Occupy, before any other
// mutation; Lookup grows the shard first when an insertion would pass the load limit.
// Together they insert with one probe sequence where Find+Insert take two.
func (t *Table) Lookup(key uint64) (*Slot, bool) {
	h := t.mix(key)
	s := &t.shards[h>>(64-shardBits)]
	for attempt := 0; ; attempt++ {
		for i := h & s.mask; ; i = (i + 1) & s.mask {
			sl := &s.slots[i]
			if sl.Val == 0 {
				if attempt == 0 && (s.n+1)*4 > len(s.slots)*3 {
					t.grow(s)
					break
				}
				return sl, false
			}
			if sl.Key == key {
				return sl, true
			}
		}
	}
}

// Occupy fills the empty slot sl that Lookup returned for key. It panics if val is 0 or
// the slot is not empty.
func (t *Table) Occupy(sl *Slot, key uint64, val, touch uint32) {
	if val == 0 || sl.Val != 0 {
		panic("blocktable: Occupy of a full slot or with value 0")
	}
	*sl = Slot{Key: key, Val: val, Touch: touch}
	t.shards[t.mix(key)>>(64-shardBits)].n++
	t.n++
}

// Insert adds key with value val (nonzero) and touch stamp touch, or overwrites the value
// and stamp of an existing key, and returns its slot (valid until the next mutation).
// Insert panics if val is 0, which would mark the slot empty.
func (t *Table) Insert(key uint64, val, touch uint32) *Slot {
	if val == 0 {
		panic("blocktable: Insert with value 0")
	}
	h := t.mix(key)
	s := &t.shards[h>>(64-shardBits)]
	if (s.n+1)*4 > len(s.slots)*3 {
		t.grow(s)
	}
	for i := h & s.mask; ; i = (i + 1) & s.mask {
		sl := &s.slots[i]
		if sl.Val == 0 {
			*sl = Slot{Key: key, Val: val, Touch: touch}
			s.n++
			t.n++
			return sl
		}
		if sl.Key == key {
			sl.Val, sl.Touch = val, touch
			return sl
		}
	}
}

func (t *Table) grow(s *shard) {
	old := s.slots
	s.slots = make([]Slot, len(old)*2)
	s.mask = uint64(len(s.slots) - 1)
	for _, o := range old {
		if o.Val == 0 {
			continue
		}
		for i := t.mix(o.Key) & s.mask; ; i = (i + 1) & s.mask {
			if s.slots[i].Val == 0 {
				s.slots[i] = o
				break
			}
		}
	}
}

// Delete removes key and reports whether it was present. It uses backward-shift deletion:
// later entries of the probe run move back so that no tombstone is left.
func (t *Table) Delete(key uint64) bool {
	h := t.mix(key)
	s := &t.shards[h>>(64-shardBits)]
	i := h & s.mask
	for {
		sl := &s.slots[i]
		if sl.Val == 0 {
			return false
		}
		if sl.Key == key {
			break
		}
		i = (i + 1) & s.mask
	}
	// Shift back every following entry whose home position is not in (i, j].
	j := i
	for {
		j = (j + 1) & s.mask
		sj := s.slots[j]
		if sj.Val == 0 {
			break
		}
		home := t.mix(sj.Key) & s.mask
		// The entry at j may move to i when i lies cyclically in [home, j).
		if (j-home)&s.mask >= (j-i)&s.mask {
			s.slots[i] = sj
			i = j
		}
	}
	s.slots[i] = Slot{}
	s.n--
	t.n--
	if len(s.slots) > minShardCap && s.n*8 < len(s.slots) {
		t.shrink(s)
	}
	return true
}

// shrink halves a shard that fell below 1/8 load, so that a table that once held many
// entries gives memory back after eviction or a worker clear.
func (t *Table) shrink(s *shard) {
	old := s.slots
	s.slots = make([]Slot, len(old)/2)
	s.mask = uint64(len(s.slots) - 1)
	for _, o := range old {
		if o.Val == 0 {
			continue
		}
		for i := t.mix(o.Key) & s.mask; ; i = (i + 1) & s.mask {
			if s.slots[i].Val == 0 {
				s.slots[i] = o
				break
			}
		}
	}
}

// Sample returns a pseudo-random occupied slot chosen from r (any random 64-bit value),
// or nil when the table is empty. It is the building block of sampled (approximate) LRU
// eviction: entries in sparse shards are picked slightly more often, which does not matter
// for that use.
func (t *Table) Sample(r uint64) *Slot {
	if t.n == 0 {
		return nil
	}
	first := int(r >> (64 - shardBits))
	for k := 0; k < numShards; k++ {
		s := &t.shards[(first+k)&(numShards-1)]
		if s.n == 0 {
			continue
		}
		start := bits.RotateLeft64(r, 17) & s.mask
		for i, c := start, uint64(0); c <= s.mask; i, c = (i+1)&s.mask, c+1 {
			if s.slots[i].Val != 0 {
				return &s.slots[i]
			}
		}
	}
	return nil
}

// Oldest appends to dst[:0] the keys of the k least recently touched entries among the
// first n occupied slots at or after a pseudo-random position chosen from r (continuing
// into the following shards when one holds fewer), oldest first, and returns it; empty
// when the table is empty. Neighbouring slots hold unrelated keys (placement is by
// hash), so this is as good a sample for approximate LRU as n random slots, at the cost
// of a few sequential cache lines instead of n misses, and one scan yields k victims.
func (t *Table) Oldest(r uint64, n, k int, dst []uint64) []uint64 {
	dst = dst[:0]
	if t.n == 0 || k <= 0 {
		return dst
	}
	n = min(n, t.n)
	type cand struct {
		key   uint64
		touch uint32
	}
	var buf [16]cand
	best := buf[:0]
	if k > len(buf) {
		best = make([]cand, 0, k)
	}
	seen := 0
	first := int(r >> (64 - shardBits))
	for sh := 0; seen < n; sh++ {
		s := &t.shards[(first+sh)&(numShards-1)]
		if s.n == 0 {
			continue
		}
		start := uint64(0)
		if sh == 0 {
			start = bits.RotateLeft64(r, 17) & s.mask
		}
		for i, c := start, uint64(0); c <= s.mask && seen < n; i, c = (i+1)&s.mask, c+1 {
			sl := &s.slots[i]
			if sl.Val == 0 {
				continue
			}
			seen++
			if len(best) == k && sl.Touch >= best[k-1].touch {
				continue
			}
			if len(best) < k {
				best = append(best, cand{})
			}
			// Insertion into the sorted candidates.
			j := len(best) - 1
			for j > 0 && best[j-1].touch > sl.Touch {
				best[j] = best[j-1]
				j--
			}
			best[j] = cand{sl.Key, sl.Touch}
		}
	}
	for _, c := range best {
		dst = append(dst, c.key)
	}
	return dst
}

// Range calls fn for every entry until fn returns false. fn must not mutate the table.
func (t *Table) Range(fn func(*Slot) bool) {
	for si := range t.shards {
		s := &t.shards[si]
		for i := range s.slots {
			if s.slots[i].Val != 0 && !fn(&s.slots[i]) {
				return
			}
		}
	}
}
