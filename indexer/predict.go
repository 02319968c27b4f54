package indexer

import (
	"sync/atomic"
	"time"

	"github.com/kvroute/kvroute/indexer/runtable"
	"github.com/kvroute/kvroute/proto"
)

// Predict records that worker w is expected to hold the blocks hashes (a request's chain,
// as the router computed it) because the request was just routed there: Match reports
// them (counted in Blocks, not in Confirmed) until ttl passes (ttl <= 0 means
// Options.PredictedTTL), unless a real event confirms or removes the block first, or
// Options.MaxPredicted forces the earliest-expiring predictions out. Predicting a block
// the worker already holds on a counted tier changes nothing; predicting it again extends
// its life. This is how the router stays accurate between a routing decision and the
// worker's events, and without events at all (approximate mode).
//
// A chain refreshed on w less than ttl/8 ago keeps that refresh's expiry for the blocks
// still predicted (predTips), unless Options.ExactRefresh: a prediction lives between
// 7/8 of its TTL and its TTL after the last request routed with it.
func (ix *Index) Predict(w proto.WorkerKey, hashes []proto.BlockHash, ttl time.Duration) {
	if len(hashes) == 0 {
		return
	}
	if ttl <= 0 {
		ttl = ix.opts.PredictedTTL
	}
	now, tick := ix.nowTick()
	exp := now.Add(ttl).UnixNano()
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ws := ix.worker(w, true)
	// The leading blocks a recent Predict on this worker refreshed keep that expiry
	// (predTips): their predicted runs are passed a run at a time.
	var fresh int
	var guard int64
	epoch := ws.tipsEpoch
	if !ix.opts.ExactRefresh {
		fresh, guard = ws.tips.covered(hashes, exp-int64(ttl/tipSlack))
	}
	ops := 0
	for i := 0; i < len(hashes) && !ws.removed(); {
		if n := ix.refreshRun(ws, hashes[i:], exp, tick, &ops, fresh-i); n > 0 {
			i += n
			continue
		}
		var parent proto.BlockHash
		if i > 0 {
			parent = hashes[i-1]
		}
		ix.predictLocked(ws, hashes[i], parent, exp, tick)
		i++
		ix.yield(&ops)
	}
	// Not when an expiry was lowered meanwhile (by this Predict, or by another writer
	// while the lock was handed over): the guard would not hold.
	if !ix.opts.ExactRefresh && !ws.removed() && ws.tipsEpoch == epoch {
		if fresh > 0 {
			exp = min(exp, guard)
		}
		ws.tips.put(hashes, exp)
	}
	ix.maintain(now, tick)
}

// tipSlack: a chain refreshed on a worker less than its TTL/tipSlack ago is not
// refreshed again block by block (predTips), unless Options.ExactRefresh.
const tipSlack = 8

// predTips remembers, per worker, the chains its recent Predicts covered: the hash of a
// chain's last block (which stands for the whole chain) -> its length and the earliest
// expiry any predicted block of it can have (the Predict's expiry, or the one before it
// when that Predict itself passed the blocks). A block of such a chain that is still
// predicted on the worker has at least that expiry: every later prediction of it sets
// a later one. So when the next turn of a conversation is routed to the same worker
// within TTL/tipSlack, Predict passes the chain's predicted runs whole instead of
// refreshing each block: the refresh of the ~520 blocks of a turn-40 prompt was 18% of
// the routing decision without KV events (bench/decision, CPU profile, 2026-12-07).
// Blocks of the chain that are no longer predicted (expired, evicted, confirmed, removed)
// show as such in their runs and are handled as before; a Predict that lowers an expiry
// (a shorter ttl) forgets every chain of the worker. The cost: a prediction lives
// between (1-1/tipSlack) and 1 times its TTL after the last request routed with it, and
// the Mirror hears of a refresh at most once per TTL/tipSlack. The map is emptied when
// it holds maxTips chains.
type predTips map[proto.BlockHash]predTip

type predTip struct {
	n     int
	guard int64 // unix ns
}

const (
	maxTips    = 1024 // per worker
	tipLookups = 64   // positions from a chain's end tried for an earlier chain's end
)

// covered returns how many leading blocks of hashes an earlier Predict covered with
// an expiry of at least atLeast, and that expiry; 0 when none. It tries the last
// tipLookups positions, the longest first (a new turn adds a few blocks).
func (t predTips) covered(hashes []proto.BlockHash, atLeast int64) (int, int64) {
	if len(t) == 0 {
		return 0, 0
	}
	for j := len(hashes) - 1; j >= 0 && j >= len(hashes)-tipLookups; j-- {
		if tip, ok := t[hashes[j]]; ok && tip.n == j+1 && tip.guard >= atLeast {
			return j + 1, tip.guard
		}
	}
	return 0, 0
}

// put records that the predicted blocks of hashes expire no earlier than guard.
func (t *predTips) put(hashes []proto.BlockHash, guard int64) {
	if *t == nil {
		*t = make(predTips)
	}
	if len(*t) >= maxTips {
		clear(*t)
	}
	(*t)[hashes[len(hashes)-1]] = predTip{n: len(hashes), guard: guard}
}

// refreshRun handles the leading blocks of hs that lie in one run of the node table
// (runtable.Span, one lookup for the run instead of one per block, as Match walks it)
// when ws holds that run confirmed (nothing to do) or predicted with an earlier expiry
// (the refresh of predictLocked, block by block in ws.pred, the run touched once; the
// first fresh blocks of hs, which a recent Predict refreshed (predTips), keep their
// expiry). It returns how many blocks it handled, 0 when the first block needs
// predictLocked. It stops after a hand-off of the lock to another writer, which may
// have changed the run. mu must be held for writing.
func (ix *Index) refreshRun(ws *workerState, hs []proto.BlockHash, exp int64, tick uint32, ops *int, fresh int) int {
	val, touch, n, ok := runtable.Span(ix.nodes, hs[0], hs[1:])
	if !ok {
		return 0
	}
	cur := ix.sets.flagsOf(setID(val), ws.wid)
	switch {
	case cur&ix.confMask != 0:
		ix.yield(ops)
		return n + 1
	case cur&flagPredicted == 0:
		return 0
	case fresh > 0:
		if tick != 0 {
			atomic.StoreUint32(touch, tick)
		}
		ix.yield(ops)
		return min(n+1, fresh)
	}
	done := 0
	for _, h := range hs[:n+1] {
		p := ws.pred.ref(h)
		if p == nil || exp < *p {
			break
		}
		*p = exp
		ix.mirror(ws, h, cur, cur)
		done++
		if ix.yield(ops) == handedToWriter {
			break
		}
	}
	if done > 0 && tick != 0 {
		atomic.StoreUint32(touch, tick)
	}
	return done
}

// predictLocked predicts block h, child of parent (0 when unknown), for ws until exp
// (unix ns). mu must be held for writing.
func (ix *Index) predictLocked(ws *workerState, h, parent proto.BlockHash, exp int64, tick uint32) {
	var cur uint8
	ref, val, found := ix.nodes.Lookup(uint64(h))
	if found {
		cur = ix.sets.flagsOf(setID(val), ws.wid)
	}
	if cur&ix.confMask != 0 {
		return
	}
	p := ws.pred.ref(h)
	had := p != nil
	if had && cur&flagPredicted != 0 && exp >= *p {
		// A refresh that extends the expiry: the heap keeps the earlier item, and
		// expire pushes it again at the live expiry when it comes up (no heap work
		// per refresh). The entry is touched as setHolder would.
		*p = exp
		ix.nodes.SetAt(ref, uint64(h), uint32(setID(val)), tick)
		ix.mirror(ws, h, cur, cur)
		return
	}
	if !had {
		ix.predLive++
		ix.c.predicted.Add(1)
	} else if exp < *p {
		// An expiry lowered (a shorter ttl): the chains predTips recorded may now hold a
		// block that expires before their guard.
		clear(ws.tips)
		ws.tipsEpoch++
	}
	ws.pred.set(h, exp)
	ix.pred.push(predItem{exp: exp, own: h, wid: ws.wid, gen: ws.gen})
	ix.setHolder(ws, h, parent, flagPredicted, 0, tick)
	if cur&flagPredicted != 0 {
		ix.mirror(ws, h, cur, cur) // a refresh: the flags did not change, the expiry did
	}
}

// Sweep expires predicted entries whose time has passed. Apply and Predict sweep too, so
// Sweep only matters for an index that receives neither for a while; Run calls it.
func (ix *Index) Sweep() {
	now, tick := ix.nowTick()
	ix.mu.Lock()
	ix.maintain(now, tick)
	ix.mu.Unlock()
}

// expire drops predictions whose expiry is at or before now, then the earliest-expiring
// ones while more than MaxPredicted are live. Heap items whose prediction was confirmed,
// refreshed or cleared are stale and skipped. mu must be held for writing.
func (ix *Index) expire(now int64, tick uint32) {
	for len(ix.pred.items) > 0 {
		top := ix.pred.items[0]
		over := ix.predLive > ix.opts.MaxPredicted
		if top.exp > now && !over {
			break
		}
		ix.pred.pop()
		ws := ix.workers[top.wid]
		if ws == nil || ws.gen != top.gen {
			continue
		}
		exp, ok := ws.pred.get(top.own)
		if !ok {
			continue
		}
		if exp > top.exp {
			// Refreshed since this item was pushed (predictLocked): due later.
			ix.pred.push(predItem{exp: exp, own: top.own, wid: top.wid, gen: top.gen})
			continue
		}
		if exp != top.exp {
			continue // an earlier expiry has its own item
		}
		if top.exp > now {
			ix.c.evictions[EvictPredicted].Add(1)
		} else {
			ix.c.expired.Add(1)
		}
		// setHolder's accounting deletes the pred entry.
		ix.setHolder(ws, top.own, 0, 0, flagPredicted, tick)
	}
	// Stale items pile up when predictions are refreshed or confirmed: rebuild the heap
	// from the live entries when they are the minority.
	if n := len(ix.pred.items); n > 4096 && n > 2*ix.predLive {
		ix.pred.items = ix.pred.items[:0]
		for _, ws := range ix.workers {
			if ws == nil {
				continue
			}
			for own, exp := range ws.pred.all() {
				ix.pred.items = append(ix.pred.items, predItem{exp: exp, own: own, wid: ws.wid, gen: ws.gen})
			}
		}
		ix.pred.init()
	}
}

// predItem is one scheduled expiry.
type predItem struct {
	exp int64
	own proto.BlockHash
	wid uint32
	gen uint32
}

// predHeap is a min-heap of expiries (typed, so pushing does not allocate per item).
type predHeap struct{ items []predItem }

func (h *predHeap) push(it predItem) {
	h.items = append(h.items, it)
	i := len(h.items) - 1
	for i > 0 {
		p := (i - 1) / 2
		if h.items[p].exp <= h.items[i].exp {
			break
		}
		h.items[p], h.items[i] = h.items[i], h.items[p]
		i = p
	}
}

func (h *predHeap) pop() {
	n := len(h.items) - 1
	h.items[0] = h.items[n]
	h.items = h.items[:n]
	h.down(0)
}

func (h *predHeap) down(i int) {
	n := len(h.items)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		m := l
		if r := l + 1; r < n && h.items[r].exp < h.items[l].exp {
			m = r
		}
		if h.items[i].exp <= h.items[m].exp {
			return
		}
		h.items[i], h.items[m] = h.items[m], h.items[i]
		i = m
	}
}

func (h *predHeap) init() {
	for i := len(h.items)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}
