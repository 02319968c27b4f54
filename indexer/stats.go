package indexer

import (
	"slices"
	"sync"
	"time"

	"github.com/kvroute/kvroute/proto"
)

// Stats is a snapshot of the index for the dashboard and tests.
type Stats struct {
	// Blocks is the number of distinct indexed blocks (nodes), confirmed or predicted.
	Blocks int
	// HolderSets is the number of distinct holder sets in use.
	HolderSets int
	// Runs is the number of runs the blocks are stored in (chain segments with one
	// holder set each): Match pays one hash-table lookup per run it walks, so Blocks/Runs
	// is the average number of blocks matched per lookup.
	Runs int
	// MemoryBytes estimates the memory held by the index structures.
	MemoryBytes int
	// PredictedEntries is the number of live predicted (worker, block) entries.
	PredictedEntries int
	// Workers has one entry per known worker, sorted by key.
	Workers []WorkerStats
	// Events counts the events applied by kind (index: proto.EventKind; 0 counts unknown
	// kinds).
	Events [4]uint64
	// BlockStores and BlockRemoves count the block operations applied.
	BlockStores, BlockRemoves uint64
	// Dropped counts the blocks not applied, by [DropReason].
	Dropped [numDropReasons]uint64
	// Evictions counts entries the index dropped on its own, by [EvictReason].
	Evictions [numEvictReasons]uint64
	// Clears counts worker clears (ClearWorker, ClearEvents and AllBlocksCleared).
	Clears uint64
	// PredictedInserted and PredictedExpired count predicted entries created and expired
	// unconfirmed.
	PredictedInserted, PredictedExpired uint64
	// Matches estimates the Match calls (sampled calls times Options.SampleEvery; exact
	// when SampleEvery is 1).
	Matches uint64
	// Hot lists the most often matched shared prefixes, hottest first (sampled).
	Hot []HotPrefix
}

// WorkerStats describes one worker's part of the index.
type WorkerStats struct {
	Worker proto.WorkerKey
	// Blocks counts the worker's indexed blocks per tier (index: [Tier]).
	Blocks [NumTiers]int64
	// Predicted counts the worker's predicted blocks.
	Predicted int64
	// EngineEntries is the size of the worker's engine-hash map.
	EngineEntries int
	// Reserved is the engine entries the worker's tables are sized for ([Index.Reserve]);
	// 0 when its capacity was never reported.
	Reserved int
}

// HotPrefix is a frequently matched prefix: the deepest block of a request held by at
// least two workers (or by one, when only one held any).
type HotPrefix struct {
	// Hash is the own hash of the prefix's last block.
	Hash proto.BlockHash
	// Depth is the prefix length in blocks.
	Depth int
	// Matches estimates how many sampled Match calls reached it (Space-Saving count, an
	// over-estimate by at most Error).
	Matches, Error uint64
	// Workers are the workers holding the block now.
	Workers []proto.WorkerKey
}

// Stats returns a snapshot. It takes the read lock for a time proportional to the number
// of workers and holder sets, never to the number of blocks.
func (ix *Index) Stats() Stats {
	var s Stats
	for k := range s.Events {
		s.Events[k] = ix.c.events[k].Load()
	}
	s.BlockStores, s.BlockRemoves = ix.c.stored.Load(), ix.c.removed.Load()
	for k := range s.Dropped {
		s.Dropped[k] = ix.c.dropped[k].Load()
	}
	for k := range s.Evictions {
		s.Evictions[k] = ix.c.evictions[k].Load()
	}
	s.Clears = ix.c.clears.Load()
	s.PredictedInserted, s.PredictedExpired = ix.c.predicted.Load(), ix.c.expired.Load()
	s.Matches = ix.c.matches.Load()
	hot := ix.hot.snapshot()

	ix.mu.RLock()
	s.Blocks = ix.nodes.Len()
	s.HolderSets = ix.sets.live()
	s.Runs = ix.nodes.Runs()
	s.PredictedEntries = ix.predLive
	s.MemoryBytes = ix.memoryLocked()
	for _, ws := range ix.workers {
		if ws == nil || ws.removed() { // removed: RemoveWorker is clearing it in chunks
			continue
		}
		s.Workers = append(s.Workers, WorkerStats{Worker: ws.key, Blocks: ws.blocks, Predicted: ws.predicted, EngineEntries: ws.eng.len(), Reserved: ws.reserved})
	}
	for i := range hot {
		if val, _, ok := ix.nodes.Get(uint64(hot[i].Hash)); ok {
			for _, c := range ix.sets.members(setID(val)) {
				if ws := ix.workers[codeWID(c)]; ws != nil && !ws.removed() {
					hot[i].Workers = append(hot[i].Workers, ws.key)
				}
			}
		}
	}
	ix.mu.RUnlock()
	slices.SortFunc(s.Workers, func(a, b WorkerStats) int { return compareKeys(a.Worker, b.Worker) })
	s.Hot = hot
	return s
}

func compareKeys(a, b proto.WorkerKey) int {
	switch {
	case a.ID < b.ID:
		return -1
	case a.ID > b.ID:
		return 1
	}
	return a.DPRank - b.DPRank
}

// heapItemBytes is the size of an expiry heap item, for the memory estimate.
const heapItemBytes = 24

// memoryLocked estimates the bytes held: node table, holder sets, engine tables,
// predictions. mu must be held.
func (ix *Index) memoryLocked() int {
	b := ix.nodes.Bytes() + ix.sets.bytes() + cap(ix.pred.items)*heapItemBytes
	for _, ws := range ix.workers {
		if ws == nil || ws.removed() {
			continue
		}
		b += ws.eng.bytes() + ws.pred.bytes() + len(ws.extra)*24
	}
	return b
}

// hotTracker keeps the top prefixes of sampled matches with the Space-Saving algorithm
// (Metwally et al. 2005): K counters; an untracked key replaces the smallest counter and
// inherits its count as error. Guarded by its own mutex, taken only on sampled calls.
type hotTracker struct {
	mu      sync.Mutex
	entries []hotEntry
	k       int
}

type hotEntry struct {
	hash  proto.BlockHash
	depth int
	count uint64
	err   uint64
}

func (h *hotTracker) init(k int) { h.k = k }

func (h *hotTracker) add(hash proto.BlockHash, depth int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	minI := -1
	for i := range h.entries {
		e := &h.entries[i]
		if e.hash == hash {
			e.count++
			return
		}
		if minI < 0 || e.count < h.entries[minI].count {
			minI = i
		}
	}
	if len(h.entries) < h.k {
		h.entries = append(h.entries, hotEntry{hash: hash, depth: depth, count: 1})
		return
	}
	m := &h.entries[minI]
	*m = hotEntry{hash: hash, depth: depth, count: m.count + 1, err: m.count}
}

func (h *hotTracker) snapshot() []HotPrefix {
	h.mu.Lock()
	out := make([]HotPrefix, 0, len(h.entries))
	for _, e := range h.entries {
		out = append(out, HotPrefix{Hash: e.hash, Depth: e.depth, Matches: e.count, Error: e.err})
	}
	h.mu.Unlock()
	slices.SortFunc(out, func(a, b HotPrefix) int {
		switch {
		case a.Matches > b.Matches:
			return -1
		case a.Matches < b.Matches:
			return 1
		}
		return b.Depth - a.Depth
	})
	return out
}

// sample feeds a sampled Match into the latency histogram and the hot-prefix tracker.
// shared is the number of leading blocks walked while at least two workers matched.
func (ix *Index) sample(hashes []proto.BlockHash, dst []WorkerMatch, shared int, start time.Time) {
	ix.c.matches.Add(uint64(ix.opts.SampleEvery))
	if ix.metrics != nil {
		ix.metrics.match.Observe(time.Since(start).Seconds())
	}
	depth := shared
	if depth <= 0 {
		for k := range dst {
			depth = max(depth, dst[k].Blocks)
		}
	}
	if depth > 0 {
		ix.hot.add(hashes[depth-1], depth)
	}
}
