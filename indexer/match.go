package indexer

import (
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/kvroute/kvroute/indexer/runtable"
	"github.com/kvroute/kvroute/proto"
)

// WorkerMatch is one worker's overlap with a request, as found by [Index.Match].
type WorkerMatch struct {
	// Worker is the worker.
	Worker proto.WorkerKey
	// Blocks is the number of leading blocks of the request the worker holds on a counted
	// tier (weight > 0) or as a prediction (unless Options.IgnorePredicted).
	Blocks int
	// Confirmed is the number of leading blocks held on a counted tier according to the
	// worker's events, predictions excluded; Confirmed <= Blocks.
	Confirmed int
	// Score is the sum over the Blocks leading blocks of the block's weight: the largest
	// Options.TierWeights among the tiers holding it, or Options.PredictedWeight for a
	// predicted block. With default options it equals Blocks.
	Score float64
	// Stale is true when the worker's event feed was marked stale ([Index.SetStale]) at
	// the time of the match: its confirmed blocks were counted as predicted ones
	// (Confirmed is 0, their weight is Options.PredictedWeight).
	Stale bool

	// Tiers counts (MatchTiers only; Match leaves it zero), per storage tier, how many
	// of the Blocks leading blocks the worker
	// holds on that tier according to its events: a block held on GPU and CPU counts on
	// both, a block held only as a prediction on none, and tiers of weight 0 (not
	// counted, see Options.TierWeights) stay 0. So Tiers[TierGPU] <= Blocks, and with
	// tier weights the part of the overlap a worker would load from CPU memory instead of
	// finding on its GPU is visible (issue 19).
	Tiers [NumTiers]int32

	weight   float64 // blockWeight(flags), cached
	wid      uint32
	flags    uint8
	open     bool
	confOpen bool
}

// Match appends to dst[:0] one entry for each worker holding at least the first block of
// hashes (a request's chain from proto.HashBlocks with the same seed as the events: model,
// LoRA adapter) and returns it; workers absent from the result hold no leading block. The
// entries come in no particular order. Match allocates nothing when dst has room for
// every worker holding the first block; it stops at the first block no remaining worker
// holds. Blocks it walks count as recently used for eviction. Safe for concurrent use
// with every other method.
//
// Match leaves WorkerMatch.Tiers zero: [Index.MatchTiers] fills it too, at a small
// extra cost per run of blocks, so the routing path, which needs only the weighted
// Score, does not pay for it.
func (ix *Index) Match(hashes []proto.BlockHash, dst []WorkerMatch) []WorkerMatch {
	return ix.match(hashes, dst, false)
}

// MatchTiers is [Index.Match] that also counts each worker's leading blocks per tier
// (WorkerMatch.Tiers), for the index query API.
func (ix *Index) MatchTiers(hashes []proto.BlockHash, dst []WorkerMatch) []WorkerMatch {
	return ix.match(hashes, dst, true)
}

func (ix *Index) match(hashes []proto.BlockHash, dst []WorkerMatch, tiers bool) []WorkerMatch {
	dst = dst[:0]
	if len(hashes) == 0 {
		return dst
	}
	// Sample with the runtime's per-thread random source rather than a shared counter,
	// which every concurrent Match would contend on.
	sampled := ix.opts.SampleEvery == 1 || rand.Uint64N(uint64(ix.opts.SampleEvery)) == 0
	var start time.Time
	if sampled {
		start = time.Now()
	}
	tick := ix.tick.Load()
	ix.mu.RLock()
	var (
		cur      setID
		runStart int
		open     int
		i        int
		shared   = -1 // blocks walked while at least two workers were open
		anyStale = len(ix.stale) > 0
	)
	// The node table stores chains in runs: one lookup finds the request's block i and
	// tells how many of the following blocks continue its run (same holder set), compared
	// against the run's array in sequence, so a lookup (a cache miss) is paid per run,
	// not per block.
	for i = 0; i < len(hashes); {
		val, touch, n, ok := runtable.Span(ix.nodes, hashes[i], hashes[i+1:])
		if !ok {
			break
		}
		if atomic.LoadUint32(touch) != tick {
			atomic.StoreUint32(touch, tick)
		}
		id := setID(val)
		if id == cur {
			i += 1 + n
			continue
		}
		members := ix.sets.members(id)
		if i == 0 {
			for _, c := range members {
				wid := codeWID(c)
				f, stale := codeFlags(c), anyStale && ix.staleWID(wid)
				if stale {
					f = ix.demote(f)
				}
				if f &= ix.countMask; f == 0 {
					continue
				}
				dst = append(dst, WorkerMatch{Worker: ix.keys[wid], Stale: stale, weight: ix.blockWeight(f), wid: wid, flags: f, open: true, confOpen: f&ix.confMask != 0})
				open++
			}
		} else {
			ix.flushRun(dst, i-runStart, tiers)
			open = ix.intersect(dst, members, i)
		}
		if open < 2 && shared < 0 {
			shared = i
		}
		if open == 0 {
			break
		}
		cur, runStart = id, i
		i += 1 + n
	}
	ix.flushRun(dst, i-runStart, tiers)
	for k := range dst {
		m := &dst[k]
		if m.open {
			m.Blocks, m.open = i, false
		}
		if m.confOpen {
			m.Confirmed, m.confOpen = i, false
		}
	}
	ix.mu.RUnlock()
	if sampled {
		if shared < 0 {
			shared = i
		}
		ix.sample(hashes, dst, shared, start)
	}
	return dst
}

// flushRun adds the score (and with tiers the per-tier counts) of a run of blocks with
// unchanged holder set to every open worker.
func (ix *Index) flushRun(dst []WorkerMatch, run int, tiers bool) {
	if run <= 0 {
		return
	}
	for k := range dst {
		m := &dst[k]
		if !m.open {
			continue
		}
		m.Score += float64(run) * m.weight
		if !tiers {
			continue
		}
		if f := m.flags & flagTierMask; f == 1<<TierGPU {
			m.Tiers[TierGPU] += int32(run)
		} else if f != 0 {
			addTiers(&m.Tiers, f, int32(run))
		}
	}
}

// addTiers adds run to the count of every tier in flags.
func addTiers(tiers *[NumTiers]int32, flags uint8, run int32) {
	for t := range numTiers {
		if flags&(1<<t) != 0 {
			tiers[t] += run
		}
	}
}

// blockWeight is the weight of a block held with flags (already masked by countMask).
func (ix *Index) blockWeight(f uint8) float64 {
	w := 0.0
	for t := 0; t < numTiers; t++ {
		if f&(1<<t) != 0 && ix.weights[t] > w {
			w = ix.weights[t]
		}
	}
	if w == 0 && f&flagPredicted != 0 {
		w = ix.predWeight
	}
	return w
}

// intersect closes, at block i, every open worker of dst (sorted by wid, as built from a
// sorted set) that the set members does not hold, updates the flags of the others, and
// returns how many stay open.
func (ix *Index) intersect(dst []WorkerMatch, members []uint32, i int) int {
	open, j := 0, 0
	for k := range dst {
		m := &dst[k]
		if !m.open {
			continue
		}
		for j < len(members) && codeWID(members[j]) < m.wid {
			j++
		}
		var f uint8
		if j < len(members) && codeWID(members[j]) == m.wid {
			f = codeFlags(members[j])
			if m.Stale {
				f = ix.demote(f)
			}
			f &= ix.countMask
		}
		if f == 0 {
			m.open, m.Blocks = false, i
			if m.confOpen {
				m.confOpen, m.Confirmed = false, i
			}
			continue
		}
		if f != m.flags {
			m.flags, m.weight = f, ix.blockWeight(f)
		}
		if m.confOpen && f&ix.confMask == 0 {
			m.confOpen, m.Confirmed = false, i
		}
		open++
	}
	return open
}
