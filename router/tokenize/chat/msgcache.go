package chat

import (
	"bytes"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"

	"github.com/kvroute/kvroute/router/tokenize/chat/jinja"
)

// msgCache holds converted messages (convertMessage's results) keyed by the
// message's raw JSON bytes, so a conversation's earlier messages are decoded once,
// not at every turn. An entry is found by the xxhash of the bytes and used only if
// the bytes are equal, so a hash collision is a miss, never a wrong message; equal
// bytes decode to equal values, and the values are never modified afterwards (the
// template sandbox only writes namespaces), so one value serves concurrent renders.
//
// The cache is bounded by maxBytes of accounted size (twice the raw bytes, for the
// copy kept and the decoded strings, plus msgOverhead per entry, which also bounds
// the number of entries to maxBytes/msgOverhead). It evicts with CLOCK: an entry used
// since the hand last passed survives one more round, so a long conversation's
// messages stay while one-off messages go first.
type msgCache struct {
	maxBytes int

	hits, misses, evictions atomic.Int64

	// mu guards the fields below.
	mu    sync.Mutex
	m     map[uint64]*msgEntry
	ring  []*msgEntry // CLOCK order; hand is ring[0]
	bytes int
}

// msgOverhead is the accounted size of an entry besides its bytes: the map slot,
// the entry, and the decoded message's dict.
const msgOverhead = 256

type msgEntry struct {
	hash  uint64
	raw   []byte
	msg   jinja.Value
	parts []string
	cost  int
	used  atomic.Bool
}

func newMsgCache(maxBytes int) *msgCache {
	return &msgCache{maxBytes: maxBytes, m: map[uint64]*msgEntry{}}
}

// get returns the entry for raw, whose xxhash is h, or nil.
func (c *msgCache) get(h uint64, raw []byte) *msgEntry {
	c.mu.Lock()
	e := c.m[h]
	c.mu.Unlock()
	if e == nil || !bytes.Equal(e.raw, raw) {
		c.misses.Add(1)
		return nil
	}
	if !e.used.Load() {
		e.used.Store(true)
	}
	c.hits.Add(1)
	return e
}

// put caches the conversion of raw (hash h). An entry larger than a quarter of the
// budget is not kept.
func (c *msgCache) put(h uint64, raw []byte, msg jinja.Value, parts []string) {
	cost := 2*len(raw) + msgOverhead
	if cost > c.maxBytes/4 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m[h]
	if old != nil && bytes.Equal(old.raw, raw) {
		return // another miss of the same message put it first
	}
	e := &msgEntry{hash: h, raw: bytes.Clone(raw), msg: msg, parts: parts, cost: cost}
	if old != nil {
		// A hash collision: the newest wins; the old entry leaves the map now and
		// the ring when the hand reaches it (or the ring is compacted).
		c.bytes -= old.cost
		old.cost = 0
		if len(c.ring) > 2*len(c.m)+64 {
			live := c.ring[:0]
			for _, v := range c.ring {
				if v.cost > 0 {
					live = append(live, v)
				}
			}
			clear(c.ring[len(live):])
			c.ring = live
		}
	}
	c.m[h] = e
	c.ring = append(c.ring, e)
	c.bytes += cost
	for c.bytes > c.maxBytes && len(c.ring) > 0 {
		v := c.ring[0]
		c.ring[0] = nil
		c.ring = c.ring[1:]
		if v.cost > 0 && v.used.Load() {
			v.used.Store(false)
			c.ring = append(c.ring, v)
			continue
		}
		if c.m[v.hash] == v {
			delete(c.m, v.hash)
			c.bytes -= v.cost
			c.evictions.Add(1)
		}
	}
}

// hashMsg is the cache key of a message's raw bytes.
func hashMsg(raw []byte) uint64 { return xxhash.Sum64(raw) }

// CacheStats reports an Encoder's caches.
type CacheStats struct {
	// Messages and MessageBytes are the converted messages held and their
	// accounted size (see Encoder's doc).
	Messages, MessageBytes int
	// MessageHits, MessageMisses and MessageEvictions count lookups and evictions
	// since the Encoder was made.
	MessageHits, MessageMisses, MessageEvictions int64
	// Conversations and ConversationBytes are the recent requests' message lists held
	// and their accounted size (convCache); ConversationHits counts requests that took
	// their earlier messages from one, ConversationMisses those that did not.
	Conversations, ConversationBytes     int
	ConversationHits, ConversationMisses int64
	// RenderCopied and RenderRan count the iterations of the templates' loops over
	// the messages that a render copied from the conversation's previous render
	// (messages that render as they did then, jinja.Template.RenderFrom) and that it
	// ran.
	RenderCopied, RenderRan int64
}

// stats returns the cache's counts.
func (c *msgCache) stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return CacheStats{Messages: len(c.m), MessageBytes: c.bytes,
		MessageHits: c.hits.Load(), MessageMisses: c.misses.Load(), MessageEvictions: c.evictions.Load()}
}
