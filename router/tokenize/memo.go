package tokenize

import "sync/atomic"

// Reuse relates a result of [PrefixCache.EncodeKeyedReuse] to the cached result it
// repeats the leading ids of, so that a caller who derives values from the ids (the
// router's chained block hashes) derives only those of the new ids: a Memo on each
// cached result holds what the caller derived from it.
type Reuse struct {
	// Bytes is how many bytes of the text were reused rather than encoded.
	Bytes int
	// From is the memo of the earlier result whose first IDs ids are this result's
	// first IDs ids; nil when none.
	From *Memo
	IDs  int
	// Self is this result's memo; nil when the result is not cached.
	Self *Memo
}

// Memo is a slot on a cached result where its caller keeps values derived from the
// result's ids, under a tag saying how they were derived (blockhash: the chain's seed
// and the block size). It holds at most one value per 8 ids of its result (the cache
// accounts for that much): a longer one is not kept. A Memo is safe for concurrent use;
// the values stored must not be modified afterwards.
type Memo struct {
	p   atomic.Pointer[memoVal]
	max int
}

type memoVal struct {
	tag [2]uint64
	v   []uint64
}

// memoPerIDs is the ids per value a Memo can hold.
const memoPerIDs = 8

// Load returns the values stored under tag, nil when there are none.
func (m *Memo) Load(tag [2]uint64) []uint64 {
	if m == nil {
		return nil
	}
	if mv := m.p.Load(); mv != nil && mv.tag == tag {
		return mv.v
	}
	return nil
}

// Store keeps v under tag, replacing what the memo held, unless v is longer than the
// memo holds.
func (m *Memo) Store(tag [2]uint64, v []uint64) {
	if m == nil || len(v) > m.max {
		return
	}
	m.p.Store(&memoVal{tag: tag, v: v})
}
