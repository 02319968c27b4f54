package tokenize

import (
	"encoding/binary"
	"sync"

	"github.com/cespare/xxhash/v2"
)

// PrefixCache encodes texts that extend earlier texts, such as the successive turns
// of a chat conversation, re-encoding only what follows the longest reusable
// prefix. Its results are identical to Tokenizer.Encode. It is safe for concurrent
// use.
//
// Correctness: BPE merges across any boundary inside a pre-token and
// pre-tokenizers look ahead (`\s+(?!\S)`), so an arbitrary shared prefix cannot be
// reused. Added tokens can: they are split out of the raw text before
// normalization, pre-tokenization and BPE, and each plain segment between them is
// encoded on its own. The split scans left to right and, after each added token
// ending at byte b, everything emitted so far depends only on the bytes it has read,
// text[:r] with r >= b (the token match reads one byte past the longest candidate;
// rstrip reads the whitespace it absorbs). So if a cached text T and a new text T'
// agree on [0, r) where r is computed on T', the ids of T' up to b equal the ids of
// T up to b, and the rest is T'[b:] encoded on its own (offset b > 0, so Metaspace's
// prepend_scheme "first" sees the same thing). Chat templates put special tokens
// (<|im_start|>, <|eot_id|>, ...) at every turn boundary, so a new turn reuses all
// turns before it. Tokenizers with single_word added tokens, which look at the
// character before a match, bypass the cache.
//
// The ids its methods return may be held by the cache and returned again as part of
// later results: callers read them and must not modify them.
type PrefixCache struct {
	tok      *Tokenizer
	maxBytes int

	// mu guards everything below.
	mu      sync.Mutex
	byHash  map[uint64]prefixRef    // hash of text[:b] at each checkpoint b
	byKey   map[uint64]*prefixEntry // caller's keys (EncodeKeyed)
	entries []*prefixEntry          // oldest first
	bytes   int
}

type prefixEntry struct {
	text string
	ids  IDs
	cps  []cpRecord
	cost int
	// base is the number of post-processor ids (BOS) its result had before ids.
	base int
	// memo is the caller's (Reuse).
	memo Memo
	// key is the caller's key of an EncodeKeyed entry; hasKey says it is set.
	key    uint64
	hasKey bool
	// chain is the chain the entry's checkpoints are filed under, and evicted is set
	// once the entry has left the cache; both guarded by the cache's mu.
	chain   *prefixChain
	evicted bool
}

// prefixChain is the entries of one conversation stored turn after turn, each the
// extension of the one before (a turn's text extends the previous turn's, up to its
// last checkpoints). byHash files each checkpoint of a chain once, when the entry that
// adds it is stored, and a lookup finds it on the chain's newest entry e, which has
// the checkpoints of every entry before it at the same positions. Filing every
// checkpoint of every entry was a map write per checkpoint, two or three per chat
// message, at every turn, and as many deletes at eviction (store was half of
// EncodeKeyed in a CPU profile of BenchmarkDecision at turns 30 to 40, 2026-12-07).
// A lookup still checks the entry's text, so a reference that went stale is a miss,
// never a wrong result. e is nil once the chain's newest entry is evicted.
type prefixChain struct{ e *prefixEntry }

// cpRecord is a checkpoint of a cached text: an added-token end, the bytes the
// split had read when it emitted that token, and the number of ids of the text
// before it.
type cpRecord struct {
	end, read, nIDs int
	hash            uint64
}

type prefixRef struct {
	c *prefixChain
	i int // index into c.e.cps
}

// NewPrefixCache returns a cache over tok holding at most about maxBytes of text
// and ids.
func NewPrefixCache(tok *Tokenizer, maxBytes int) *PrefixCache {
	return &PrefixCache{tok: tok, maxBytes: maxBytes, byHash: map[uint64]prefixRef{}, byKey: map[uint64]*prefixEntry{}}
}

// checkpoint is an added-token end in a text being encoded, the bytes read to
// decide everything before it, and the index of the token's segment.
type checkpoint struct {
	seg, end, read int
	hash           uint64
}

// Encode returns tok.Encode(text, addSpecial), reusing the ids of the longest
// prefix shared with a cached text at an added-token boundary.
func (c *PrefixCache) Encode(text string, addSpecial bool) []uint32 {
	ids, _ := c.EncodeReuse(text, addSpecial)
	return ids
}

// EncodeReuse is Encode that also reports how many bytes of text were reused from
// the cache rather than encoded.
func (c *PrefixCache) EncodeReuse(text string, addSpecial bool) ([]uint32, int) {
	ids, r := c.encodeReuse(text, addSpecial, 0, false)
	return ids.Slice(), r.Bytes
}

// encodeReuse is EncodeReuse that also files the result under key when hasKey is
// set (see EncodeKeyed).
func (c *PrefixCache) encodeReuse(text string, addSpecial bool, key uint64, hasKey bool) (IDs, Reuse) {
	t := c.tok
	if !t.prefixSafe {
		return MakeIDs(t.Encode(text, addSpecial)), Reuse{}
	}
	buf := encodePool.Get().(*encodeBuf)
	defer buf.release()
	cps := checkpointsOf(t, buf, text, 0, 0, true)

	var head IDs // the ids reused
	recs := make([]cpRecord, 0, len(cps))
	start, reused := 0, 0 // first segment to encode; bytes reused
	var from *prefixEntry // the entry whose checkpoints recs starts with
	c.mu.Lock()
	for i := len(cps) - 1; i >= 0; i-- {
		ref, ok := c.byHash[cps[i].hash]
		if !ok {
			continue
		}
		e := ref.c.e
		if e == nil || ref.i >= len(e.cps) {
			continue
		}
		rec := e.cps[ref.i]
		r := cps[i].read
		if rec.hash != cps[i].hash || rec.end != cps[i].end || len(e.text) < r || e.text[:r] != text[:r] {
			continue
		}
		head = e.ids.head(rec.nIDs)
		// The cached text splits identically up to here, so its earlier
		// checkpoints are this text's checkpoints 0..i.
		recs = append(recs, e.cps[:ref.i+1]...)
		start, reused, from = cps[i].seg+1, cps[i].end, e
		break
	}
	c.mu.Unlock()

	ids, r := c.encodeRest(text, addSpecial, buf, start, cps, len(recs), head, len(text)-reused, recs, from, key, hasKey)
	r.Bytes = reused
	return ids, r
}

// checkpointsOf splits text[from:] at t's added tokens into buf.segs (atStart: from is
// where the text starts) and returns a checkpoint after each added token: its end and
// read bytes in text, its segment in buf.segs and the hash of text up to its end
// (cpHash). from is 0 or a checkpoint of text whose hash is fromHash.
func checkpointsOf(t *Tokenizer, buf *encodeBuf, text string, from int, fromHash uint64, atStart bool) []checkpoint {
	var cps []checkpoint
	buf.segs = t.added.split(buf.segs[:0], text[from:], atStart, func(end, read int) {
		cps = append(cps, checkpoint{end: from + end, read: from + read})
	})
	// The callback runs once per added-token segment, in order.
	k := 0
	for si, sg := range buf.segs {
		if sg.tok >= 0 {
			cps[k].seg = si
			k++
		}
	}
	h, prev := fromHash, from
	for i := range cps {
		h = cpHash(h, text[prev:cps[i].end])
		prev = cps[i].end
		cps[i].hash = h
	}
	return cps
}

// cpHash chains a checkpoint's hash: the hash of the text up to the checkpoint before it
// (0 for the text's start) and the text between the two. The hash of a checkpoint so
// stands for all the text before it, and a text that resumes after a shared checkpoint
// hashes only what follows it: hashing the whole prefix again was 4% of the routing
// decision at turns 30 to 40 of BenchmarkDecision (2026-12-07). Lookups compare the
// text itself, so a collision costs a miss, never a wrong result.
func cpHash(prev uint64, seg string) uint64 {
	var d xxhash.Digest
	d.Reset()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], prev)
	_, _ = d.Write(b[:])
	_, _ = d.WriteString(seg)
	return d.Sum64()
}

// encodeRest encodes buf.segs from segment start on (rest bytes of text) after head, the
// text's first ids, reused (recs are their checkpoints so far, the first ones from's when
// from is not nil), records the checkpoints met on the way (cps from index next on,
// whose seg counts from buf.segs[0]), adds the post-processor's ids when addSpecial,
// stores the result and returns it and how it relates to from's (Reuse, without
// Bytes). The result shares head's parts (IDs) unless they are too many; then they are
// copied with the new ids.
func (c *PrefixCache) encodeRest(text string, addSpecial bool, buf *encodeBuf, start int, cps []checkpoint, next int,
	head IDs, rest int, recs []cpRecord, from *prefixEntry, key uint64, hasKey bool) (IDs, Reuse) {
	shared := len(recs)
	t := c.tok
	var pre []uint32
	if addSpecial {
		pre = t.prefix
	}
	base := len(pre)
	// out holds the ids after head, or all of them, pre first, when there is no head
	// or it is copied.
	copyHead := head.n == 0 || len(head.parts) >= maxIDParts
	size := rest/3 + len(t.suffix) + 8
	if copyHead {
		size += len(pre) + head.n
	}
	out := make([]uint32, 0, size)
	adj := head.n // the text's ids (without pre) up to out[:n] are n+adj
	if copyHead {
		out = append(out, pre...)
		out = head.AppendTo(out)
		adj, head = -base, IDs{}
	}
	out = t.encodeSegs(out, buf, buf.segs[start:], func(seg, n int) {
		if next < len(cps) && cps[next].seg == start+seg {
			recs = append(recs, cpRecord{end: cps[next].end, read: cps[next].read, nIDs: n + adj, hash: cps[next].hash})
			next++
		}
	})
	end := len(out)
	if addSpecial {
		out = append(out, t.suffix...)
	}
	var r Reuse
	if from != nil && shared > 0 && from.base == base {
		r.From, r.IDs = &from.memo, base+recs[shared-1].nIDs
	}
	var ids, res IDs // the entry's (the text's ids) and the result
	if head.n == 0 {
		ids, res = MakeIDs(out[base:end]), MakeIDs(out)
	} else {
		ids, res = join(nil, head, out[:end]), join(pre, head, out)
	}
	if e := c.store(text, ids, base, res.n, recs, from, shared, key, hasKey); e != nil {
		r.Self = &e.memo
	}
	return res, r
}

// store records text and its ids (without post-processor tokens; the result had base
// ids before them and total in all) under every checkpoint, and returns the entry, nil
// when it keeps nothing. When text extends from, sharing its first shared checkpoints, and from
// is its chain's newest entry, the entry joins from's chain (prefixChain): only the
// checkpoints after the shared ones are filed, and from's checkpoints after them,
// which the new entry does not have, are unfiled. Otherwise it starts a chain.
func (c *PrefixCache) store(text string, ids IDs, base, total int, recs []cpRecord, from *prefixEntry, shared int, key uint64, hasKey bool) *prefixEntry {
	if len(recs) == 0 || c.maxBytes <= 0 {
		return nil
	}
	// The entry keeps the caller's ids, not a copy (a copy was 8 to 20% of EncodeKeyed at
	// turns 30 to 40 of BenchmarkDecision, 2026-12-07): the returned ids are read-only
	// (PrefixCache's doc), and the entry reads no further than its checkpoints' counts.
	e := &prefixEntry{text: text, ids: ids, cps: recs, key: key, hasKey: hasKey, base: base}
	// Each entry counts all its ids, those it shares with earlier entries too: the sum
	// bounds the memory even when the earlier entries are gone.
	e.memo.max = total/memoPerIDs + 1
	e.cost = len(text) + 4*ids.n + 16*len(ids.parts) + 48*len(recs) + 8*e.memo.max + 64
	if e.cost > c.maxBytes {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if from != nil && !from.evicted && from.chain.e == from && shared > 0 {
		ch := from.chain
		for _, r := range from.cps[shared:] {
			if ref, ok := c.byHash[r.hash]; ok && ref.c == ch && ref.i >= shared {
				delete(c.byHash, r.hash)
			}
		}
		e.chain, ch.e = ch, e
	} else {
		e.chain, shared = &prefixChain{e: e}, 0
	}
	for i := shared; i < len(recs); i++ {
		c.byHash[recs[i].hash] = prefixRef{c: e.chain, i: i}
	}
	if hasKey {
		c.byKey[key] = e
	}
	c.entries = append(c.entries, e)
	c.bytes += e.cost
	for c.bytes > c.maxBytes && len(c.entries) > 0 {
		c.evictOldest()
	}
	return e
}

// evictOldest drops the oldest entry; the caller holds mu.
func (c *PrefixCache) evictOldest() {
	old := c.entries[0]
	c.entries[0] = nil
	c.entries = c.entries[1:]
	c.bytes -= old.cost
	old.evicted = true
	if ch := old.chain; ch.e == old { // the chain's newest: the chain ends
		for _, r := range old.cps {
			if ref, ok := c.byHash[r.hash]; ok && ref.c == ch {
				delete(c.byHash, r.hash)
			}
		}
		ch.e = nil
	}
	if old.hasKey && c.byKey[old.key] == old {
		delete(c.byKey, old.key)
	}
}
