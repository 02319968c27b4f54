package kvcache

import "errors"

// ErrNoSpace is returned by [Pool.Allocate] when fewer free blocks exist than requested.
var ErrNoSpace = errors.New("kvcache: not enough free blocks")

// BlockID identifies a physical block, in [0, Capacity).
type BlockID int32

const none BlockID = -1

type block struct {
	ref    int32
	hashed bool
	hash   uint64
	// prev and next link the block into the free queue; none at the ends or when the
	// block is not in the queue.
	prev, next BlockID
	inFree     bool
}

// Pool is a fixed set of KV-cache blocks with prefix caching and LRU eviction of
// unreferenced blocks. The zero value is not usable; create one with [New].
type Pool struct {
	blocks     []block
	head, tail BlockID
	numFree    int
	// byHash maps a cached hash to its first copy; dups holds further copies (rare:
	// two requests computed the same block at once).
	byHash map[uint64]BlockID
	dups   map[uint64][]BlockID
}

// New returns a pool of capacity blocks, all free and uncached. capacity must be
// positive.
func New(capacity int) *Pool {
	p := &Pool{
		blocks: make([]block, capacity),
		head:   none,
		tail:   none,
		byHash: make(map[uint64]BlockID),
		dups:   make(map[uint64][]BlockID),
	}
	for i := range p.blocks {
		p.blocks[i].prev, p.blocks[i].next = none, none
		p.pushTail(BlockID(i))
	}
	return p
}

// Capacity returns the number of blocks in the pool.
func (p *Pool) Capacity() int { return len(p.blocks) }

// NumFree returns the number of unreferenced blocks, cached or not (vLLM counts them the
// same way for kv_cache_usage_perc).
func (p *Pool) NumFree() int { return p.numFree }

// NumCached returns the number of distinct hashes currently in the cache.
func (p *Pool) NumCached() int { return len(p.byHash) }

// Usage returns the fraction of blocks referenced by requests, in [0, 1].
func (p *Pool) Usage() float64 {
	return 1 - float64(p.numFree)/float64(len(p.blocks))
}

// Has reports whether a block with hash h is cached.
func (p *Pool) Has(h uint64) bool {
	_, ok := p.byHash[h]
	return ok
}

// Hashes appends every cached hash (once per cached copy) to dst and returns it.
func (p *Pool) Hashes(dst []uint64) []uint64 {
	for h := range p.byHash {
		dst = append(dst, h)
		for range p.dups[h] {
			dst = append(dst, h)
		}
	}
	return dst
}

// Match returns the number of leading hashes that are cached, stopping at the first
// miss.
func (p *Pool) Match(hashes []uint64) int {
	for i, h := range hashes {
		if _, ok := p.byHash[h]; !ok {
			return i
		}
	}
	return len(hashes)
}

// Touch references the cached blocks of the leading hashes (the caller has checked them
// with [Pool.Match]) and appends their ids to dst. A block leaving the free queue is no
// longer evictable until freed again. It panics if a hash is not cached.
func (p *Pool) Touch(dst []BlockID, hashes []uint64) []BlockID {
	for _, h := range hashes {
		id := p.byHash[h]
		b := &p.blocks[id]
		if b.ref == 0 {
			p.unlink(id)
		}
		b.ref++
		dst = append(dst, id)
	}
	return dst
}

// Allocate takes n blocks from the head of the free queue, references them and appends
// their ids to dst. Any cache entry a taken block held is evicted and its hash appended
// to evicted. When fewer than n blocks are free nothing changes and ErrNoSpace is
// returned.
func (p *Pool) Allocate(dst []BlockID, n int, evicted []uint64) ([]BlockID, []uint64, error) {
	if n > p.numFree {
		return dst, evicted, ErrNoSpace
	}
	for range n {
		id := p.head
		p.unlink(id)
		b := &p.blocks[id]
		if b.hashed {
			p.dropHash(b.hash, id)
			evicted = append(evicted, b.hash)
			b.hashed, b.hash = false, 0
		}
		b.ref = 1
		dst = append(dst, id)
	}
	return dst, evicted, nil
}

// Commit marks a referenced, full block as holding the content identified by h, making it
// a cache entry other requests can hit. Committing an already hashed block is a no-op.
func (p *Pool) Commit(id BlockID, h uint64) {
	b := &p.blocks[id]
	if b.hashed {
		return
	}
	b.hashed, b.hash = true, h
	if _, ok := p.byHash[h]; ok {
		p.dups[h] = append(p.dups[h], id)
		return
	}
	p.byHash[h] = id
}

// Free drops one reference from each block, in reverse order so that a request's tail
// blocks are evicted before its head blocks (vLLM frees the same way: a shared prefix
// outlives the suffixes hanging off it). Unreferenced blocks join the free queue's tail
// and stay cached until evicted.
func (p *Pool) Free(ids []BlockID) {
	for i := len(ids) - 1; i >= 0; i-- {
		id := ids[i]
		b := &p.blocks[id]
		b.ref--
		if b.ref == 0 {
			p.pushTail(id)
		}
	}
}

// Reset forgets every cache entry and returns the hashes it held (once per copy). Blocks
// keep their references; the caller resets only when no request holds blocks, as vLLM's
// reset_prefix_cache does.
func (p *Pool) Reset(evicted []uint64) []uint64 {
	evicted = p.Hashes(evicted)
	for i := range p.blocks {
		p.blocks[i].hashed, p.blocks[i].hash = false, 0
	}
	clear(p.byHash)
	clear(p.dups)
	return evicted
}

func (p *Pool) dropHash(h uint64, id BlockID) {
	dups := p.dups[h]
	if p.byHash[h] == id {
		if len(dups) == 0 {
			delete(p.byHash, h)
			return
		}
		p.byHash[h] = dups[0]
		dups = dups[1:]
	} else {
		for i, x := range dups {
			if x == id {
				dups = append(dups[:i], dups[i+1:]...)
				break
			}
		}
	}
	if len(dups) == 0 {
		delete(p.dups, h)
		return
	}
	p.dups[h] = dups
}

func (p *Pool) pushTail(id BlockID) {
	b := &p.blocks[id]
	b.prev, b.next, b.inFree = p.tail, none, true
	if p.tail != none {
		p.blocks[p.tail].next = id
	} else {
		p.head = id
	}
	p.tail = id
	p.numFree++
}

func (p *Pool) unlink(id BlockID) {
	b := &p.blocks[id]
	if !b.inFree {
		return
	}
	if b.prev != none {
		p.blocks[b.prev].next = b.next
	} else {
		p.head = b.next
	}
	if b.next != none {
		p.blocks[b.next].prev = b.prev
	} else {
		p.tail = b.prev
	}
	b.prev, b.next, b.inFree = none, none, false
	p.numFree--
}
