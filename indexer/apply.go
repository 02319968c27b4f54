package indexer

import (
	"time"

	"github.com/kvroute/kvroute/proto"
)

// chunkOps is how many block operations Apply performs before it lets the Match calls
// waiting for the write lock in (wlock.handoff), so that a large batch or a worker clear
// never blocks Match for long.
const chunkOps = 4

// Apply applies one batch of a worker's KV events, in order. model is the served model
// name, the first part of the hash seed of chains without a parent. The batch's
// data-parallel rank, when sent (>= 0), overrides w.DPRank: the event says which rank's
// cache changed.
//
// BlockStored hashes the carried token ids with kvroute's chained hash starting from the
// parent's own hash (resolved through the worker's engine-hash map) or, without a parent,
// from proto.Seed(model, lora, ""). A stored chain whose parent is unknown is dropped, as
// Dynamo does: its hashes cannot be computed. A store without token ids (CPU offload)
// resolves each engine hash through the map and is dropped for unknown ones. Stores and
// removes are reference counted per (worker, engine hash, tier), so vLLM's duplicate
// events are harmless. BlockRemoved leaves the children of the removed block indexed;
// Match stops at the gap. AllBlocksCleared clears the worker like ClearWorker. Dropped
// blocks are counted by reason (Stats.Dropped, metric kvroute_indexer_dropped_blocks_total).
func (ix *Index) Apply(w proto.WorkerKey, model string, b *proto.Batch) {
	if b == nil {
		return
	}
	if b.DPRank >= 0 {
		w.DPRank = b.DPRank
	}
	start := time.Now()
	now, tick := ix.nowTick()
	ix.mu.Lock()
	ws := ix.worker(w, true)
	ops := 0
	for i := range b.Events {
		ev := &b.Events[i]
		kind := ev.Kind
		if kind > proto.AllBlocksCleared {
			kind = 0
		}
		ix.c.events[kind].Add(1)
		switch ev.Kind {
		case proto.BlockStored:
			ix.applyStored(ws, model, ev, tick, &ops)
		case proto.BlockRemoved:
			ix.applyRemoved(ws, ev, tick, &ops)
		case proto.AllBlocksCleared:
			ix.mu.Unlock()
			ix.clearMu.Lock()
			ix.mu.Lock()
			ws = ix.worker(w, true)
			ix.c.clears.Add(1)
			ix.clearLocked(ws, false)
			ix.clearMu.Unlock()
			_, tick = ix.nowTick()
			ops = 0
		default:
			ix.c.dropped[DropUnknownKind].Add(uint64(max(1, len(ev.BlockHashes))))
		}
		if ws.removed() {
			break
		}
	}
	ix.maintain(now, tick)
	ix.mu.Unlock()
	if ix.metrics != nil {
		ix.metrics.apply.Observe(time.Since(start).Seconds())
	}
}

func (ws *workerState) removed() bool { return ws.eng == nil }

// yield counts a block operation and, from chunkOps operations since the last handoff
// on, lets a writer or the Match calls waiting for the lock in before the next one
// (wlock.handoff); it reports which. After handedToWriter anything may have changed.
// mu must be held for writing.
func (ix *Index) yield(ops *int) handoffKind {
	*ops++
	if *ops < chunkOps {
		return noHandoff
	}
	k := ix.mu.handoff()
	if k != noHandoff {
		*ops = 0
	}
	return k
}

func (ix *Index) applyStored(ws *workerState, model string, ev *proto.Event, tick uint32, ops *int) {
	n := len(ev.BlockHashes)
	if n == 0 {
		return
	}
	tier := TierOf(ev.Medium)
	if len(ev.TokenIDs) == 0 {
		// Token-less store (CPU offload of blocks stored on GPU before): resolve each
		// engine hash; the parent is not needed.
		stored, missing := 0, 0
		for _, eh := range ev.BlockHashes {
			if ws.removed() {
				break
			}
			fp := engFP(eh)
			e := ws.eng.get(fp)
			if e == nil {
				missing++
				continue
			}
			ix.store(ws, fp, e.own, ix.nodes.Hash(uint64(e.own)), 0, tier, tick)
			stored++
			ix.yield(ops)
		}
		ix.c.stored.Add(uint64(stored))
		ix.c.dropped[DropMissingTokens].Add(uint64(missing))
		return
	}
	// The token count must be a whole number of blocks, of the announced size when one
	// is given (compared by division: n*BlockSize could overflow).
	bs := len(ev.TokenIDs) / n
	if len(ev.TokenIDs)%n != 0 || (ev.BlockSize > 0 && ev.BlockSize != bs) {
		ix.c.dropped[DropBadTokenCount].Add(uint64(n))
		return
	}
	if ix.opts.BlockSize > 0 && bs != ix.opts.BlockSize {
		ix.c.dropped[DropBlockSizeMismatch].Add(uint64(n))
		return
	}
	var parent, prev proto.BlockHash // prev: the previous block's own hash, 0 for a root
	if ev.HasParent {
		e := ws.eng.get(engFP(ev.ParentHash))
		if e == nil {
			ix.c.dropped[DropUnknownParent].Add(uint64(n))
			return
		}
		parent, prev = e.own, e.own
	} else {
		parent = proto.Seed(model, ev.LoRAName, eventSalt(ev))
	}
	// Work in groups of warmGroup blocks: hash the group and collect the home slots of
	// its blocks in the node and engine tables (no loads but shard headers), load those
	// slots in a loop that does nothing else, so that their cache misses overlap, then
	// apply the blocks one by one (see runtable.Table.HomeSlot).
	stored := 0
	var hint uint64
	var own [warmGroup]proto.BlockHash
	var fps, nh [warmGroup]uint64
	var nslot [warmGroup]*uint64
	var eslot [warmGroup]*engEntry
	for g := 0; g < n; g += warmGroup {
		end := min(g+warmGroup, n)
		k := end - g
		for i := range k {
			parent = proto.ChainBlock(parent, ev.TokenIDs[(g+i)*bs:(g+i+1)*bs])
			own[i] = parent
			fps[i] = engFP(ev.BlockHashes[g+i])
			nh[i] = ix.nodes.Hash(uint64(parent))
			nslot[i] = ix.nodes.HomeSlotHashed(nh[i])
			eslot[i] = ws.eng.homeSlot(fps[i])
		}
		for i := range k {
			hint += *nslot[i] + eslot[i].tag
		}
		for i := range k {
			if ws.removed() {
				break
			}
			ix.nodes.SetCapHint(n - g - i) // a new run will likely take the rest
			ix.store(ws, fps[i], own[i], nh[i], prev, tier, tick)
			prev = own[i]
			stored++
			ix.yield(ops)
		}
	}
	if hint == 1 {
		ix.c.stored.Add(0) // keeps the warming loads alive
	}
	ix.c.stored.Add(uint64(stored))
}

// warmGroup is how many blocks of an event Apply hashes and warms at once.
const warmGroup = 32

func (ix *Index) applyRemoved(ws *workerState, ev *proto.Event, tick uint32, ops *int) {
	tier := TierOf(ev.Medium)
	removed, unknown := 0, 0
	// In groups, as for stores: warm the engine slots of the group, then the node slots
	// of the blocks they resolve to, then remove one by one.
	var fps, nh [warmGroup]uint64
	var nown [warmGroup]proto.BlockHash
	var eslot [warmGroup]*engEntry
	var nslot [warmGroup]*uint64
	var hint uint64
	hs := ev.BlockHashes
	for g := 0; g < len(hs); g += warmGroup {
		grp := hs[g:min(g+warmGroup, len(hs))]
		for i, eh := range grp {
			fps[i] = engFP(eh)
			eslot[i] = ws.eng.homeSlot(fps[i])
		}
		for i := range grp {
			hint += eslot[i].tag
		}
		k := 0
		for i := range grp {
			if e := ws.eng.get(fps[i]); e != nil {
				nown[i], nh[i] = e.own, ix.nodes.Hash(uint64(e.own))
				nslot[k] = ix.nodes.HomeSlotHashed(nh[i])
				k++
			} else {
				nown[i] = 0
			}
		}
		for _, p := range nslot[:k] {
			hint += *p
		}
		for i := range grp {
			if ws.removed() {
				break
			}
			if ix.remove(ws, fps[i], nown[i], nh[i], tier, tick) {
				removed++
			} else {
				unknown++
			}
			ix.yield(ops)
		}
	}
	if hint == 1 {
		ix.c.removed.Add(0) // keeps the warming loads alive
	}
	ix.c.removed.Add(uint64(removed))
	ix.c.dropped[DropUnknownBlock].Add(uint64(unknown))
}

// store records one stored block of engine-hash fingerprint fp and own hash own, whose
// node-table hash is h; parent is the own hash of the block before it in its chain, 0
// when unknown (a hint that lets the node table append the block to its parent's run).
// mu must be held for writing.
func (ix *Index) store(ws *workerState, fp uint64, own proto.BlockHash, h uint64, parent proto.BlockHash, tier Tier, tick uint32) {
	if ws.eng.len() >= ix.opts.MaxBlocksPerWorker && ws.eng.get(fp) == nil {
		ix.evictWorkerEntry(ws)
	}
	e, inserted := ws.eng.upsert(fp)
	if inserted {
		e.own = own
	} else if e.own != own {
		// The engine reuses an id for other content: forget the old block first.
		// (releaseTier does not touch ws.eng, so e stays valid.)
		old := *e
		*e = engEntry{tag: fp << 16, own: own}
		for t := Tier(0); t < numTiers; t++ {
			if old.ref(t) > 0 {
				ix.releaseTier(ws, old.own, ix.nodes.Hash(uint64(old.own)), t, tick)
			}
		}
	}
	r := e.ref(tier)
	if r < refMax {
		e.setRef(tier, r+1)
	}
	bit := uint8(1) << tier
	// A real store overrides a prediction; a duplicate store restores a flag that
	// eviction took.
	old := ix.setHolderHashed(ws, own, h, parent, bit, flagPredicted, tick)
	if r == 0 && old&bit != 0 {
		// Another engine hash of this worker already holds (own, tier).
		if ws.extra == nil {
			ws.extra = make(map[ownTier]uint32)
		}
		ws.extra[ownTier{own, tier}]++
	}
}

// remove records one removed block of engine-hash fingerprint fp and reports whether it
// was known. h is the node-table hash of hown, the block's own hash when the caller
// resolved it (0 when not). mu must be held for writing.
func (ix *Index) remove(ws *workerState, fp uint64, hown proto.BlockHash, h uint64, tier Tier, tick uint32) bool {
	i, ok := ws.eng.find(fp)
	if !ok {
		return false
	}
	e := &ws.eng.slots[i]
	if e.ref(tier) == 0 {
		return false
	}
	if e.own != hown {
		h = ix.nodes.Hash(uint64(e.own))
	}
	if r := e.ref(tier); r < refMax {
		e.setRef(tier, r-1)
	}
	own, last, empty := e.own, e.ref(tier) == 0, e.empty()
	if last {
		ix.releaseTier(ws, own, h, tier, tick) // leaves ws.eng alone: i stays valid
	}
	if empty {
		ws.eng.delAt(i)
	}
	return true
}

// releaseTier drops one engine entry's hold of (own, tier); h is own's node-table hash.
// mu must be held for writing.
func (ix *Index) releaseTier(ws *workerState, own proto.BlockHash, h uint64, tier Tier, tick uint32) {
	if ws.extra != nil {
		k := ownTier{own, tier}
		if n := ws.extra[k]; n > 0 {
			if n == 1 {
				delete(ws.extra, k)
			} else {
				ws.extra[k] = n - 1
			}
			return
		}
	}
	ix.setHolderHashed(ws, own, h, 0, 0, uint8(1)<<tier|flagPredicted, tick)
}

// dropEngine forgets engine entry e of ws entirely. mu must be held for writing.
func (ix *Index) dropEngine(ws *workerState, e engEntry, tick uint32) {
	for t := Tier(0); t < numTiers; t++ {
		if e.ref(t) > 0 {
			ix.releaseTier(ws, e.own, ix.nodes.Hash(uint64(e.own)), t, tick)
		}
	}
	ws.eng.del(e.fp())
}

// ClearWorker forgets every block of worker w, confirmed and predicted, keeping its
// identity: call it when the engine restarted (its sequence reset) or after a gap that
// cannot be replayed. The work is done in chunks so Match is never blocked for long.
func (ix *Index) ClearWorker(w proto.WorkerKey) {
	ix.clearMu.Lock()
	defer ix.clearMu.Unlock()
	ix.mu.Lock()
	ws := ix.worker(w, false)
	if ws == nil {
		ix.mu.Unlock()
		return
	}
	ix.c.clears.Add(1)
	ix.clearLocked(ws, false)
	ix.mu.Unlock()
}

// ClearEvents forgets every event-backed block of worker w (all tiers) but keeps its
// predictions: call it when the worker's event feed starts (its first batch), so that what
// the engine cached before the feed is dropped while the routing decisions the router made
// moments earlier still count until an event confirms them or their TTL passes.
// ClearWorker drops both. The work is done in chunks so Match is never blocked for long.
func (ix *Index) ClearEvents(w proto.WorkerKey) {
	ix.clearMu.Lock()
	defer ix.clearMu.Unlock()
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ws := ix.worker(w, false)
	if ws == nil {
		return
	}
	ix.c.clears.Add(1)
	_, tick := ix.nowTick()
	oldEng := ws.eng
	ws.eng = newEngTable(ws.reserved)
	ws.extra = nil
	ops := 0
	// oldEng is unreachable now: iterate it by index across lock releases. Tier flags
	// only: a block that is also predicted keeps its prediction flag.
	for i := range oldEng.slots {
		if s := &oldEng.slots[i]; s.tag != 0 {
			ix.setHolder(ws, s.own, 0, 0, flagTierMask, tick)
			ix.yield(&ops)
		}
	}
}

// clearLocked clears ws in chunks, releasing mu between them; with detach the worker is
// marked removed, which stops any of its operations still in flight. clearMu and mu must
// be held (mu for writing). clearMu keeps clears and removals of workers from
// interleaving, so a wid is never freed while a clear still has flags of it to remove.
func (ix *Index) clearLocked(ws *workerState, detach bool) {
	_, tick := ix.nowTick()
	oldEng, oldPred := ws.eng, ws.pred
	ws.eng = nil
	if !detach {
		ws.eng = newEngTable(ws.reserved)
	}
	ix.predLive -= oldPred.len()
	ws.pred = predMap{}
	ws.tips = nil
	ws.extra = nil
	ops := 0
	// oldEng is unreachable now: iterate it by index across lock releases.
	for i := range oldEng.slots {
		if s := &oldEng.slots[i]; s.tag != 0 {
			ix.setHolder(ws, s.own, 0, 0, 0xff, tick)
			ix.yield(&ops)
		}
	}
	for own := range oldPred.all() { // unreachable too: read, not written
		ix.setHolder(ws, own, 0, 0, 0xff, tick)
		ix.yield(&ops)
	}
}

// RemoveWorker forgets worker w and frees its internal id: call it when the worker left
// the configuration or stayed dead beyond its grace period.
func (ix *Index) RemoveWorker(w proto.WorkerKey) {
	ix.clearMu.Lock()
	defer ix.clearMu.Unlock()
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ws := ix.worker(w, false)
	if ws == nil {
		return
	}
	// Detach first: calls for w made from now on create a new worker with a new wid.
	delete(ix.byKey, w)
	ix.clearLocked(ws, true)
	ix.workers[ws.wid] = nil
	ix.keys[ws.wid] = proto.WorkerKey{}
	ix.gens[ws.wid]++
	ix.freeWIDs = append(ix.freeWIDs, ws.wid)
}

// maintain enforces the bounds, expires predictions and collects unused sets. mu must be
// held for writing.
func (ix *Index) maintain(now time.Time, tick uint32) {
	ix.evictNodes()
	ix.expire(now.UnixNano(), tick)
	if ix.sets.collect() {
		for _, ws := range ix.workers {
			if ws != nil {
				ws.memoFrom, ws.memoCode, ws.memoTo = 0, 0, 0
			}
		}
	}
}

// evictSamples is how many runs (or engine entries) an eviction compares (Redis uses 5).
const evictSamples = 8

// Node eviction takes the end of the least recently touched of evictSamples runs: at
// least evictMin blocks per sample (so that a bound passed by one block makes room for
// the next inserts), at most evictMax.
const (
	evictMin = 8
	evictMax = 64
)

// evictNodes evicts blocks until at most MaxBlocks remain, chosen by sampled LRU over
// runs (see evictMin), each run shortened from its end so the rest of its chain stays
// matchable. The engine-hash entries stay (the engine still holds the block, and they
// are bounded by MaxBlocksPerWorker), so a later BlockRemoved still resolves. mu must be
// held for writing.
func (ix *Index) evictNodes() {
	var buf [evictMax]uint64
	for ix.nodes.Len() > ix.opts.MaxBlocks {
		over := min(max(ix.nodes.Len()-ix.opts.MaxBlocks, evictMin), evictMax)
		victims := ix.nodes.Oldest(ix.random(), evictSamples, over, buf[:0])
		if len(victims) == 0 {
			return
		}
		for _, key := range victims {
			ix.evictNode(key)
		}
	}
}

// evictNode drops block key for all its holders. mu must be held for writing.
func (ix *Index) evictNode(key uint64) {
	val, _, ok := ix.nodes.Get(key)
	if !ok {
		return
	}
	id := setID(val)
	own := proto.BlockHash(key)
	for _, c := range ix.sets.members(id) {
		ws := ix.workers[codeWID(c)]
		ix.account(ws, own, codeFlags(c), 0)
		if ws.extra != nil {
			for t := Tier(0); t < numTiers; t++ {
				delete(ws.extra, ownTier{own, t})
			}
		}
	}
	ix.nodes.Delete(key)
	ix.sets.decRef(id)
	ix.c.evictions[EvictCapacity].Add(1)
}

// evictWorkerEntry drops the least recently touched of a few of ws's engine entries
// (consecutive entries from a random position). mu must be held for writing.
func (ix *Index) evictWorkerEntry(ws *workerState) {
	var buf [evictSamples]engEntry
	cands := ws.eng.sample(ix.random(), buf[:0])
	if len(cands) == 0 {
		return
	}
	best, bt := 0, uint32(0)
	for k, c := range cands {
		// An entry whose block was evicted goes first (t 0).
		_, t, _ := ix.nodes.Get(uint64(c.own))
		if k == 0 || t < bt {
			best, bt = k, t
		}
	}
	ix.dropEngine(ws, cands[best], ix.tick.Load())
	ix.c.evictions[EvictWorkerCapacity].Add(1)
}
