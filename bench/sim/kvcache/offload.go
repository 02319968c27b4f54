package kvcache

// Offload is a CPU offload tier: a set of up to a fixed number of block hashes kept in
// least-recently-used order, modelled on vLLM's CPU offloading manager
// (vllm/v1/kv_offload, LRU by default): a store or a lookup hit makes a block the most
// recently used, and a store into a full tier evicts the least recently used block.
// Unlike the GPU [Pool] it holds no request references (a block being loaded back is
// copied at once in the simulation), so every block is evictable. The zero value is not
// usable; create one with [NewOffload]. Not safe for concurrent use.
type Offload struct {
	capacity int
	byHash   map[uint64]*offNode
	// head is the least recently used block, tail the most recent; nil when empty.
	head, tail *offNode
}

type offNode struct {
	hash       uint64
	prev, next *offNode
}

// NewOffload returns an empty tier of capacity blocks; capacity must be positive.
func NewOffload(capacity int) *Offload {
	return &Offload{capacity: capacity, byHash: make(map[uint64]*offNode, min(capacity, 1<<16))}
}

// Capacity returns the most blocks the tier holds.
func (o *Offload) Capacity() int { return o.capacity }

// Len returns the number of blocks held.
func (o *Offload) Len() int { return len(o.byHash) }

// Has reports whether block h is held.
func (o *Offload) Has(h uint64) bool {
	_, ok := o.byHash[h]
	return ok
}

// Match returns the number of leading hashes held, stopping at the first miss, and
// makes those blocks the most recently used (vLLM's connector touches a request's
// blocks when it looks them up).
func (o *Offload) Match(hashes []uint64) int {
	for i, h := range hashes {
		n, ok := o.byHash[h]
		if !ok {
			return i
		}
		o.moveToTail(n)
	}
	return len(hashes)
}

// Store adds block h as the most recently used (only moving it there when already
// held) and reports whether it was added; a tier at capacity first evicts its least
// recently used block, appended to evicted.
func (o *Offload) Store(h uint64, evicted []uint64) (added bool, _ []uint64) {
	if n, ok := o.byHash[h]; ok {
		o.moveToTail(n)
		return false, evicted
	}
	if len(o.byHash) >= o.capacity {
		victim := o.head
		o.unlink(victim)
		delete(o.byHash, victim.hash)
		evicted = append(evicted, victim.hash)
	}
	n := &offNode{hash: h}
	o.byHash[h] = n
	o.pushTail(n)
	return true, evicted
}

// Hashes appends every held hash to dst, least recently used first, and returns it.
func (o *Offload) Hashes(dst []uint64) []uint64 {
	for n := o.head; n != nil; n = n.next {
		dst = append(dst, n.hash)
	}
	return dst
}

func (o *Offload) moveToTail(n *offNode) {
	if o.tail == n {
		return
	}
	o.unlink(n)
	o.pushTail(n)
}

func (o *Offload) pushTail(n *offNode) {
	n.prev, n.next = o.tail, nil
	if o.tail != nil {
		o.tail.next = n
	} else {
		o.head = n
	}
	o.tail = n
}

func (o *Offload) unlink(n *offNode) {
	if n.prev != nil {
		n.prev.next = n.next
	} else {
		o.head = n.next
	}
	if n.next != nil {
		n.next.prev = n.prev
	} else {
		o.tail = n.prev
	}
	n.prev, n.next = nil, nil
}
