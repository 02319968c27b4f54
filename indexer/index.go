package indexer

import (
	"fmt"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/indexer/runtable"
	"github.com/kvroute/kvroute/proto"
)

// Defaults of [Options] fields left zero.
const (
	// DefaultMaxBlocks bounds the distinct blocks indexed: 8,388,608 blocks, whose node
	// table takes 180 to 360 MB; engine entries add 20 to 39 bytes per (block, worker)
	// (see the package documentation).
	DefaultMaxBlocks = 1 << 23
	// DefaultMaxBlocksPerWorker bounds one worker's engine-hash map: 1,048,576 blocks,
	// 16 Gi tokens at block size 16, far above any GPU and most CPU-offload caches.
	DefaultMaxBlocksPerWorker = 1 << 20
	// DefaultMaxPredicted bounds the predicted (worker, block) entries of all workers.
	DefaultMaxPredicted = 1 << 20
	// DefaultPredictedTTL is how long a predicted entry lives unless an event confirms it
	// (Dynamo's approximate mode uses 120 s).
	DefaultPredictedTTL = 120 * time.Second
	// DefaultSampleEvery is how often Match is sampled for the latency histogram and the
	// hot-prefix tracker: one call in 64.
	DefaultSampleEvery = 64
	// DefaultHotPrefixes is the number of hot prefixes tracked.
	DefaultHotPrefixes = 16
)

// Options configures an [Index]. The zero value is valid and means every default.
type Options struct {
	// MaxBlocks bounds the number of distinct indexed blocks (nodes); above it the least
	// recently stored or matched blocks are evicted (sampled LRU). 0 means
	// DefaultMaxBlocks.
	MaxBlocks int
	// MaxBlocksPerWorker bounds each worker's engine-hash map (entries); above it the
	// worker's least recently touched blocks are dropped. 0 means
	// DefaultMaxBlocksPerWorker.
	MaxBlocksPerWorker int
	// MaxPredicted bounds the predicted (worker, block) entries; above it those expiring
	// first are dropped. 0 means DefaultMaxPredicted.
	MaxPredicted int
	// PredictedTTL is the lifetime of a predicted entry when Predict gets ttl <= 0.
	// 0 means DefaultPredictedTTL.
	PredictedTTL time.Duration
	// ExactRefresh makes Predict refresh every predicted block of a chain, even one it
	// refreshed on the same worker less than ttl/8 ago (by default those keep that
	// expiry: see Predict).
	ExactRefresh bool
	// BlockSize, when positive, is the router's tokens per block: BlockStored events with
	// another block size are dropped and counted (reason "block_size_mismatch"), because
	// their hashes could never match a request. 0 accepts any block size.
	BlockSize int
	// TierWeights is the weight of a block held on each tier in [WorkerMatch.Score];
	// tiers of weight 0 do not count as held for matching. nil means GPU 1, others 0.
	TierWeights *[NumTiers]float64
	// PredictedWeight is the weight of a predicted block in [WorkerMatch.Score]; 0 means
	// 1 (a routing decision puts the blocks on GPU).
	PredictedWeight float64
	// IgnorePredicted makes Match ignore predicted entries entirely.
	IgnorePredicted bool
	// SampleEvery: one Match call in SampleEvery feeds the latency histogram and the
	// hot-prefix tracker. 0 means DefaultSampleEvery.
	SampleEvery int
	// HotPrefixes is how many hot prefixes Stats reports. 0 means DefaultHotPrefixes.
	HotPrefixes int
	// Now is the clock; nil means time.Now. Tests inject a fake one.
	Now func() time.Time
	// Registerer receives the kvroute_indexer_* metrics; nil registers none.
	Registerer prometheus.Registerer
	// Mirror, when set, is told of every entry change (index.backend valkey); nil (the
	// default) mirrors nothing.
	Mirror Mirror
}

// Index is the router's record of which worker holds which prefix. All methods are safe
// for concurrent use. Calls that change one worker (Apply, ClearWorker, RemoveWorker)
// must be made in event order by the caller (the worker's event source does this); calls
// for different workers and any number of Match calls may run concurrently. An Index
// must not be copied.
type Index struct {
	opts       Options
	now        func() time.Time
	epoch      time.Time
	weights    [numTiers]float64
	predWeight float64
	countMask  uint8 // flags that make a block held for Match
	confMask   uint8 // flags that make a block confirmed-held for Match
	tick       atomic.Uint32

	// clearMu serializes worker clears and removals (taken before mu).
	clearMu sync.Mutex
	// mu guards every field down to rnd, and the workers' states.
	mu       wlock
	nodes    *runtable.Table
	sets     holderSets
	workers  []*workerState    // by wid; nil when free
	keys     []proto.WorkerKey // by wid, dense copy of workers[wid].key for Match
	gens     []uint32          // by wid: bumped when the wid is freed
	byKey    map[proto.WorkerKey]*workerState
	freeWIDs []uint32
	pred     predHeap
	predLive int
	rnd      uint64
	stale    map[proto.WorkerKey]struct{} // workers whose entries count as predicted (stale.go)

	c       counters
	hot     hotTracker
	metrics *metrics
}

// counters are the index's monotonic counters, read by Stats and the metrics collector.
type counters struct {
	events    [4]atomic.Uint64 // by proto.EventKind; 0 = unknown kind
	stored    atomic.Uint64    // block store operations applied
	removed   atomic.Uint64    // block remove operations applied
	dropped   [numDropReasons]atomic.Uint64
	evictions [numEvictReasons]atomic.Uint64
	clears    atomic.Uint64
	predicted atomic.Uint64 // predicted block entries inserted
	expired   atomic.Uint64 // predicted entries expired unconfirmed
	matches   atomic.Uint64
}

// DropReason says why a block of an event was not applied.
type DropReason uint8

// The drop reasons, also the values of the metric label "reason".
const (
	DropUnknownParent     DropReason = iota // BlockStored whose parent the worker never stored
	DropMissingTokens                       // BlockStored without token ids for an unknown engine hash
	DropBadTokenCount                       // token ids not a whole number of blocks
	DropBlockSizeMismatch                   // block size differs from Options.BlockSize
	DropUnknownBlock                        // BlockRemoved for a block not stored (on that tier)
	DropUnknownKind                         // event kind not understood
	numDropReasons
)

// String returns the reason's metric label.
func (r DropReason) String() string {
	return [...]string{"unknown_parent", "missing_tokens", "bad_token_count", "block_size_mismatch",
		"unknown_block", "unknown_kind", "?"}[min(r, numDropReasons)]
}

// EvictReason says why the index dropped an entry on its own.
type EvictReason uint8

// The eviction reasons, also the values of the metric label "reason".
const (
	EvictCapacity       EvictReason = iota // Options.MaxBlocks reached
	EvictWorkerCapacity                    // Options.MaxBlocksPerWorker reached
	EvictPredicted                         // Options.MaxPredicted reached
	numEvictReasons
)

// String returns the reason's metric label.
func (r EvictReason) String() string {
	return [...]string{"capacity", "worker_capacity", "predicted_capacity", "?"}[min(r, numEvictReasons)]
}

// New returns an empty index. It fails on invalid options (negative bounds or weights)
// and when the metrics cannot be registered.
func New(opts Options) (*Index, error) {
	if opts.MaxBlocks < 0 || opts.MaxBlocksPerWorker < 0 || opts.MaxPredicted < 0 ||
		opts.PredictedTTL < 0 || opts.BlockSize < 0 || opts.SampleEvery < 0 || opts.HotPrefixes < 0 {
		return nil, fmt.Errorf("indexer: negative option in %+v", opts)
	}
	if opts.MaxBlocks == 0 {
		opts.MaxBlocks = DefaultMaxBlocks
	}
	if opts.MaxBlocksPerWorker == 0 {
		opts.MaxBlocksPerWorker = DefaultMaxBlocksPerWorker
	}
	if opts.MaxPredicted == 0 {
		opts.MaxPredicted = DefaultMaxPredicted
	}
	if opts.PredictedTTL == 0 {
		opts.PredictedTTL = DefaultPredictedTTL
	}
	if opts.SampleEvery == 0 {
		opts.SampleEvery = DefaultSampleEvery
	}
	if opts.HotPrefixes == 0 {
		opts.HotPrefixes = DefaultHotPrefixes
	}
	ix := &Index{opts: opts, now: opts.Now}
	if ix.now == nil {
		ix.now = time.Now
	}
	ix.epoch = ix.now()
	ix.weights = [numTiers]float64{TierGPU: 1}
	if opts.TierWeights != nil {
		ix.weights = *opts.TierWeights
	}
	for t, w := range ix.weights {
		if w < 0 || math.IsNaN(w) || math.IsInf(w, 0) {
			return nil, fmt.Errorf("indexer: tier %s weight %v is not a finite value >= 0", Tier(t), w)
		}
		if w > 0 {
			ix.confMask |= 1 << t
		}
	}
	ix.predWeight = opts.PredictedWeight
	if ix.predWeight < 0 || math.IsNaN(ix.predWeight) || math.IsInf(ix.predWeight, 0) {
		return nil, fmt.Errorf("indexer: predicted weight %v is not a finite value >= 0", ix.predWeight)
	}
	if ix.predWeight == 0 {
		ix.predWeight = 1
	}
	ix.countMask = ix.confMask
	if !opts.IgnorePredicted {
		ix.countMask |= flagPredicted
	}
	seed := uint64(ix.epoch.UnixNano()) * 0x9e3779b97f4a7c15
	ix.nodes = runtable.New(seed)
	ix.sets = newHolderSets()
	ix.byKey = make(map[proto.WorkerKey]*workerState)
	ix.rnd = seed | 1
	ix.hot.init(opts.HotPrefixes)
	if opts.Registerer != nil {
		m, err := newMetrics(ix, opts.Registerer)
		if err != nil {
			return nil, err
		}
		ix.metrics = m
	}
	return ix, nil
}

// nowTick returns the current time and its coarse stamp (seconds since the index was
// created, plus one), and publishes the stamp for Match's touches.
func (ix *Index) nowTick() (time.Time, uint32) {
	t := ix.now()
	s := t.Sub(ix.epoch) / time.Second
	tick := uint32(min(max(s, 0), math.MaxUint32-1)) + 1
	if ix.tick.Load() != tick {
		// Only on change: Match reads tick on every call from every core.
		ix.tick.Store(tick)
	}
	return t, tick
}

func (ix *Index) random() uint64 {
	// xorshift64*; mu must be held for writing.
	x := ix.rnd
	x ^= x >> 12
	x ^= x << 25
	x ^= x >> 27
	ix.rnd = x
	return x * 0x2545f4914f6cdd1d
}

// worker returns the state of key, creating it when create is set. mu must be held for
// writing when create is set.
func (ix *Index) worker(key proto.WorkerKey, create bool) *workerState {
	if ws := ix.byKey[key]; ws != nil || !create {
		return ws
	}
	ws := &workerState{key: key, eng: newEngTable(0)}
	if n := len(ix.freeWIDs); n > 0 {
		ws.wid = ix.freeWIDs[n-1]
		ix.freeWIDs = ix.freeWIDs[:n-1]
	} else {
		ws.wid = uint32(len(ix.workers))
		ix.workers = append(ix.workers, nil)
		ix.keys = append(ix.keys, proto.WorkerKey{})
		ix.gens = append(ix.gens, 0)
	}
	ws.gen = ix.gens[ws.wid]
	ix.workers[ws.wid] = ws
	ix.keys[ws.wid] = key
	ix.byKey[key] = ws
	return ws
}

// transition returns the set of node set from after ws's flags become flags, through the
// worker's one-entry memo (a stored chain makes the same transition for every block).
func (ix *Index) transition(ws *workerState, from setID, flags uint8) setID {
	code := ws.wid<<8 | uint32(flags)
	if ws.memoFrom == from && ws.memoCode == code && (from != 0 || ws.memoTo != 0) {
		return ws.memoTo
	}
	to := ix.sets.with(from, ws.wid, flags)
	ws.memoFrom, ws.memoCode, ws.memoTo = from, code, to
	return to
}

// setHolder changes ws's flags on block own to (old &^ clr) | set, creating or deleting
// the node as needed, keeps the per-worker counts, and returns the old flags. A block
// gaining a flag is touched (with its run). parent is the own hash of the block before own
// in its chain, 0 when unknown: a new node is appended to its parent's run when it can
// be. mu must be held for writing.
func (ix *Index) setHolder(ws *workerState, own, parent proto.BlockHash, set, clr uint8, tick uint32) uint8 {
	return ix.setHolderHashed(ws, own, ix.nodes.Hash(uint64(own)), parent, set, clr, tick)
}

// setHolderHashed is setHolder of own, whose node-table hash (runtable.Table.Hash) is h.
func (ix *Index) setHolderHashed(ws *workerState, own proto.BlockHash, h uint64, parent proto.BlockHash, set, clr uint8, tick uint32) uint8 {
	// One probe: ref is where own sits, or goes, for the Set, Delete or Insert below,
	// which nothing between them moves (transition only touches the holder sets).
	ref, val, found := ix.nodes.LookupHashed(uint64(own), h)
	from := setID(val)
	var old uint8
	if found {
		old = ix.sets.flagsOf(from, ws.wid)
	}
	nf := (old &^ clr) | set
	touch := tick
	if set == 0 {
		touch = 0
	}
	if nf == old {
		if found && set != 0 {
			ix.nodes.SetAt(ref, uint64(own), uint32(from), touch)
		}
		return old
	}
	to := ix.transition(ws, from, nf)
	switch {
	case !found:
		ix.nodes.InsertAt(ref, uint64(own), uint64(parent), uint32(to), tick)
		ix.sets.incRef(to)
	case to == 0:
		ix.nodes.DeleteAt(ref, uint64(own))
		ix.sets.decRef(from)
	default:
		ix.nodes.SetAt(ref, uint64(own), uint32(to), touch)
		ix.sets.incRef(to)
		ix.sets.decRef(from)
	}
	ix.account(ws, own, old, nf)
	return old
}

// account updates ws's counts for a flag change of block own from old to nf.
func (ix *Index) account(ws *workerState, own proto.BlockHash, old, nf uint8) {
	for d := (old ^ nf) & flagTierMask; d != 0; d &= d - 1 {
		t := bits.TrailingZeros8(d)
		if nf&(1<<t) != 0 {
			ws.blocks[t]++
		} else {
			ws.blocks[t]--
		}
	}
	switch {
	case old&flagPredicted == 0 && nf&flagPredicted != 0:
		ws.predicted++
	case old&flagPredicted != 0 && nf&flagPredicted == 0:
		ws.predicted--
		if ws.pred.del(own) {
			ix.predLive--
		}
	}
	if ix.opts.Mirror != nil {
		ix.mirror(ws, own, old, nf)
	}
}
