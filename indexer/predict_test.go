package indexer

import (
	"testing"
	"time"

	"github.com/kvroute/kvroute/indexer/runtable"
	"github.com/kvroute/kvroute/proto"
)

// A refresh of a predicted chain (refreshRun, a run at a time) extends every block's
// expiry and touches the run for eviction, as a block-by-block refresh does.
func TestPredictRefreshTouchesRunAndExtends(t *testing.T) {
	ix, clk := newIndex(t, Options{})
	w := proto.WorkerKey{ID: "a"}
	hs := tagged(7, 100)
	ix.Predict(w, hs, time.Minute)
	_, first := ix.nowTick()
	clk.Advance(50 * time.Second)
	ix.Predict(w, hs, time.Minute)
	_, tick := ix.nowTick()
	if tick == first {
		t.Fatalf("the clock did not move the tick (%d)", tick)
	}
	_, touch, n, ok := runtable.Span(ix.nodes, hs[0], hs[1:])
	if !ok || n != len(hs)-1 {
		t.Fatalf("the chain is not one run: ok %v, %d following blocks", ok, n)
	}
	if *touch != tick {
		t.Errorf("run touched at tick %d, want %d (the refresh's)", *touch, tick)
	}
	// 20 s later the first expiry (60 s) has passed, the refreshed one (110 s) not.
	clk.Advance(20 * time.Second)
	ix.Sweep()
	if got := ix.Match(hs, nil); len(got) != 1 || got[0].Blocks != len(hs) {
		t.Fatalf("after the first expiry: %+v, want worker a holding all %d blocks", got, len(hs))
	}
	clk.Advance(50 * time.Second)
	ix.Sweep()
	if got := ix.Match(hs, nil); len(got) != 0 {
		t.Errorf("after the refreshed expiry: %+v, want no holder", got)
	}
}

// predExps returns the predicted expiries of w's blocks.
func predExps(ix *Index, w proto.WorkerKey) map[proto.BlockHash]int64 {
	m := map[proto.BlockHash]int64{}
	for _, e := range ix.AppendEntries(w, nil) {
		if e.Flags&FlagPredicted != 0 {
			m[e.Own] = e.PredExp
		}
	}
	return m
}

// TestPredictTips: a chain predicted again on the same worker less than TTL/8 after its
// last refresh keeps that refresh's expiry (predTips), its new blocks get the new one,
// and a refresh after TTL/8 extends every block; with ExactRefresh every refresh does.
func TestPredictTips(t *testing.T) {
	const ttl = 80 * time.Second
	for _, exact := range []bool{false, true} {
		ix, clk := newIndex(t, Options{PredictedTTL: ttl, ExactRefresh: exact})
		w := proto.WorkerKey{ID: "a"}
		hs := tagged(9, 25)
		t0 := clk.Now()
		at := func(d time.Duration) int64 { return t0.Add(d).UnixNano() }
		ix.Predict(w, hs[:20], 0)
		clk.Advance(5 * time.Second) // within ttl/8 = 10 s
		ix.Predict(w, hs, 0)
		exps := predExps(ix, w)
		for i, h := range hs {
			want := at(ttl + 5*time.Second)
			if i < 20 && !exact {
				want = at(ttl)
			}
			if exps[h] != want {
				t.Fatalf("exact %v, block %d after the second Predict: expiry %d, want %d", exact, i, exps[h], want)
			}
		}
		clk.Advance(7 * time.Second) // 12 s after the first refresh of hs[:20]
		ix.Predict(w, hs, 0)
		for i, h := range hs {
			if got, want := predExps(ix, w)[h], at(ttl+12*time.Second); got != want {
				t.Fatalf("exact %v, block %d after the third Predict: expiry %d, want %d", exact, i, got, want)
			}
		}
	}
}

// TestPredictTipsRepredicts: blocks of a recently predicted chain that the worker no
// longer holds (confirmed by an event, then removed; another worker holds them, so their
// nodes stay) are predicted again by a Predict within TTL/8, though the chain's other
// blocks are passed.
func TestPredictTipsRepredicts(t *testing.T) {
	ix, clk := newIndex(t, Options{PredictedTTL: 80 * time.Second})
	w, other := proto.WorkerKey{ID: "a"}, proto.WorkerKey{ID: "b"}
	toks := make([]uint32, 20*16)
	for i := range toks {
		toks[i] = uint32(i + 1)
	}
	hs := proto.HashBlocks(nil, proto.Seed("m", "", ""), toks, 16)
	eh := make([]proto.EngineHash, len(hs))
	for i, h := range hs {
		eh[i] = proto.EngineHash(h)
	}
	ix.Apply(other, "m", &proto.Batch{DPRank: -1, Events: []proto.Event{
		{Kind: proto.BlockStored, BlockHashes: eh, TokenIDs: toks, BlockSize: 16}}})
	ix.Predict(w, hs, 0)
	ix.Apply(w, "m", &proto.Batch{DPRank: -1, Events: []proto.Event{
		{Kind: proto.BlockStored, BlockHashes: eh, TokenIDs: toks, BlockSize: 16},
		{Kind: proto.BlockRemoved, BlockHashes: eh[5:10]},
	}})
	held := func() WorkerMatch {
		for _, m := range ix.Match(hs, nil) {
			if m.Worker == w {
				return m
			}
		}
		return WorkerMatch{}
	}
	if m := held(); m.Blocks != 5 {
		t.Fatalf("after the removal: %+v, want a holding 5 blocks", m)
	}
	clk.Advance(time.Second)
	ix.Predict(w, hs, 0)
	if m := held(); m.Blocks != len(hs) || m.Confirmed != 5 {
		t.Fatalf("after predicting again: %+v, want a holding all %d blocks, 5 confirmed", m, len(hs))
	}
	if n := len(predExps(ix, w)); n != 5 {
		t.Fatalf("%d predicted blocks, want the 5 removed ones", n)
	}
}

// TestPredictTipsShorterTTL: a Predict that lowers the expiry of blocks of a recorded
// chain (a prefix of it, with a shorter ttl) makes the worker forget its chains, so the
// next Predict of the whole chain refreshes every block.
func TestPredictTipsShorterTTL(t *testing.T) {
	ix, clk := newIndex(t, Options{})
	w := proto.WorkerKey{ID: "a"}
	hs := tagged(11, 20)
	t0 := clk.Now()
	ix.Predict(w, hs, 120*time.Second)
	clk.Advance(time.Second)
	ix.Predict(w, hs[:10], 10*time.Second) // not a recorded chain: block by block, lowered
	clk.Advance(time.Second)
	ix.Predict(w, hs, 120*time.Second)
	for i, h := range hs {
		if got, want := predExps(ix, w)[h], t0.Add(122*time.Second).UnixNano(); got != want {
			t.Fatalf("block %d: expiry %d, want %d", i, got, want)
		}
	}
}

// tagged returns n distinct block hashes marked with tag.
func tagged(tag uint64, n int) []proto.BlockHash {
	hs := make([]proto.BlockHash, n)
	for i := range hs {
		hs[i] = proto.BlockHash(tag<<32 | uint64(i+1))
	}
	return hs
}
