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
	hs := make([]proto.BlockHash, 100)
	for i := range hs {
		hs[i] = proto.BlockHash(uint64(7)<<32 | uint64(i+1))
	}
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
