package runtable

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"sync/atomic"
)

const (
	shardBits   = 10
	numShards   = 1 << shardBits
	minShardCap = 8

	// Slot layout: run id (32 bits) | offset in the run's array (12 bits) | the low 20
	// bits of the key's mixed hash. 0 is an empty slot (run id 0 is never used).
	hashBits = 20
	hashMask = 1<<hashBits - 1
	offBits  = 12
	offMask  = 1<<offBits - 1

	// MaxRun is the longest run: a split moves at most MaxRun/2 blocks, which bounds the
	// cost of one update.
	MaxRun = 1024
	// minRunCap is the smallest array capacity a run is given.
	minRunCap = 4
)

// run is a chain segment: keys[lo:] are consecutive blocks of one chain (keys[i+1] is the
// child of keys[i]), all with value val. parent is the key of the block before keys[lo]
// in the chain and next the key of the block after the last one (0 when unknown): hints
// that let a block join the run that ends with its parent, and two runs that meet with
// the same value merge. cap(keys) < 1<<offBits (at most about 2*MaxRun).
//
// Only the values matter for correctness: a run that is not a chain (after a wrong hint)
// still maps each of its keys to its value; Span then just finds shorter spans.
type run struct {
	keys   []uint64
	parent uint64
	next   uint64
	lo     uint32
	val    uint32 // 0 for a free run record
	touch  uint32 // written atomically by readers under the caller's read lock
}

// runBytes is the size of a run record.
const runBytes = 56

type shard struct {
	slots []uint64
	n     int
}

// Growth: a shard grows past maxLoadNum/maxLoadDen load, doubling while small and by a
// quarter once it has bigGrowth slots, so that a large table is 60% to 75% full at any
// time (doubling would leave it 38% full right after a resize); it halves below 1/8.
// Robin Hood order keeps lookups short at any load, but an insert still moves the
// entries up to the next empty slot: an expected 8.5 slots at 3/4 and 32.5 at 7/8 (the
// previous bound), by Knuth's estimates.
const (
	maxLoadNum = 3
	maxLoadDen = 4
	bigGrowth  = 1024
)

// grownSize returns the size a shard of size slots grows to.
func grownSize(size int) int {
	if size < bigGrowth {
		return 2 * size
	}
	return size + size/4
}

// homeOf returns the home position of a key of mixed hash h in a shard of size slots
// (multiply-shift range reduction: sizes need not be powers of two). Up to 2^20 slots it
// depends only on the hash bits kept in the slot.
func homeOf(h uint64, size int) uint64 {
	if size <= 1<<hashBits {
		return (h & hashMask) * uint64(size) >> hashBits
	}
	return (h & 0xffffffff) * uint64(size) >> 32
}

// inc returns the slot after i, wrapping around.
func (s *shard) inc(i uint64) uint64 {
	if i++; i == uint64(len(s.slots)) {
		return 0
	}
	return i
}

// Table maps 64-bit keys to nonzero 32-bit values, storing chains of keys in runs. The
// zero Table is not usable; call [New]. A Table must not be copied after first use.
type Table struct {
	seed    uint64
	n       int
	runs    []run // runs[0] unused
	free    []uint32
	live    int // runs in use
	keyCap  int // sum of cap(keys) over the runs
	nextCap int // capacity hint for the next new run
	// lastRID is the run that received the last insert: the next block of a chain being
	// stored usually appends to it, without a lookup of its parent.
	lastRID uint32
	// floor is the size no shard shrinks below (Reserve); 0 for none.
	floor  int
	shards [numShards]shard
}

// New returns an empty table whose keys are mixed with seed before placement, so that an
// adversary who controls keys but not the seed cannot force collisions.
func New(seed uint64) *Table {
	t := &Table{seed: seed, runs: make([]run, 1, 64)}
	for i := range t.shards {
		t.shards[i] = shard{slots: make([]uint64, minShardCap)}
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

func (t *Table) shardOf(h uint64) *shard { return &t.shards[h>>(64-shardBits)] }

func slotRID(v uint64) uint32 { return uint32(v >> 32) }
func slotOff(v uint64) uint32 { return uint32(v>>hashBits) & offMask }
func makeSlot(rid, off uint32, h uint64) uint64 {
	return uint64(rid)<<32 | uint64(off)<<hashBits | h&hashMask
}

// home returns the home position of the entry in slot value v in a shard of size slots:
// from its stored hash bits, or, for shards larger than 2^20 slots, from its key.
func (t *Table) home(v uint64, size int) uint64 {
	if size <= 1<<hashBits {
		return homeOf(v, size)
	}
	return homeOf(t.mix(t.runs[slotRID(v)].keys[slotOff(v)]), size)
}

// Len returns the number of keys.
func (t *Table) Len() int { return t.n }

// Runs returns the number of runs.
func (t *Table) Runs() int { return t.live }

// Bytes returns the memory held by the slot arrays, the run records and their key
// arrays.
func (t *Table) Bytes() int {
	b := cap(t.runs)*runBytes + cap(t.free)*4 + t.keyCap*8
	for i := range t.shards {
		b += len(t.shards[i].slots) * 8
	}
	return b
}

// dist returns how far slot i of a shard of size slots is from the home of the entry v
// it holds (cyclically): its probe distance.
func (t *Table) dist(v, i uint64, size int) uint64 {
	h := t.home(v, size)
	if i >= h {
		return i - h
	}
	return i + uint64(size) - h
}

// find returns the slot holding key, or nil. Shards keep Robin Hood order (along a
// cluster, probe distances grow by at most one per slot), so a miss stops at the first
// entry that sits closer to its home than key would: an expected 2.5 probes at the
// highest load (3/4) instead of 8.5 for plain linear probing (Knuth's estimates), which scans to the next empty
// slot.
func (t *Table) find(key uint64) *uint64 {
	s, i, ok := t.findAt(key)
	if !ok {
		return nil
	}
	return &s.slots[i]
}

// findAt is find returning key's shard and slot index.
func (t *Table) findAt(key uint64) (*shard, uint64, bool) {
	ref, ok := t.probe(key, t.mix(key))
	return ref.s, ref.i, ok
}

// probe looks up key of mixed hash h. For a present key it returns its slot; for an
// absent one the slot where Robin Hood order puts it (the first empty slot or entry
// closer to its home than key would be) and key's probe distance there, so that an
// insert need not probe again.
func (t *Table) probe(key, h uint64) (Ref, bool) {
	s := t.shardOf(h)
	hb := h & hashMask
	size := len(s.slots)
	for i, d := homeOf(h, size), uint64(0); ; i, d = s.inc(i), d+1 {
		v := s.slots[i]
		if v == 0 {
			return Ref{s, i, h, d}, false
		}
		if v&hashMask == hb && t.runs[slotRID(v)].keys[slotOff(v)] == key {
			return Ref{s, i, h, d}, true
		}
		if t.dist(v, i, size) < d {
			return Ref{s, i, h, d}, false
		}
	}
}

// Ref is where a key sits, or would be inserted, from [Table.Lookup]; it is valid until
// the next mutation of the table. It saves a second probe to a caller that reads a
// key's value and then changes, deletes or inserts it.
type Ref struct {
	s *shard
	i uint64
	h uint64 // the key's mixed hash
	d uint64 // the key's probe distance at i
}

// Hash returns the seeded hash the table places key by, for [Table.LookupHashed] and
// [Table.HomeSlotHashed]: a caller that warms a key's home slot and then looks it up
// mixes it once.
func (t *Table) Hash(key uint64) uint64 { return t.mix(key) }

// Lookup returns key's place and value; ok is false for an absent key, whose ref is then
// where [Table.InsertAt] puts it.
func (t *Table) Lookup(key uint64) (ref Ref, val uint32, ok bool) {
	return t.LookupHashed(key, t.mix(key))
}

// LookupHashed is [Table.Lookup] of key whose [Table.Hash] is h.
func (t *Table) LookupHashed(key, h uint64) (ref Ref, val uint32, ok bool) {
	ref, ok = t.probe(key, h)
	if !ok {
		return ref, 0, false
	}
	return ref, t.runs[slotRID(ref.s.slots[ref.i])].val, true
}

// HomeSlot returns the address of key's home slot (the first slot a lookup of key
// reads), valid until the next mutation. It exists for warming: a caller about to look
// up many keys first collects their home slots (pure arithmetic and one load of a shard
// header each), then loads them all in a loop that does nothing else, so that the
// processor has many cache misses in flight at once (Go has no prefetch instruction).
// Computing an address and loading it in the same iteration, as a lookup does, keeps
// only a few misses in flight: on the project VM, 92 ns per key against 25 to 39 ns for
// two phases in groups of 16 to 128 keys of a 1M-key table.
func (t *Table) HomeSlot(key uint64) *uint64 { return t.HomeSlotHashed(t.mix(key)) }

// HomeSlotHashed is [Table.HomeSlot] of the key whose [Table.Hash] is h.
func (t *Table) HomeSlotHashed(h uint64) *uint64 {
	s := t.shardOf(h)
	return &s.slots[homeOf(h, len(s.slots))]
}

// Warm loads key's home slot and returns it; see [Table.HomeSlot], which warms better.
func (t *Table) Warm(key uint64) uint64 { return *t.HomeSlot(key) }

// Reserve grows every shard, when needed, so that n keys fit without resizing (a shard's
// share of n keys plus four standard deviations, at most 3/4 full), and keeps that size
// as the shards' floor: they never shrink below it. A smaller n than before changes
// nothing.
func (t *Table) Reserve(n int) {
	per := float64(n) / numShards
	size := int((per+4*math.Sqrt(per)+8)*maxLoadDen/maxLoadNum) + 1
	if size <= t.floor {
		return
	}
	t.floor = size
	for i := range t.shards {
		if s := &t.shards[i]; len(s.slots) < size {
			t.resize(s, size)
		}
	}
}

// Pos returns a number that orders keys as they are stored: by run, then by position
// in the run (chain order); ok is false for an absent key. A caller that inserts keys in
// this order, each with the previous one as parent hint, rebuilds the runs.
func (t *Table) Pos(key uint64) (pos uint64, ok bool) {
	sl := t.find(key)
	if sl == nil {
		return 0, false
	}
	return *sl >> hashBits, true
}

// Get returns key's value and its run's touch stamp (read atomically, so Get may run
// concurrently with readers updating stamps through Span).
func (t *Table) Get(key uint64) (val, touch uint32, ok bool) {
	sl := t.find(key)
	if sl == nil {
		return 0, 0, false
	}
	r := &t.runs[slotRID(*sl)]
	// Atomic: readers sharing the caller's read lock may be touching the run (Span).
	return r.val, atomic.LoadUint32(&r.touch), true
}

// Span looks key up and returns its value, the address of its run's touch stamp (which
// readers may update with sync/atomic while no goroutine mutates the table), and how many
// leading entries of next (the blocks that follow key in the caller's chain) are the
// blocks that follow key in its run, so have the same value. The pointer is valid until
// the next mutation.
func Span[K ~uint64](t *Table, key K, next []K) (val uint32, touch *uint32, n int, ok bool) {
	sl := t.find(uint64(key))
	if sl == nil {
		return 0, nil, 0, false
	}
	r := &t.runs[slotRID(*sl)]
	ks := r.keys[slotOff(*sl)+1:]
	ks = ks[:min(len(ks), len(next))]
	for n < len(ks) && ks[n] == uint64(next[n]) {
		n++
	}
	return r.val, &r.touch, n, true
}

// SetCapHint tells the table that the next new run will probably grow to n keys (the
// rest of a stored chain), so its array is allocated once.
func (t *Table) SetCapHint(n int) { t.nextCap = min(max(n, minRunCap), MaxRun) }

// Insert adds key, which must be absent, with value val (nonzero; 0 panics). parent is
// the key of the block before key in its chain (0 when unknown): when parent ends a run
// of value val, key is appended to that run, otherwise it starts a run of its own. The
// run's touch stamp becomes touch.
func (t *Table) Insert(key, parent uint64, val, touch uint32) {
	t.insert(key, parent, val, touch, Ref{h: t.mix(key)})
}

// InsertAt is [Table.Insert] of the key that ref, from a Lookup that did not find it
// with no mutation since, was looked up for: it starts placing the key where the lookup
// stopped instead of probing again.
func (t *Table) InsertAt(ref Ref, key, parent uint64, val, touch uint32) {
	t.insert(key, parent, val, touch, ref)
}

// insert is Insert of key; ref.h is its hash, and ref.s, when set, the place a lookup
// found for it (valid: what happens in between only rewrites slot values in place).
func (t *Table) insert(key, parent uint64, val, touch uint32, ref Ref) {
	if val == 0 {
		panic("runtable: Insert with value 0")
	}
	rid := t.appendable(parent, val, 1)
	if rid == 0 {
		rid = t.newRun(val, touch, parent, max(t.nextCap, minRunCap))
	}
	t.nextCap = 0
	off := t.push(rid, key)
	r := &t.runs[rid]
	r.touch, r.next = touch, 0
	t.lastRID = rid
	v := makeSlot(rid, off, ref.h)
	if s := ref.s; s != nil && (s.n+1)*maxLoadDen <= len(s.slots)*maxLoadNum {
		t.placeFrom(s, v, ref.i, ref.d)
		s.n++
	} else {
		t.insertSlot(ref.h, v)
	}
	t.n++
}

// appendable returns the run that parent ends when its value is val and it has room for
// n more keys, else 0.
func (t *Table) appendable(parent uint64, val uint32, n int) uint32 {
	if parent == 0 {
		return 0
	}
	rid := t.lastRID
	if rid == 0 || int(rid) >= len(t.runs) || !t.endsWith(rid, parent) {
		sl := t.find(parent)
		if sl == nil {
			return 0
		}
		rid = slotRID(*sl)
		if !t.endsWith(rid, parent) {
			return 0
		}
	}
	r := &t.runs[rid]
	if r.val != val || r.len()+n > MaxRun {
		return 0
	}
	return rid
}

func (r *run) len() int { return len(r.keys) - int(r.lo) }

func (t *Table) endsWith(rid uint32, key uint64) bool {
	r := &t.runs[rid]
	return r.len() > 0 && r.keys[len(r.keys)-1] == key
}

// newRun allocates an empty run with room for capHint keys.
func (t *Table) newRun(val, touch uint32, parent uint64, capHint int) uint32 {
	var rid uint32
	if n := len(t.free); n > 0 {
		rid = t.free[n-1]
		t.free = t.free[:n-1]
	} else {
		rid = uint32(len(t.runs))
		t.runs = append(t.runs, run{})
	}
	t.runs[rid] = run{keys: make([]uint64, 0, capHint), parent: parent, val: val, touch: touch}
	t.keyCap += capHint
	t.live++
	return rid
}

func (t *Table) freeRun(rid uint32) {
	t.keyCap -= cap(t.runs[rid].keys)
	t.runs[rid] = run{}
	t.free = append(t.free, rid)
	t.live--
	if t.lastRID == rid {
		t.lastRID = 0
	}
}

// push appends key to run rid (which has fewer than MaxRun keys) and returns its offset.
// A full array is replaced by one of twice the live length, dropping dead space before
// lo; the slots of moved keys are updated.
func (t *Table) push(rid uint32, key uint64) uint32 {
	r := &t.runs[rid]
	if len(r.keys) == cap(r.keys) {
		t.repack(rid, max(2*r.len(), minRunCap), 0)
	}
	r.keys = append(r.keys, key)
	return uint32(len(r.keys) - 1)
}

// repack moves run rid's live keys to a new array of capacity c, starting at offset at
// (at+live <= c), and updates their slots.
func (t *Table) repack(rid uint32, c, at int) {
	r := &t.runs[rid]
	live := r.keys[r.lo:]
	nk := make([]uint64, at+len(live), c)
	copy(nk[at:], live)
	t.keyCap += c - cap(r.keys)
	if int(r.lo) != at {
		t.move(live, rid, r.lo, rid, uint32(at))
	}
	r.keys, r.lo = nk, uint32(at)
}

// move points the slots of keys ks, which sit in run src from offset srcOff on, at run
// dst from offset dstOff on. It only compares slot values (no key reads): a key's slot
// is the one value naming its place.
func (t *Table) move(ks []uint64, src, srcOff, dst, dstOff uint32) {
	for i, k := range ks {
		h := t.mix(k)
		s := t.shardOf(h)
		old := makeSlot(src, srcOff+uint32(i), h)
		for j := homeOf(h, len(s.slots)); ; j = s.inc(j) {
			v := s.slots[j]
			if v == old {
				s.slots[j] = makeSlot(dst, dstOff+uint32(i), h)
				break
			}
			if v == 0 {
				panic("runtable: moved key has no slot")
			}
		}
	}
}

// shrunk repacks run rid when its array is mostly dead space, and frees it when empty.
func (t *Table) shrunk(rid uint32) {
	r := &t.runs[rid]
	live := r.len()
	switch {
	case live == 0:
		t.freeRun(rid)
	case cap(r.keys) > 2*minRunCap && 4*live < cap(r.keys):
		t.repack(rid, max(2*live, minRunCap), 0)
	}
}

// split moves the keys of run rid from offset p on (lo < p < len) into a new run, or,
// when they are the majority, the keys before p, so that at most half of the run moves.
// It returns the run now holding the keys before p and the one holding the rest. The key
// at p is copied but its slot is moved only when moveP is set (Delete has removed it).
func (t *Table) split(rid, p uint32, moveP bool) (head, tail uint32) {
	r := &t.runs[rid]
	n := uint32(len(r.keys))
	cut := r.keys[p]
	if n-p <= p-r.lo {
		nr := t.newRun(r.val, r.touch, r.keys[p-1], int(max(n-p, minRunCap)))
		r = &t.runs[rid] // newRun may have grown t.runs
		nrr := &t.runs[nr]
		nrr.keys = append(nrr.keys, r.keys[p:]...)
		nrr.next = r.next
		if moveP {
			t.move(r.keys[p:], rid, p, nr, 0)
		} else {
			t.move(r.keys[p+1:], rid, p+1, nr, 1)
		}
		r.keys = r.keys[:p]
		r.next = cut
		t.shrunk(rid)
		return rid, nr
	}
	nr := t.newRun(r.val, r.touch, r.parent, int(max(p-r.lo, minRunCap)))
	r = &t.runs[rid]
	nrr := &t.runs[nr]
	nrr.keys = append(nrr.keys, r.keys[r.lo:p]...)
	nrr.next = cut
	t.move(r.keys[r.lo:p], rid, r.lo, nr, 0)
	r.parent = r.keys[p-1]
	r.lo = p
	if moveP {
		t.shrunk(rid)
	}
	return nr, rid
}

// Set changes the value of key, which must be present, to val (nonzero; 0 panics);
// touch, when nonzero, becomes the touch stamp of key's run. Other keys keep their
// values: key's run is split around it as needed, and the key's new run merges with the
// run ending with its parent and the one starting with its child when they have value
// val, so chains whose blocks change value one by one, in any order, end up in as few
// runs as when stored at once.
func (t *Table) Set(key uint64, val, touch uint32) {
	if val == 0 {
		panic("runtable: Set with value 0")
	}
	sl := t.find(key)
	if sl == nil {
		panic("runtable: Set of an absent key")
	}
	t.setSlot(sl, key, val, touch)
}

// SetAt is [Table.Set] of the key at ref (from Lookup, with no mutation since).
func (t *Table) SetAt(ref Ref, key uint64, val, touch uint32) {
	if val == 0 {
		panic("runtable: Set with value 0")
	}
	t.setSlot(&ref.s.slots[ref.i], key, val, touch)
}

// setSlot is Set of key, whose slot is sl.
func (t *Table) setSlot(sl *uint64, key uint64, val, touch uint32) {
	rid, p := slotRID(*sl), slotOff(*sl)
	if r := &t.runs[rid]; r.val == val {
		if touch != 0 {
			r.touch = touch
		}
		return
	}
	if t.moveEnd(sl, key, rid, p, val, touch) {
		return
	}
	rid = t.isolate(rid, p)
	t.runs[rid].val = val
	if touch != 0 {
		t.runs[rid].touch = touch
	}
	rid = t.mergeLeft(rid)
	t.lastRID = t.mergeRight(rid)
}

// moveEnd is Set's fast path for the first or last key of a run (a chain changing value
// block by block from either end): the key moves to the neighbouring run of value val
// when there is one, without a run of its own in between. It reports whether it did.
// sl is key's slot; key sits at offset p of run rid.
func (t *Table) moveEnd(sl *uint64, key uint64, rid, p, val, touch uint32) bool {
	r := &t.runs[rid]
	h := t.mix(key)
	left := uint32(0)
	if p == r.lo {
		left = t.appendable(r.parent, val, 1)
	}
	if left != 0 && left != rid {
		off := t.push(left, key)
		*sl = makeSlot(left, off, h)
		r.parent = key
		r.lo++
		l := &t.runs[left]
		l.next = r.next
		if r.len() > 0 {
			l.next = r.keys[r.lo]
		}
		if touch != 0 {
			l.touch = touch
		}
		t.shrunk(rid)
		t.lastRID = t.mergeRight(left)
		return true
	}
	if int(p) != len(r.keys)-1 || r.next == 0 {
		return false
	}
	nsl := t.find(r.next)
	if nsl == nil {
		return false
	}
	right := slotRID(*nsl)
	rr := &t.runs[right]
	if right == rid || slotOff(*nsl) != rr.lo || rr.val != val || rr.parent != key || rr.len() >= MaxRun {
		return false
	}
	if rr.lo == 0 {
		extra := max(rr.len()/2, minRunCap)
		t.repack(right, rr.len()+2*extra, extra)
	}
	rr.lo--
	rr.keys[rr.lo] = key
	*sl = makeSlot(right, rr.lo, h)
	rr.parent = r.parent
	if p > r.lo {
		rr.parent = r.keys[p-1]
	}
	if touch != 0 {
		rr.touch = touch
	}
	r.keys = r.keys[:p]
	r.next = key
	t.shrunk(rid)
	t.lastRID = t.mergeLeft(right)
	return true
}

// isolate splits run rid so that the key at offset p is alone in its run, and returns
// that run.
func (t *Table) isolate(rid, p uint32) uint32 {
	r := &t.runs[rid]
	if p > r.lo {
		_, rid = t.split(rid, p, true)
		r = &t.runs[rid]
		p = r.lo
	}
	if uint32(len(r.keys)) > p+1 {
		rid, _ = t.split(rid, p+1, true)
	}
	return rid
}

// mergeLeft merges run rid into the run that ends with rid's parent when it has the same
// value and room, and returns the run holding rid's keys.
func (t *Table) mergeLeft(rid uint32) uint32 {
	r := &t.runs[rid]
	left := t.appendable(r.parent, r.val, r.len())
	if left == 0 || left == rid {
		return rid
	}
	return t.absorb(left, rid)
}

// mergeRight merges into run rid the run that starts with rid's next key, continues
// rid's chain and has the same value and room, and returns the run holding rid's keys.
func (t *Table) mergeRight(rid uint32) uint32 {
	r := &t.runs[rid]
	if r.next == 0 {
		return rid
	}
	sl := t.find(r.next)
	if sl == nil {
		return rid
	}
	right, off := slotRID(*sl), slotOff(*sl)
	rr := &t.runs[right]
	if right == rid || off != rr.lo || rr.val != r.val || rr.parent != r.keys[len(r.keys)-1] || r.len()+rr.len() > MaxRun {
		return rid
	}
	return t.absorb(rid, right)
}

// absorb merges runs a and b (b continues a's chain; same value; at most MaxRun keys
// together) by moving the shorter one's keys into the other, and returns the survivor.
func (t *Table) absorb(a, b uint32) uint32 {
	ra, rb := &t.runs[a], &t.runs[b]
	touch := max(ra.touch, rb.touch)
	if ra.len() >= rb.len() {
		// Append b's keys to a.
		if cap(ra.keys)-len(ra.keys) < rb.len() {
			t.repack(a, 2*(ra.len()+rb.len()), 0)
		}
		start := uint32(len(ra.keys))
		ra.keys = append(ra.keys, rb.keys[rb.lo:]...)
		t.move(rb.keys[rb.lo:], b, rb.lo, a, start)
		ra.next, ra.touch = rb.next, touch
		t.freeRun(b)
		return a
	}
	// Prepend a's keys to b, leaving room for more in front: a chain whose blocks
	// change value from its end grows the run at its head one key at a time.
	if int(rb.lo) < ra.len() {
		need := ra.len() + rb.len()
		extra := max(need/2, minRunCap)
		t.repack(b, need+2*extra, ra.len()+extra)
	}
	start := rb.lo - uint32(ra.len())
	copy(rb.keys[start:], ra.keys[ra.lo:])
	t.move(ra.keys[ra.lo:], a, ra.lo, b, start)
	rb.lo, rb.parent, rb.touch = start, ra.parent, touch
	t.freeRun(a)
	return b
}

// Delete removes key and reports whether it was present.
func (t *Table) Delete(key uint64) bool {
	s, i, ok := t.findAt(key)
	if !ok {
		return false
	}
	t.deleteAt(s, i, key)
	return true
}

// DeleteAt is [Table.Delete] of the key at ref (from Lookup, with no mutation since).
func (t *Table) DeleteAt(ref Ref, key uint64) { t.deleteAt(ref.s, ref.i, key) }

// deleteAt removes key, at slot i of shard s.
func (t *Table) deleteAt(s *shard, i uint64, key uint64) {
	v := s.slots[i]
	rid, p := slotRID(v), slotOff(v)
	t.removeSlot(s, i)
	t.n--
	r := &t.runs[rid]
	switch p {
	case uint32(len(r.keys)) - 1:
		r.keys = r.keys[:p]
		r.next = key
	case r.lo:
		r.parent = key
		r.lo++
	default:
		// Split first (the key's slot is gone: split does not move it), then drop the
		// key, now the head of the tail part.
		_, tail := t.split(rid, p, false)
		tr := &t.runs[tail]
		tr.parent = key
		tr.lo++
		rid = tail
	}
	t.shrunk(rid)
}

// insertSlot inserts slot value v of a key of hash h, growing its shard when needed.
func (t *Table) insertSlot(h, v uint64) {
	s := t.shardOf(h)
	if (s.n+1)*maxLoadDen > len(s.slots)*maxLoadNum {
		t.resize(s, grownSize(len(s.slots)))
	}
	t.place(s, v, homeOf(h, len(s.slots)))
	s.n++
}

// place puts slot value v, whose home is home, into shard s (which has an empty slot)
// in Robin Hood order: v goes before the first entry closer to its own home, which moves
// on the same way, until an empty slot takes the last one.
func (t *Table) place(s *shard, v, home uint64) { t.placeFrom(s, v, home, 0) }

// placeFrom is place starting at slot i, where v's probe distance is d: every entry
// before i on v's way from its home is at least as far from its own home.
func (t *Table) placeFrom(s *shard, v, i, d uint64) {
	size := len(s.slots)
	for ; ; i, d = s.inc(i), d+1 {
		cur := s.slots[i]
		if cur == 0 {
			s.slots[i] = v
			return
		}
		if cd := t.dist(cur, i, size); cd < d {
			s.slots[i], v, d = v, cur, cd
		}
	}
}

// removeSlot removes slot i of shard s with backward-shift deletion (no tombstones): the
// entries after it move back one slot until an empty slot or an entry at its home,
// which keeps Robin Hood order. The key must still be readable through its slot.
func (t *Table) removeSlot(s *shard, i uint64) {
	size := len(s.slots)
	for {
		j := s.inc(i)
		v := s.slots[j]
		if v == 0 || t.dist(v, j, size) == 0 {
			break
		}
		s.slots[i] = v
		i = j
	}
	s.slots[i] = 0
	s.n--
	if len(s.slots) > max(minShardCap, t.floor) && s.n*8 < len(s.slots) {
		t.resize(s, max(len(s.slots)/2, minShardCap, t.floor))
	}
}

// resize moves shard s to an array of size slots. The old entries are placed in their
// order starting after an empty slot, which is home order, so place rarely swaps.
func (t *Table) resize(s *shard, size int) {
	old := s.slots
	s.slots = make([]uint64, size)
	start := 0
	for start < len(old) && old[start] != 0 {
		start++
	}
	for k := range old {
		v := old[(start+k)%len(old)]
		if v != 0 {
			t.place(s, v, t.home(v, size))
		}
	}
}

// Oldest appends to dst[:0] up to limit keys from the end of the least recently touched of
// samples runs taken at a pseudo-random position chosen from r (consecutive run records,
// which hold unrelated chains), last block first, and returns it; empty when the table
// is empty. Evicting them keeps the rest of the chain matchable: a chain is only ever
// shortened from its end.
func (t *Table) Oldest(r uint64, samples, limit int, dst []uint64) []uint64 {
	dst = dst[:0]
	if t.live == 0 || limit <= 0 {
		return dst
	}
	best, bt, seen := uint32(0), uint32(0), 0
	nr := uint64(len(t.runs) - 1)
	start := bits.RotateLeft64(r, 17) % nr
	for c := uint64(0); c < nr && seen < samples; c++ {
		rid := uint32(1 + (start+c)%nr)
		rr := &t.runs[rid]
		if rr.val == 0 {
			continue
		}
		seen++
		if best == 0 || rr.touch < bt {
			best, bt = rid, rr.touch
		}
	}
	rr := &t.runs[best]
	for i := len(rr.keys) - 1; i >= int(rr.lo) && len(dst) < limit; i-- {
		dst = append(dst, rr.keys[i])
	}
	return dst
}

// Range calls fn for every key until fn returns false. fn must not mutate the table.
func (t *Table) Range(fn func(key uint64, val, touch uint32) bool) {
	for rid := 1; rid < len(t.runs); rid++ {
		r := &t.runs[rid]
		touch := atomic.LoadUint32(&r.touch)
		for _, k := range r.keys[r.lo:] {
			if !fn(k, r.val, touch) {
				return
			}
		}
	}
}

// Check verifies the table's invariants in O(n) and returns the first violation: every
// key of every run has exactly the slot naming its place, reachable from its home
// without crossing an empty slot; every slot names a live key; counts and capacities
// add up; runs hold at most MaxRun keys, have a nonzero value and are not empty. For
// tests.
func (t *Table) Check() error {
	keys, runs, capSum := 0, 0, 0
	for rid := 1; rid < len(t.runs); rid++ {
		r := &t.runs[rid]
		if r.val == 0 {
			if r.keys != nil {
				return fmt.Errorf("free run %d has keys", rid)
			}
			continue
		}
		runs++
		capSum += cap(r.keys)
		n := len(r.keys) - int(r.lo)
		if n <= 0 || n > MaxRun || cap(r.keys) > offMask {
			return fmt.Errorf("run %d: %d keys, lo %d, cap %d", rid, n, r.lo, cap(r.keys))
		}
		for off := int(r.lo); off < len(r.keys); off++ {
			k := r.keys[off]
			h := t.mix(k)
			s := t.shardOf(h)
			want := makeSlot(uint32(rid), uint32(off), h)
			found := false
			for i := homeOf(h, len(s.slots)); s.slots[i] != 0; i = s.inc(i) {
				if s.slots[i] == want {
					found = true
					break
				}
			}
			if !found {
				return fmt.Errorf("key %x (run %d offset %d) has no slot", k, rid, off)
			}
			keys++
		}
	}
	slots := 0
	for si := range t.shards {
		s := &t.shards[si]
		n := 0
		for _, v := range s.slots {
			if v == 0 {
				continue
			}
			n++
			rid, off := slotRID(v), slotOff(v)
			if int(rid) >= len(t.runs) || t.runs[rid].val == 0 || off < t.runs[rid].lo || int(off) >= len(t.runs[rid].keys) {
				return fmt.Errorf("slot %x names no live key", v)
			}
		}
		if n != s.n {
			return fmt.Errorf("shard %d counts %d, holds %d", si, s.n, n)
		}
		for i, v := range s.slots {
			j := s.inc(uint64(i))
			if w := s.slots[j]; v != 0 && w != 0 && t.dist(w, j, len(s.slots)) > t.dist(v, uint64(i), len(s.slots))+1 {
				return fmt.Errorf("shard %d: slots %d and %d break Robin Hood order", si, i, j)
			}
		}
		slots += n
	}
	switch {
	case keys != t.n || slots != t.n:
		return fmt.Errorf("len %d, runs hold %d, slots %d", t.n, keys, slots)
	case runs != t.live:
		return fmt.Errorf("live runs %d, counted %d", t.live, runs)
	case capSum != t.keyCap:
		return fmt.Errorf("key capacity %d, counted %d", t.keyCap, capSum)
	case len(t.free)+runs != len(t.runs)-1:
		return errors.New("free list and live runs do not cover the run records")
	}
	return nil
}
