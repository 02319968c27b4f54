package chat

import (
	"bytes"
	"sync"
	"sync/atomic"

	"github.com/kvroute/kvroute/router/tokenize/chat/jinja"
)

// convCache remembers the converted messages of recent requests, whole, keyed by the
// conversation key of all their messages (convKeys), so that the next turn of a
// conversation, which repeats them and adds its own, takes them in one piece: one
// lookup under a key the request computes anyway, and one compare of the repeated
// bytes against the copy kept here, contiguous, instead of a message-cache lookup and a
// compare per message. Those per-message lookups read a cache entry and its bytes from
// wherever they were allocated: at turns 30 to 40 of BenchmarkDecision's conversations
// (24 of them interleaved) msgCache.get was half of the parse and 12% of the decision
// in a CPU profile (2026-12-07). As with msgCache, a match needs equal bytes, so a hash
// collision is a miss and never a wrong message; the messages after the match go
// through msgCache.
//
// An entry is superseded by the longer one its conversation's next turn stores, and
// dropped then; entries leave oldest first once over maxBytes of accounted size (the
// bytes kept and their buffer's capacity, plus convOverhead per message).
type convCache struct {
	maxBytes int

	hits, misses atomic.Int64
	// copied and ran count planned loop iterations of the renders (jinja.Prior).
	copied, ran atomic.Int64

	// mu guards the fields below.
	mu      sync.Mutex
	m       map[uint64]*convEntry
	entries []*convEntry // oldest first; evicted ones stay until the hand reaches them
	bytes   int
}

// convOverhead is the accounted size of a message in an entry besides its bytes: its
// value and parts in the entry's slices.
const convOverhead = 64

type convEntry struct {
	key   uint64
	raw   []byte // from the first message's start to the last one's end, as received
	msgs  []jinja.Value
	parts [][]string
	// prior is the template render of these messages, for the next turn's render to
	// resume from (jinja.Prior; set after the render, by setPrior).
	prior     atomic.Pointer[jinja.Prior]
	priorCost int  // prior's share of cost, under the cache's mu
	cost      int  // accounted bytes
	gone      bool // left the map
}

func newConvCache(maxBytes int) *convCache {
	return &convCache{maxBytes: maxBytes, m: map[uint64]*convEntry{}}
}

// get returns the entry filed under key whose k messages are the bytes of span (a
// request's first k messages, from the first one's start to the last one's end), or
// nil.
func (c *convCache) get(key uint64, k int, span []byte) *convEntry {
	c.mu.Lock()
	e := c.m[key]
	c.mu.Unlock()
	if e == nil || len(e.msgs) != k || !bytes.Equal(e.raw, span) {
		return nil
	}
	return e
}

// put files a request's messages (raw from the first one's start to the last one's
// end) under key. prev is the entry the request reused, holding
// its first k messages, or nil: the new entry replaces it, and when prev is still filed
// it takes over prev's buffers and appends only the new messages (prev's bytes are
// never written: a reader holding prev reads no further than its lengths), so a turn
// costs its new messages, not a copy of the conversation. Otherwise it copies. The
// messages and parts themselves are shared and never change. It returns the new
// entry, or nil when the messages are too large to keep.
func (c *convCache) put(key uint64, raw []byte, msgs []jinja.Value, parts [][]string, prev *convEntry, k int) *convEntry {
	if 2*len(raw)+convOverhead*len(msgs) > c.maxBytes/4 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var e *convEntry
	if prev != nil && !prev.gone && c.m[prev.key] == prev {
		c.drop(prev)
		e = &convEntry{key: key, raw: append(prev.raw, raw[len(prev.raw):]...),
			msgs: append(prev.msgs, msgs[k:]...), parts: append(prev.parts, parts[k:]...)}
	} else {
		e = &convEntry{key: key, raw: bytes.Clone(raw),
			msgs: append([]jinja.Value(nil), msgs...), parts: append([][]string(nil), parts...)}
	}
	e.cost = len(e.raw) + cap(e.raw) + convOverhead*cap(e.msgs)
	if old := c.m[key]; old != nil {
		c.drop(old)
	}
	c.m[key] = e
	c.entries = append(c.entries, e)
	c.bytes += e.cost
	c.evict()
	return e
}

// setPrior keeps the render of e's messages for the next turn of the conversation,
// counted in e's cost; e is an entry parseConv returned (a later put may have
// replaced it: then the render is not kept).
func (c *convCache) setPrior(e *convEntry, p *jinja.Prior) {
	size := p.Size()
	if size > c.maxBytes/4 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.gone {
		return
	}
	e.prior.Store(p)
	c.bytes += size - e.priorCost
	e.cost += size - e.priorCost
	e.priorCost = size
	c.evict()
}

// evict drops the oldest entries while the cache is over its budget; the caller
// holds mu.
func (c *convCache) evict() {
	for c.bytes > c.maxBytes && len(c.entries) > 0 {
		old := c.entries[0]
		c.entries[0] = nil
		c.entries = c.entries[1:]
		if !old.gone {
			c.drop(old)
		}
	}
	if len(c.entries) > 2*len(c.m)+64 { // dropped entries waiting for the hand
		live := c.entries[:0]
		for _, v := range c.entries {
			if !v.gone {
				live = append(live, v)
			}
		}
		clear(c.entries[len(live):])
		c.entries = live
	}
}

// drop takes e out of the map; the caller holds mu.
func (c *convCache) drop(e *convEntry) {
	delete(c.m, e.key)
	c.bytes -= e.cost
	e.gone = true
}

// stats adds the cache's counts to s.
func (c *convCache) stats(s *CacheStats) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.Conversations, s.ConversationBytes = len(c.m), c.bytes
	s.ConversationHits, s.ConversationMisses = c.hits.Load(), c.misses.Load()
	s.RenderCopied, s.RenderRan = c.copied.Load(), c.ran.Load()
}
