package indexer

import (
	"context"
	"io"
	"time"

	"github.com/kvroute/kvroute/proto"
)

// Backend is what the router, the event feeds, the replica sync and the admin API call
// on the prefix index. *Index (in process, the default) implements it, and so does
// valkeyindex.Index (index.backend: valkey), which keeps an *Index for the events it
// ingests and answers Match from an index shared with other processes. The methods have
// the contracts documented on *Index.
type Backend interface {
	Apply(w proto.WorkerKey, model string, b *proto.Batch)
	Match(hashes []proto.BlockHash, dst []WorkerMatch) []WorkerMatch
	Predict(w proto.WorkerKey, hashes []proto.BlockHash, ttl time.Duration)
	Reserve(id string, blocks int)
	ClearWorker(w proto.WorkerKey)
	ClearEvents(w proto.WorkerKey)
	RemoveWorker(w proto.WorkerKey)
	Stats() Stats
	Dump(w io.Writer) error
	Restore(r io.Reader) error
	Run(ctx context.Context, interval time.Duration)
}

// FlagPredicted is the flag bit of a predicted entry in the flags given to a [Mirror];
// the tier flags are 1<<[Tier].
const FlagPredicted = flagPredicted

// TierFlags masks the tier bits of a [Mirror]'s flags.
const TierFlags = flagTierMask

// Mirror receives every change of a (worker, block) entry, for a copy of the index kept
// elsewhere (package valkeyindex). Record is called with the index's write lock held, in
// the order of the changes: it must be quick, must not block and must not call the
// Index. old and flags are the entry's flags before and after (0: not held; tier bits
// and [FlagPredicted]); old == flags when a prediction is refreshed. predExp is the
// prediction's expiry (unix ns) when flags has FlagPredicted, else 0.
type Mirror interface {
	Record(w proto.WorkerKey, own proto.BlockHash, old, flags uint8, predExp int64)
}

// mirror tells Options.Mirror about a change of ws's flags on own. mu must be held for
// writing.
func (ix *Index) mirror(ws *workerState, own proto.BlockHash, old, nf uint8) {
	if ix.opts.Mirror == nil {
		return
	}
	var exp int64
	if nf&flagPredicted != 0 {
		exp, _ = ws.pred.get(own)
	}
	ix.opts.Mirror.Record(ws.key, own, old, nf, exp)
}

// MatchMasks returns the flags that make a block count as held for Match (count) and as
// confirmed-held (conf), for a Match computed elsewhere from mirrored flags.
func (ix *Index) MatchMasks() (count, conf uint8) { return ix.countMask, ix.confMask }

// BlockWeight is the weight [WorkerMatch.Score] gives a block held with flags (already
// masked by the count mask of [Index.MatchMasks]).
func (ix *Index) BlockWeight(flags uint8) float64 { return ix.blockWeight(flags) }

// Entry is one (worker, block) entry of the index, as [Index.AppendEntries] lists it.
type Entry struct {
	Own     proto.BlockHash
	Flags   uint8 // tier bits and FlagPredicted
	PredExp int64 // unix ns, when Flags has FlagPredicted
}

// AppendEntries appends every entry of worker w (its blocks on every tier and its live
// predictions; a block held under several engine hashes may come more than once) to dst
// and returns it: what a [Mirror] needs to rewrite the worker's part of its copy. It
// holds the read lock for a time proportional to the worker's entries.
func (ix *Index) AppendEntries(w proto.WorkerKey, dst []Entry) []Entry {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	ws := ix.byKey[w]
	if ws == nil || ws.removed() {
		return dst
	}
	flagsOf := func(own proto.BlockHash) uint8 {
		val, _, ok := ix.nodes.Get(uint64(own))
		if !ok {
			return 0
		}
		return ix.sets.flagsOf(setID(val), ws.wid)
	}
	for i := range ws.eng.slots {
		s := &ws.eng.slots[i]
		if s.tag == 0 {
			continue
		}
		// Predicted blocks are listed below.
		if f := flagsOf(s.own); f != 0 && f&flagPredicted == 0 {
			dst = append(dst, Entry{Own: s.own, Flags: f})
		}
	}
	for own, exp := range ws.pred.all() {
		if f := flagsOf(own); f != 0 {
			dst = append(dst, Entry{Own: own, Flags: f, PredExp: exp})
		}
	}
	return dst
}

var _ Backend = (*Index)(nil)
