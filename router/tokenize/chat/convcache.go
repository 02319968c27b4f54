package chat

import (
	"bytes"
	"slices"
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
//
// Entries are also found by their first two messages (byStart): a request that
// repeats an entry's bytes from its first message on takes the entry's messages,
// bounds and hashes without scanning those bytes (parseConv), and scans only what
// follows. At turns 30 to 40 of BenchmarkDecision the parse was a quarter of the
// routing decision, more than half of it the scan and hash of the messages (CPU
// profile, 2026-12-07: 0.46 s of 1.84 s, the scan 0.22 s).
type convCache struct {
	maxBytes int

	hits, misses atomic.Int64
	// copied and ran count planned loop iterations of the renders (jinja.Prior).
	copied, ran atomic.Int64

	// mu guards the fields below.
	mu      sync.Mutex
	m       map[uint64]*convEntry
	starts  map[uint64][]*convEntry // by the key of their first two messages, oldest first, maxStarts at most
	entries []*convEntry            // oldest first; evicted ones stay until the hand reaches them
	bytes   int
}

// maxStarts is how many entries byStart keeps per first two messages (conversations
// that begin alike, or a conversation's branches).
const maxStarts = 4

// convOverhead is the accounted size of a message in an entry besides its bytes: its
// value, parts and bounds in the entry's slices.
const convOverhead = 88

type convEntry struct {
	key    uint64
	start  uint64 // the key of the first two messages (0: fewer), filed in starts
	raw    []byte // from the first message's start to the last one's end, as received
	msgs   []jinja.Value
	parts  [][]string
	bounds []msgBound // each message's bytes in raw, and their hash
	// prior is the template render of these messages, for the next turn's render to
	// resume from (jinja.Prior; set after the render, by setPrior).
	prior     atomic.Pointer[jinja.Prior]
	priorCost int  // prior's share of cost, under the cache's mu
	cost      int  // accounted bytes
	gone      bool // left the map
}

func newConvCache(maxBytes int) *convCache {
	return &convCache{maxBytes: maxBytes, m: map[uint64]*convEntry{}, starts: map[uint64][]*convEntry{}}
}

// byStart returns the longest entry of at least two messages whose bytes rest
// begins with, start being the key of rest's first two messages, or nil. rest runs
// from the first message's start to the end of the body.
func (c *convCache) byStart(start uint64, rest []byte) *convEntry {
	var buf [maxStarts]*convEntry
	c.mu.Lock()
	cands := append(buf[:0], c.starts[start]...)
	c.mu.Unlock()
	// Longest first. An entry's raw, msgs and bounds never change (put appends past
	// their lengths), so they are compared without the lock.
	slices.SortFunc(cands, func(a, b *convEntry) int { return len(b.raw) - len(a.raw) })
	for _, e := range cands {
		if len(e.raw) <= len(rest) && bytes.Equal(rest[:len(e.raw)], e.raw) {
			return e
		}
	}
	return nil
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
//
// bounds are the messages' bounds in the request, off the first one's start: the
// entry keeps them from raw's start.
func (c *convCache) put(key uint64, raw []byte, msgs []jinja.Value, parts [][]string, bounds []msgBound, off int,
	prev *convEntry, k int) *convEntry {
	if 2*len(raw)+convOverhead*len(msgs) > c.maxBytes/4 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var e *convEntry
	if prev != nil && !prev.gone && c.m[prev.key] == prev {
		c.drop(prev)
		e = &convEntry{key: key, raw: append(prev.raw, raw[len(prev.raw):]...),
			msgs: append(prev.msgs, msgs[k:]...), parts: append(prev.parts, parts[k:]...),
			bounds: rebase(prev.bounds, bounds[k:], off)}
	} else {
		e = &convEntry{key: key, raw: bytes.Clone(raw),
			msgs: append([]jinja.Value(nil), msgs...), parts: append([][]string(nil), parts...),
			bounds: rebase(nil, bounds, off)}
	}
	if len(bounds) >= 2 {
		e.start = nextKey(nextKey(0, bounds[0].hash), bounds[1].hash)
	}
	e.cost = len(e.raw) + cap(e.raw) + convOverhead*cap(e.msgs)
	if old := c.m[key]; old != nil {
		c.drop(old)
	}
	c.m[key] = e
	if e.start != 0 {
		l := c.starts[e.start]
		if len(l) == maxStarts {
			l[0].start = 0 // no longer filed there
			l = append(l[:0], l[1:]...)
		}
		c.starts[e.start] = append(l, e)
	}
	c.entries = append(c.entries, e)
	c.bytes += e.cost
	c.evict()
	return e
}

// rebase appends bounds to dst, moved back by off (forward when off is negative).
func rebase(dst, bounds []msgBound, off int) []msgBound {
	for _, b := range bounds {
		dst = append(dst, msgBound{start: b.start - off, end: b.end - off, hash: b.hash})
	}
	return dst
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
	if e.start != 0 {
		l := c.starts[e.start]
		if i := slices.Index(l, e); i >= 0 {
			l = slices.Delete(l, i, i+1)
		}
		if len(l) == 0 {
			delete(c.starts, e.start)
		} else {
			c.starts[e.start] = l
		}
	}
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
