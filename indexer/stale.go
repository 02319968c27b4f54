package indexer

import "github.com/kvroute/kvroute/proto"

// This file is the staleness downgrade (issue #19): a worker whose KV-event feed lags
// or has stayed silent while it serves requests (upstream/kvevents.Staleness decides)
// may have evicted blocks its entries still show, and stored blocks they do not show
// yet. Until its feed catches up, Match counts the blocks its events confirmed as
// predictions: they still count as held (unless Options.IgnorePredicted) but not as
// Confirmed, and weigh Options.PredictedWeight in Score. Nothing in the tables changes,
// so restoring the worker is as cheap as marking it, and a feed that catches up finds
// its entries intact.
//
// Cost on the hot path: with no stale worker, one length check of an empty map per
// member of the request's first holder set; with some, a map lookup there and a
// boolean test per open worker at each holder-set change.

// SetStale marks worker w's feed stale (true) or caught up (false). It may be called for
// a worker the index does not know yet (the mark applies once it has entries) and
// survives ClearWorker; RemoveWorker does not reset it either, the caller owns the mark.
// Safe for concurrent use.
func (ix *Index) SetStale(w proto.WorkerKey, stale bool) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if stale {
		if ix.stale == nil {
			ix.stale = map[proto.WorkerKey]struct{}{}
		}
		ix.stale[w] = struct{}{}
		return
	}
	delete(ix.stale, w)
}

// Stale reports whether worker w is marked stale. Safe for concurrent use.
func (ix *Index) Stale(w proto.WorkerKey) bool {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	_, ok := ix.stale[w]
	return ok
}

// staleWID reports whether the worker with index id wid is marked stale. mu must be held
// (read or write).
func (ix *Index) staleWID(wid uint32) bool {
	_, ok := ix.stale[ix.keys[wid]]
	return ok
}

// demote turns the counted tier flags of f into the predicted flag: what a stale
// worker's events confirmed counts as a prediction.
func (ix *Index) demote(f uint8) uint8 {
	if f&ix.confMask != 0 {
		f = f&^ix.confMask | flagPredicted
	}
	return f
}
