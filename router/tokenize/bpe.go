package tokenize

import (
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

// bpe is the BPE model of tokenizer.json, as the Rust tokenizers crate runs it
// (models/bpe/model.rs and word.rs): a word starts as one symbol per character
// (per byte for byte-level vocabularies), unknown characters become <0xXX> byte
// tokens when byte_fallback is set or the unknown token otherwise, and then the
// lowest-ranked adjacent pair is merged, leftmost first, until no pair has a merge.
type bpe struct {
	// vocab maps token text to id. For byte-level vocabularies the keys are the raw
	// bytes, not the GPT-2 byte-to-unicode mapped form of the file.
	vocab  map[string]uint32
	merges *mergeTable

	byteLevel bool
	byteIDs   [256]uint32
	byteOK    [256]bool

	byteFallback bool
	fallbackIDs  [256]uint32
	fallbackOK   [256]bool

	unk     uint32
	hasUnk  bool
	fuseUnk bool

	ignoreMerges bool
	prefix       string // continuing_subword_prefix, "" when none
	suffix       string // end_of_word_suffix, "" when none

	// spChunks is set for metaspace vocabularies in which pieces can be split
	// before a "▁" (see chunkEnd); noChunkAfter holds the characters x for which
	// some token contains x followed by "▁", where splitting is not safe.
	spChunks     bool
	noChunkAfter map[rune]bool

	cache wordCache
}

// mergeTo is the result of merging one pair: its rank (lower merges first) and the
// id of the merged token.
type mergeTo struct {
	rank uint32
	id   uint32
}

func pairKey(a, b uint32) uint64 { return uint64(a)<<32 | uint64(b) }

func newBPE(m modelJSON, byteLevel bool) (*bpe, error) {
	if m.Type != "" && m.Type != "BPE" {
		return nil, fmt.Errorf("unsupported model type %q", m.Type)
	}
	if m.Dropout != nil && *m.Dropout > 0 {
		return nil, fmt.Errorf("bpe dropout %v is not deterministic", *m.Dropout)
	}
	b := &bpe{
		vocab:        map[string]uint32{},
		merges:       newMergeTable(len(m.Merges)),
		byteLevel:    byteLevel,
		byteFallback: m.ByteFallback,
		fuseUnk:      m.FuseUnk,
		ignoreMerges: m.IgnoreMerges,
	}
	if m.ContinuingSubwordPrefix != nil {
		b.prefix = *m.ContinuingSubwordPrefix
	}
	if m.EndOfWordSuffix != nil {
		b.suffix = *m.EndOfWordSuffix
	}
	key := func(s string) (string, bool) {
		if !byteLevel {
			return s, true
		}
		return unmapBytes(s)
	}
	if byteLevel {
		b.vocab = make(map[string]uint32, len(m.Vocab))
		for s, id := range m.Vocab {
			k, ok := key(s)
			if !ok {
				continue // not a byte-level string; reachable only as an added token
			}
			b.vocab[k] = id
		}
	} else {
		b.vocab = m.Vocab // shared with Tokenizer.tokenIDs, read-only after Parse
	}
	if m.UnkToken != nil {
		k, _ := key(*m.UnkToken)
		if id, ok := b.vocab[k]; ok {
			b.unk, b.hasUnk = id, true
		}
	}
	for i := 0; i < 256; i++ {
		b.byteIDs[i], b.byteOK[i] = b.vocab[string([]byte{byte(i)})]
		b.fallbackIDs[i], b.fallbackOK[i] = b.vocab[fmt.Sprintf("<0x%02X>", i)]
	}
	b.initChunks()
	for rank, mg := range m.Merges {
		l, okl := key(mg.Left)
		r, okr := key(mg.Right)
		if !okl || !okr {
			return nil, fmt.Errorf("merge %d %q %q: not byte-level text", rank, mg.Left, mg.Right)
		}
		lid, ok := b.vocab[l]
		if !ok {
			return nil, fmt.Errorf("merge %d: %q not in vocab", rank, mg.Left)
		}
		rid, ok := b.vocab[r]
		if !ok {
			return nil, fmt.Errorf("merge %d: %q not in vocab", rank, mg.Right)
		}
		merged := l + strings.TrimPrefix(r, b.prefix)
		nid, ok := b.vocab[merged]
		if !ok {
			return nil, fmt.Errorf("merge %d: %q not in vocab", rank, mg.Left+mg.Right)
		}
		if lid >= 1<<24 || rid >= 1<<24 {
			return nil, fmt.Errorf("merge %d: token id too large", rank)
		}
		b.merges.put(pairKey(lid, rid), mergeTo{rank: uint32(rank), id: nid})
	}
	return b, nil
}

// metaspace is SentencePiece's space marker, U+2581.
const metaspace = "\u2581"

// initChunks decides whether words may be cut before "▁". A BPE merge can only
// produce a vocabulary token, so no merge spans the cut between a character x and
// a following "▁" if no token contains x"▁"; then the merges on either side never
// interact and the word's ids are the concatenation of its chunks' ids. "▁" must
// itself be a token so that unknown-character runs (fuse_unk) also stop there.
// SentencePiece vocabularies have no pre-tokenizer, so without this a whole
// segment is one word: uncacheable and merged in one heap.
func (b *bpe) initChunks() {
	if b.byteLevel || b.ignoreMerges || b.prefix != "" || b.suffix != "" {
		return
	}
	if _, ok := b.vocab[metaspace]; !ok {
		return
	}
	b.noChunkAfter = map[rune]bool{}
	for tok := range b.vocab {
		prev := rune(-1)
		for _, r := range tok {
			if r == '\u2581' && prev >= 0 && prev != '\u2581' {
				b.noChunkAfter[prev] = true
			}
			prev = r
		}
	}
	b.spChunks = true
}

// chunkEnd returns the end of the chunk of w starting at i: the next "▁" that
// follows a character allowed before a cut, or len(w).
func (b *bpe) chunkEnd(w string, i int) int {
	prev := rune(-1)
	for j := i; j < len(w); {
		r, n := utf8.DecodeRuneInString(w[j:])
		if r == '\u2581' && j > i && prev != '\u2581' && !b.noChunkAfter[prev] {
			return j
		}
		prev = r
		j += n
	}
	return len(w)
}

// encodeWord appends the ids of one pre-token to dst.
func (b *bpe) encodeWord(dst []uint32, w string) []uint32 {
	if w == "" {
		return dst
	}
	if b.spChunks && len(w) > cacheMaxWordSize/2 {
		for i := 0; i < len(w); {
			e := b.chunkEnd(w, i)
			dst = b.encodeChunk(dst, w[i:e])
			i = e
		}
		return dst
	}
	return b.encodeChunk(dst, w)
}

// encodeChunk is encodeWord without chunking.
func (b *bpe) encodeChunk(dst []uint32, w string) []uint32 {
	if ids, ok := b.cache.get(w); ok {
		return append(dst, ids...)
	}
	if b.ignoreMerges {
		if id, ok := b.vocab[w]; ok {
			return append(dst, id)
		}
	}
	start := len(dst)
	dst = b.merge(dst, w)
	b.cache.put(w, dst[start:])
	return dst
}

// symbol is one node of the doubly linked word being merged.
type symbol struct {
	id         uint32
	prev, next int32
	alive      bool
}

// candidate is a possible merge of symbols[pos] with its successor.
type candidate struct {
	rank, id uint32
	pos      int32
}

func (c candidate) less(d candidate) bool {
	return c.rank < d.rank || (c.rank == d.rank && c.pos < d.pos)
}

// wordBuf holds the scratch slices of one merge; pooled to keep encode allocation-light.
type wordBuf struct {
	syms []symbol
	heap []candidate
}

var wordPool = sync.Pool{New: func() any { return new(wordBuf) }}

// initial appends the starting symbols of w.
func (b *bpe) initial(syms []symbol, w string) []symbol {
	add := func(id uint32) {
		syms = append(syms, symbol{id: id, prev: int32(len(syms)) - 1, next: int32(len(syms)) + 1, alive: true})
	}
	if b.byteLevel && b.prefix == "" && b.suffix == "" {
		for i := 0; i < len(w); i++ {
			if b.byteOK[w[i]] {
				add(b.byteIDs[w[i]])
			} else if b.hasUnk {
				add(b.unk)
			}
		}
		return syms
	}
	var unkPending bool
	for i := 0; i < len(w); {
		n := 1
		if !b.byteLevel {
			_, n = utf8.DecodeRuneInString(w[i:])
		}
		s := w[i : i+n]
		if i > 0 && b.prefix != "" {
			s = b.prefix + s
		}
		if i+n == len(w) && b.suffix != "" {
			s += b.suffix
		}
		i += n
		if id, ok := b.vocab[s]; ok {
			if unkPending {
				add(b.unk)
				unkPending = false
			}
			add(id)
			continue
		}
		if b.byteFallback {
			all := true
			for k := 0; k < len(s); k++ {
				all = all && b.fallbackOK[s[k]]
			}
			if all {
				if unkPending {
					add(b.unk)
					unkPending = false
				}
				for k := 0; k < len(s); k++ {
					add(b.fallbackIDs[s[k]])
				}
				continue
			}
		}
		if b.hasUnk {
			if unkPending && !b.fuseUnk {
				add(b.unk)
			}
			unkPending = true
		}
	}
	if unkPending {
		add(b.unk)
	}
	return syms
}

// merge runs the BPE merges over w and appends the resulting ids to dst.
func (b *bpe) merge(dst []uint32, w string) []uint32 {
	buf := wordPool.Get().(*wordBuf)
	defer wordPool.Put(buf)
	syms := b.initial(buf.syms[:0], w)
	if len(syms) == 0 {
		buf.syms = syms
		return dst
	}
	syms[len(syms)-1].next = -1
	h := buf.heap[:0]
	for i := 0; i+1 < len(syms); i++ {
		if m, ok := b.merges.get(pairKey(syms[i].id, syms[i+1].id)); ok {
			h = heapPush(h, candidate{rank: m.rank, id: m.id, pos: int32(i)})
		}
	}
	for len(h) > 0 {
		var c candidate
		c, h = heapPop(h)
		s := &syms[c.pos]
		if !s.alive || s.next < 0 {
			continue
		}
		right := &syms[s.next]
		// The pair may have changed since c was queued: check it still merges to c.id.
		if m, ok := b.merges.get(pairKey(s.id, right.id)); !ok || m.id != c.id || m.rank != c.rank {
			continue
		}
		s.id = c.id
		right.alive = false
		s.next = right.next
		if s.next >= 0 {
			syms[s.next].prev = c.pos
		}
		if s.prev >= 0 {
			p := syms[s.prev]
			if m, ok := b.merges.get(pairKey(p.id, s.id)); ok {
				h = heapPush(h, candidate{rank: m.rank, id: m.id, pos: s.prev})
			}
		}
		if s.next >= 0 {
			if m, ok := b.merges.get(pairKey(s.id, syms[s.next].id)); ok {
				h = heapPush(h, candidate{rank: m.rank, id: m.id, pos: c.pos})
			}
		}
	}
	for i := int32(0); i >= 0; i = syms[i].next {
		dst = append(dst, syms[i].id)
	}
	buf.syms, buf.heap = syms, h
	return dst
}

func heapPush(h []candidate, c candidate) []candidate {
	h = append(h, c)
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].less(h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
	return h
}

func heapPop(h []candidate) (candidate, []candidate) {
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && h[l].less(h[m]) {
			m = l
		}
		if r < n && h[r].less(h[m]) {
			m = r
		}
		if m == i {
			break
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
	return top, h
}

// wordCache memoizes the ids of short pre-tokens. It is sharded to keep lock
// contention low; a full shard is dropped whole, which bounds memory without LRU
// bookkeeping.
type wordCache struct {
	shards   [cacheShards]cacheShard
	disabled bool // set only by benchmarks measuring cold BPE, before any use
}

const (
	cacheShards      = 16
	cacheShardMax    = 8192 // entries per shard
	cacheMaxWordSize = 64   // bytes; longer pre-tokens are rare and not cached
)

type cacheShard struct {
	// mu guards m.
	mu sync.RWMutex
	m  map[string][]uint32
}

func shardOf(w string) int {
	// FNV-1a over at most 16 bytes: cheap and spreads short words well.
	h := uint32(2166136261)
	for i := 0; i < len(w) && i < 16; i++ {
		h = (h ^ uint32(w[i])) * 16777619
	}
	return int(h % cacheShards)
}

func (c *wordCache) get(w string) ([]uint32, bool) {
	if len(w) > cacheMaxWordSize || c.disabled {
		return nil, false
	}
	s := &c.shards[shardOf(w)]
	s.mu.RLock()
	ids, ok := s.m[w]
	s.mu.RUnlock()
	return ids, ok
}

func (c *wordCache) put(w string, ids []uint32) {
	if len(w) > cacheMaxWordSize || c.disabled {
		return
	}
	s := &c.shards[shardOf(w)]
	cp := append([]uint32(nil), ids...)
	s.mu.Lock()
	if s.m == nil || len(s.m) >= cacheShardMax {
		s.m = make(map[string][]uint32, 256)
	}
	// Clone the key: w is a substring of the caller's input.
	s.m[strings.Clone(w)] = cp
	s.mu.Unlock()
}

// byteToRune is GPT-2's bytes_to_unicode: printable bytes map to themselves, the
// rest to U+0100 upwards in byte order.
var byteToRune [256]rune

// runeToByte inverts byteToRune; runes outside it map to -1.
var runeToByte = map[rune]int{}

func init() {
	n := 0
	for b := 0; b < 256; b++ {
		if (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF) {
			byteToRune[b] = rune(b)
		} else {
			byteToRune[b] = rune(256 + n)
			n++
		}
		runeToByte[byteToRune[b]] = b
	}
}

// unmapBytes turns a byte-level token text back into its raw bytes.
func unmapBytes(s string) (string, bool) {
	out := make([]byte, 0, len(s))
	for _, r := range s {
		b, ok := runeToByte[r]
		if !ok {
			return "", false
		}
		out = append(out, byte(b))
	}
	return string(out), true
}
