package indexer

import (
	"maps"
	"testing"
	"time"

	"github.com/kvroute/kvroute/proto"
)

var (
	wA  = proto.WorkerKey{ID: "a"}
	wB  = proto.WorkerKey{ID: "b"}
	wA1 = proto.WorkerKey{ID: "a", DPRank: 1}
)

// step is one operation of an event-sequence test.
type step struct {
	w   proto.WorkerKey
	evs []proto.Event
	fn  func(ix *Index) // instead of evs
}

func TestEventSequences(t *testing.T) {
	sys := doc(1, 4) // shared 4-block system prompt
	qa := cat(sys, doc(2, 3))
	qb := cat(sys, doc(3, 3))
	const sa, sb = 11, 22 // engine salts of a and b
	tests := []struct {
		name  string
		opts  Options
		steps []step
		req   []proto.BlockHash
		want  map[string][2]int // worker -> {Blocks, Confirmed}
		stats func(t *testing.T, s Stats)
	}{
		{
			name:  "store chain in two events",
			steps: []step{{w: wA, evs: []proto.Event{stored(sa, qa, 0, 4, "GPU", ""), stored(sa, qa, 4, 7, "GPU", "")}}},
			req:   chain("", qa),
			want:  map[string][2]int{"a": {7, 7}},
		},
		{
			name: "two workers share the system prompt",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 7, "GPU", "")}},
				{w: wB, evs: []proto.Event{stored(sb, qb, 0, 7, "GPU", "")}},
			},
			req:  chain("", qa),
			want: map[string][2]int{"a": {7, 7}, "b": {4, 4}},
		},
		{
			name: "request longer than anything stored stops at the end of the chain",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, sys, 0, 2, "", "")}},
			},
			req:  chain("", qa),
			want: map[string][2]int{"a": {2, 2}},
		},
		{
			name: "duplicate store survives one remove",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 7, "GPU", ""), stored(sa, qa, 0, 7, "GPU", "")}},
				{w: wA, evs: []proto.Event{removed(sa, qa, 0, 7, "GPU")}},
			},
			req:  chain("", qa),
			want: map[string][2]int{"a": {7, 7}},
		},
		{
			name: "duplicate store then two removes is gone",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 7, "GPU", ""), stored(sa, qa, 0, 7, "GPU", "")}},
				{w: wA, evs: []proto.Event{removed(sa, qa, 0, 7, "GPU"), removed(sa, qa, 0, 7, "GPU")}},
			},
			req:  chain("", qa),
			want: map[string][2]int{},
			stats: func(t *testing.T, s Stats) {
				if s.Blocks != 0 || len(s.Workers) != 1 || s.Workers[0].EngineEntries != 0 {
					t.Errorf("stats after removing everything: %+v", s)
				}
			},
		},
		{
			name: "a reference count saturates at refMax and then never drops",
			steps: []step{
				{fn: func(ix *Index) {
					for range refMax + 1 {
						ix.Apply(wA, "m", batch(stored(1, doc(1, 2), 0, 2, "GPU", "")))
					}
					for range refMax + 1 {
						ix.Apply(wA, "m", batch(removed(1, doc(1, 2), 0, 2, "GPU")))
					}
				}},
			},
			req:  chain("", doc(1, 2)),
			want: map[string][2]int{"a": {2, 2}},
		},
		{
			name: "remove in the middle leaves children unreachable",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 7, "GPU", ""), removed(sa, qa, 3, 4, "GPU")}},
			},
			req:  chain("", qa),
			want: map[string][2]int{"a": {3, 3}},
			stats: func(t *testing.T, s Stats) {
				if s.Blocks != 6 || s.Workers[0].Blocks[TierGPU] != 6 {
					t.Errorf("children must stay indexed: Blocks %d, worker GPU blocks %d, want 6 and 6", s.Blocks, s.Workers[0].Blocks[TierGPU])
				}
			},
		},
		{
			name: "children re-stored after a removed parent still chain (parent mapping kept by refcount)",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 7, "GPU", ""), removed(sa, qa, 3, 4, "GPU"), stored(sa, qa, 3, 4, "GPU", "")}},
			},
			req:  chain("", qa),
			want: map[string][2]int{"a": {7, 7}},
		},
		{
			name: "AllBlocksCleared wipes only that worker",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 7, "GPU", "")}},
				{w: wB, evs: []proto.Event{stored(sb, qa, 0, 5, "GPU", "")}},
				{w: wA, evs: []proto.Event{{Kind: proto.AllBlocksCleared}}},
			},
			req:  chain("", qa),
			want: map[string][2]int{"b": {5, 5}},
			stats: func(t *testing.T, s Stats) {
				if s.Clears != 1 || s.Workers[0].Blocks != [NumTiers]int64{} {
					t.Errorf("after clear: clears %d, a's blocks %v", s.Clears, s.Workers[0].Blocks)
				}
			},
		},
		{
			name: "events after AllBlocksCleared in the same batch apply",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 7, "GPU", ""), {Kind: proto.AllBlocksCleared}, stored(sa, qa, 0, 2, "GPU", "")}},
			},
			req:  chain("", qa),
			want: map[string][2]int{"a": {2, 2}},
		},
		{
			name: "unknown parent is dropped",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 2, 5, "GPU", "")}},
			},
			req:  chain("", qa),
			want: map[string][2]int{},
			stats: func(t *testing.T, s Stats) {
				if s.Dropped[DropUnknownParent] != 3 || s.Blocks != 0 {
					t.Errorf("dropped %v blocks %d, want 3 unknown_parent and no block", s.Dropped, s.Blocks)
				}
			},
		},
		{
			name: "CPU offload without tokens resolves known blocks and drops unknown ones",
			opts: Options{TierWeights: &[NumTiers]float64{TierGPU: 1, TierCPU: 0.5}},
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 3, "GPU", "")}},
				{w: wA, evs: []proto.Event{
					{Kind: proto.BlockStored, BlockHashes: engineHashes(sa, qa, 0, 5), Medium: "CPU"},
					removed(sa, qa, 0, 3, "GPU"),
				}},
			},
			req:  chain("", qa),
			want: map[string][2]int{"a": {3, 3}},
			stats: func(t *testing.T, s Stats) {
				w := s.Workers[0]
				if w.Blocks[TierCPU] != 3 || w.Blocks[TierGPU] != 0 || s.Dropped[DropMissingTokens] != 2 {
					t.Errorf("tiers %v dropped %v, want 3 CPU blocks, 0 GPU, 2 missing_tokens", w.Blocks, s.Dropped)
				}
			},
		},
		{
			name: "CPU-only blocks do not count by default",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 3, "CPU", "")}},
			},
			req:  chain("", qa),
			want: map[string][2]int{},
			stats: func(t *testing.T, s Stats) {
				if s.Workers[0].Blocks[TierCPU] != 3 {
					t.Errorf("CPU blocks %d, want 3 (tracked, not matched)", s.Workers[0].Blocks[TierCPU])
				}
			},
		},
		{
			name: "GPU then CPU tail: leading run stops at the CPU block by default",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 3, "GPU", ""), stored(sa, qa, 3, 6, "CPU", "")}},
			},
			req:  chain("", qa),
			want: map[string][2]int{"a": {3, 3}},
		},
		{
			name: "LoRA adapters have separate chains",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 7, "GPU", "sql")}},
				{w: wB, evs: []proto.Event{stored(sb, qa, 0, 7, "GPU", "")}},
			},
			req:  chain("sql", qa),
			want: map[string][2]int{"a": {7, 7}},
		},
		{
			name: "DP ranks are separate workers (from the batch's rank)",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 7, "GPU", "")}},
				{fn: func(ix *Index) {
					b := batch(stored(sa+1, qa, 0, 2, "GPU", ""))
					b.DPRank = 1
					ix.Apply(wA, "m", b)
				}},
				{w: wA1, evs: []proto.Event{removed(sa, qa, 0, 7, "GPU")}}, // rank 1 never stored these
			},
			req:  chain("", qa),
			want: map[string][2]int{"a": {7, 7}, "a#dp1": {2, 2}},
			stats: func(t *testing.T, s Stats) {
				if s.Dropped[DropUnknownBlock] != 7 {
					t.Errorf("removes on rank 1 of rank 0's blocks: dropped %v, want 7 unknown_block", s.Dropped)
				}
			},
		},
		{
			name: "block size mismatch is dropped and counted",
			opts: Options{BlockSize: 16},
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 7, "GPU", "")}},
			},
			req:  chain("", qa),
			want: map[string][2]int{},
			stats: func(t *testing.T, s Stats) {
				if s.Dropped[DropBlockSizeMismatch] != 7 {
					t.Errorf("dropped %v, want 7 block_size_mismatch", s.Dropped)
				}
			},
		},
		{
			name: "bad token count is dropped",
			steps: []step{
				{w: wA, evs: []proto.Event{{Kind: proto.BlockStored, BlockHashes: engineHashes(sa, qa, 0, 2), TokenIDs: qa[:7], BlockSize: 4}}},
				{w: wA, evs: []proto.Event{{Kind: proto.BlockStored, BlockHashes: engineHashes(sa, qa, 0, 2), TokenIDs: qa[:7]}}},
			},
			req:  chain("", qa),
			want: map[string][2]int{},
			stats: func(t *testing.T, s Stats) {
				if s.Dropped[DropBadTokenCount] != 4 {
					t.Errorf("dropped %v, want 4 bad_token_count", s.Dropped)
				}
			},
		},
		{
			name: "block size inferred from token count",
			steps: []step{
				{w: wA, evs: []proto.Event{{Kind: proto.BlockStored, BlockHashes: engineHashes(sa, qa, 0, 2), TokenIDs: qa[:8]}}},
			},
			req:  chain("", qa),
			want: map[string][2]int{"a": {2, 2}},
		},
		{
			name: "two engine hashes for the same content: block held until both are removed",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 3, "GPU", ""), stored(sa+7, qa, 0, 3, "GPU", ""), removed(sa, qa, 0, 3, "GPU")}},
			},
			req:  chain("", qa),
			want: map[string][2]int{"a": {3, 3}},
		},
		{
			name: "engine id reused for other content moves the block",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 1, "GPU", ""), {
					Kind: proto.BlockStored, BlockHashes: engineHashes(sa, qa, 0, 1), TokenIDs: doc(9, 1), BlockSize: bs}}},
			},
			req:  chain("", doc(9, 1)),
			want: map[string][2]int{"a": {1, 1}},
			stats: func(t *testing.T, s Stats) {
				if s.Blocks != 1 {
					t.Errorf("Blocks %d, want 1 (the old content forgotten)", s.Blocks)
				}
			},
		},
		{
			name: "ClearWorker and RemoveWorker",
			steps: []step{
				{w: wA, evs: []proto.Event{stored(sa, qa, 0, 7, "GPU", "")}},
				{w: wB, evs: []proto.Event{stored(sb, qa, 0, 7, "GPU", "")}},
				{fn: func(ix *Index) { ix.ClearWorker(wA); ix.RemoveWorker(wB) }},
			},
			req:  chain("", qa),
			want: map[string][2]int{},
			stats: func(t *testing.T, s Stats) {
				if s.Blocks != 0 || len(s.Workers) != 1 || s.Workers[0].Worker != wA {
					t.Errorf("after clear+remove: blocks %d workers %+v, want 0 blocks and only a", s.Blocks, s.Workers)
				}
			},
		},
		{
			name: "removing an unknown block is counted, not fatal",
			steps: []step{
				{w: wA, evs: []proto.Event{removed(sa, qa, 0, 2, "GPU"), {Kind: 99, BlockHashes: []proto.EngineHash{1}}}},
			},
			req:  chain("", qa),
			want: map[string][2]int{},
			stats: func(t *testing.T, s Stats) {
				if s.Dropped[DropUnknownBlock] != 2 || s.Dropped[DropUnknownKind] != 1 || s.Events[0] != 1 {
					t.Errorf("dropped %v events %v", s.Dropped, s.Events)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ix, _ := newIndex(t, tc.opts)
			for _, st := range tc.steps {
				if st.fn != nil {
					st.fn(ix)
					continue
				}
				ix.Apply(st.w, "m", batch(st.evs...))
			}
			got := matchMap(ix, tc.req)
			if !maps.Equal(got, tc.want) {
				t.Errorf("Match = %v, want %v", got, tc.want)
			}
			s := ix.Stats()
			if tc.stats != nil {
				tc.stats(t, s)
			}
			checkInvariants(t, ix)
		})
	}
}

// checkInvariants verifies the per-worker counts against a full scan of the nodes, and
// that every node flag is backed by an engine entry or a prediction.
func checkInvariants(t *testing.T, ix *Index) {
	t.Helper()
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	counts := map[uint32]*[numTiers + 1]int64{}
	if err := ix.nodes.Check(); err != nil {
		t.Errorf("node table: %v", err)
	}
	ix.nodes.Range(func(key uint64, val, _ uint32) bool {
		ms := ix.sets.members(setID(val))
		if len(ms) == 0 {
			t.Errorf("node %x has an empty holder set", key)
		}
		for _, c := range ms {
			ws := ix.workers[codeWID(c)]
			if ws == nil {
				t.Errorf("node %x held by freed wid %d", key, codeWID(c))
				continue
			}
			f := codeFlags(c)
			if counts[ws.wid] == nil {
				counts[ws.wid] = new([numTiers + 1]int64)
			}
			for tier := 0; tier < numTiers; tier++ {
				if f&(1<<tier) != 0 {
					counts[ws.wid][tier]++
				}
			}
			if f&flagPredicted != 0 {
				counts[ws.wid][numTiers]++
				if _, ok := ws.pred.get(proto.BlockHash(key)); !ok {
					t.Errorf("node %x predicted for %v without a prediction entry", key, ws.key)
				}
			}
		}
		return true
	})
	pl := 0
	for _, ws := range ix.workers {
		if ws == nil {
			continue
		}
		c := counts[ws.wid]
		if c == nil {
			c = new([numTiers + 1]int64)
		}
		if [numTiers]int64(c[:numTiers]) != ws.blocks || c[numTiers] != ws.predicted {
			t.Errorf("worker %v counts %v/%d, scan says %v", ws.key, ws.blocks, ws.predicted, c)
		}
		pl += ws.pred.len()
	}
	if pl != ix.predLive {
		t.Errorf("predLive %d, prediction maps hold %d", ix.predLive, pl)
	}
}

func TestPredictedEntries(t *testing.T) {
	qa := cat(doc(1, 4), doc(2, 3))
	ix, clk := newIndex(t, Options{PredictedTTL: 10 * time.Second})
	req := chain("", qa)
	ix.Apply(wA, "m", batch(stored(1, qa, 0, 2, "GPU", "")))
	ix.Predict(wA, req, 0)
	ix.Predict(wB, req[:5], 30*time.Second)
	if got, want := matchMap(ix, req), map[string][2]int{"a": {7, 2}, "b": {5, 0}}; !maps.Equal(got, want) {
		t.Fatalf("with predictions: Match = %v, want %v", got, want)
	}
	if s := ix.Stats(); s.PredictedEntries != 10 || s.Workers[0].Predicted != 5 {
		t.Errorf("predicted entries %d (a: %d), want 10 (a: 5; its 2 stored blocks are not predicted)", s.PredictedEntries, s.Workers[0].Predicted)
	}
	// A real store confirms predicted blocks 2 and 3.
	ix.Apply(wA, "m", batch(stored(1, qa, 2, 4, "GPU", "")))
	if got, want := matchMap(ix, req), map[string][2]int{"a": {7, 4}, "b": {5, 0}}; !maps.Equal(got, want) {
		t.Fatalf("after confirm: Match = %v, want %v", got, want)
	}
	// A real remove of block 3 drops it, prediction or not: the chain breaks there.
	ix.Apply(wA, "m", batch(removed(1, qa, 3, 4, "GPU")))
	if got, want := matchMap(ix, req), map[string][2]int{"a": {3, 3}, "b": {5, 0}}; !maps.Equal(got, want) {
		t.Fatalf("after confirm+remove: Match = %v, want %v", got, want)
	}
	checkInvariants(t, ix)
	// Expiry: a's predictions at 10 s, b's at 30 s; no sleeping, the clock is injected.
	clk.Advance(10 * time.Second)
	ix.Sweep()
	if got, want := matchMap(ix, req), map[string][2]int{"a": {3, 3}, "b": {5, 0}}; !maps.Equal(got, want) {
		t.Fatalf("after 10 s: Match = %v, want %v", got, want)
	}
	clk.Advance(20 * time.Second)
	ix.Sweep()
	if got, want := matchMap(ix, req), map[string][2]int{"a": {3, 3}}; !maps.Equal(got, want) {
		t.Fatalf("after 30 s: Match = %v, want %v", got, want)
	}
	s := ix.Stats()
	if s.PredictedEntries != 0 || s.PredictedExpired != 8 {
		t.Errorf("predicted live %d expired %d, want 0 and 8 (a's blocks 4..6, b's 0..4)", s.PredictedEntries, s.PredictedExpired)
	}
	checkInvariants(t, ix)
}

func TestPredictedRefreshAndCap(t *testing.T) {
	qa := doc(1, 8)
	req := chain("", qa)
	ix, clk := newIndex(t, Options{PredictedTTL: 10 * time.Second, MaxPredicted: 6})
	ix.Predict(wA, req[:4], 0)
	clk.Advance(8 * time.Second)
	ix.Predict(wA, req[:2], 0) // refresh blocks 0, 1 until t=18
	clk.Advance(4 * time.Second)
	ix.Sweep() // t=12: blocks 2, 3 expire, 0, 1 live
	if got, want := matchMap(ix, req), map[string][2]int{"a": {2, 0}}; !maps.Equal(got, want) {
		t.Fatalf("after refresh: Match = %v, want %v", got, want)
	}
	// Cap: 2 live + 8 new > 6: the earliest-expiring (a's refreshed 0 and 1, then b's
	// first two) go first.
	ix.Predict(wB, req, 0)
	s := ix.Stats()
	if s.PredictedEntries != 6 || s.Evictions[EvictPredicted] != 4 {
		t.Errorf("live %d evicted %d, want 6 and 4", s.PredictedEntries, s.Evictions[EvictPredicted])
	}
	checkInvariants(t, ix)
	// Among b's equal expiries the heap order is unspecified, but a's (earlier) go first.
	if a, b := s.Workers[0], s.Workers[1]; a.Predicted != 0 || b.Predicted != 6 {
		t.Errorf("predicted a %d b %d, want 0 and 6", a.Predicted, b.Predicted)
	}
}

func TestEvictionBound(t *testing.T) {
	const maxBlocks = 500
	ix, clk := newIndex(t, Options{MaxBlocks: maxBlocks, MaxBlocksPerWorker: 300})
	hot := doc(0, 20)
	ix.Apply(wA, "m", batch(stored(1, hot, 0, 20, "GPU", "")))
	for d := 1; d <= 200; d++ {
		clk.Advance(time.Second)
		ix.Match(chain("", hot), nil) // keep the hot chain recently used
		toks := doc(d, 10)
		w := []proto.WorkerKey{wA, wB}[d%2]
		ix.Apply(w, "m", batch(stored(uint64(d%2), toks, 0, 10, "GPU", "")))
		if n := ix.Stats().Blocks; n > maxBlocks {
			t.Fatalf("after doc %d: %d blocks indexed, bound %d", d, n, maxBlocks)
		}
	}
	s := ix.Stats()
	if s.Evictions[EvictCapacity] == 0 {
		t.Error("no capacity eviction counted")
	}
	for _, w := range s.Workers {
		if w.EngineEntries > 300 {
			t.Errorf("worker %v has %d engine entries, cap 300", w.Worker, w.EngineEntries)
		}
	}
	if s.Evictions[EvictWorkerCapacity] == 0 {
		t.Error("no per-worker eviction counted")
	}
	if got := matchMap(ix, chain("", hot)); got["a"][0] != 20 {
		t.Errorf("hot chain evicted despite being matched every second: %v", got)
	}
	checkInvariants(t, ix)
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []Options{
		{MaxBlocks: -1},
		{PredictedWeight: -0.5},
		{TierWeights: &[NumTiers]float64{TierGPU: -1}},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) accepted an invalid option", o)
		}
	}
}

func TestScoreWeights(t *testing.T) {
	qa := doc(1, 6)
	ix, _ := newIndex(t, Options{TierWeights: &[NumTiers]float64{TierGPU: 1, TierCPU: 0.5}, PredictedWeight: 0.25})
	ix.Apply(wA, "m", batch(stored(1, qa, 0, 2, "GPU", ""), stored(1, qa, 2, 4, "CPU", "")))
	ix.Predict(wA, chain("", qa), 0)
	ms := ix.Match(chain("", qa), nil)
	if len(ms) != 1 || ms[0].Blocks != 6 || ms[0].Confirmed != 4 || ms[0].Score != 2*1+2*0.5+2*0.25 {
		t.Errorf("Match = %+v, want 6 blocks, 4 confirmed, score 3.5", ms)
	}
	ix2, _ := newIndex(t, Options{IgnorePredicted: true})
	ix2.Predict(wA, chain("", qa), 0)
	if ms := ix2.Match(chain("", qa), nil); len(ms) != 0 {
		t.Errorf("IgnorePredicted: Match = %+v, want nothing", ms)
	}
}

// TestClearEventsKeepsPredictions: ClearEvents (a feed's first batch) drops the worker's
// event-backed blocks on every tier but keeps the router's predictions; ClearWorker drops
// both.
func TestClearEventsKeepsPredictions(t *testing.T) {
	qa := cat(doc(1, 4), doc(2, 4))
	req := chain("", qa)
	ix, _ := newIndex(t, Options{})
	ix.Apply(wA, "m", batch(stored(1, qa, 0, 3, "GPU", ""), stored(1, qa, 0, 2, "CPU", "")))
	ix.Predict(wA, req, time.Minute) // blocks 3..7 predicted; 0..2 already held
	ix.Predict(wB, req[:2], time.Minute)
	if got, want := matchMap(ix, req), map[string][2]int{"a": {8, 3}, "b": {2, 0}}; !maps.Equal(got, want) {
		t.Fatalf("before clear: Match = %v, want %v", got, want)
	}
	ix.ClearEvents(wA)
	checkInvariants(t, ix)
	// Blocks 0..2 were held, not predicted: gone; the chain now starts at a gap.
	if got, want := matchMap(ix, req), map[string][2]int{"b": {2, 0}}; !maps.Equal(got, want) {
		t.Fatalf("after ClearEvents: Match = %v, want %v", got, want)
	}
	if got, want := matchMap(ix, req[3:]), map[string][2]int{"a": {5, 0}}; !maps.Equal(got, want) {
		t.Fatalf("after ClearEvents, predicted tail: Match = %v, want %v", got, want)
	}
	s := ix.Stats()
	if w := s.Workers[0]; w.Worker != wA || w.Blocks != [NumTiers]int64{} || w.Predicted != 5 || w.EngineEntries != 0 {
		t.Errorf("after ClearEvents: worker a %+v, want no blocks, no engine entries, 5 predicted", w)
	}
	// The worker's events resume on the same engine ids.
	ix.Apply(wA, "m", batch(stored(1, qa, 0, 4, "GPU", "")))
	if got, want := matchMap(ix, req), map[string][2]int{"a": {8, 4}, "b": {2, 0}}; !maps.Equal(got, want) {
		t.Fatalf("after new events: Match = %v, want %v", got, want)
	}
	checkInvariants(t, ix)
	ix.ClearWorker(wA)
	if got, want := matchMap(ix, req), map[string][2]int{"b": {2, 0}}; !maps.Equal(got, want) {
		t.Fatalf("after ClearWorker: Match = %v, want %v", got, want)
	}
	if got := matchMap(ix, req[3:]); len(got) != 0 {
		t.Fatalf("after ClearWorker, predicted tail: Match = %v, want nothing", got)
	}
	if w := ix.Stats().Workers[0]; w.Predicted != 0 || w.Blocks != [NumTiers]int64{} {
		t.Errorf("after ClearWorker: worker a %+v, want nothing", w)
	}
	ix.ClearEvents(proto.WorkerKey{ID: "unknown"}) // no-op
	checkInvariants(t, ix)
}
