package indexer

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest/poll"
)

func TestHotPrefixes(t *testing.T) {
	ix, _ := newIndex(t, Options{SampleEvery: 1, HotPrefixes: 2})
	sys := doc(1, 3)
	qa, qb, qc := cat(sys, doc(2, 2)), cat(sys, doc(3, 2)), doc(4, 4)
	ix.Apply(wA, "m", batch(stored(1, qa, 0, 5, "GPU", "")))
	ix.Apply(wB, "m", batch(stored(2, qb, 0, 5, "GPU", "")))
	ix.Apply(wA1, "m", batch(stored(3, qc, 0, 4, "GPU", "")))
	for range 5 {
		ix.Match(chain("", qa), nil) // shared part: the 3-block system prompt
		ix.Match(chain("", qb), nil)
	}
	for range 3 {
		ix.Match(chain("", qc), nil) // held by one worker: its whole 4-block match
	}
	ix.Match(chain("", doc(9, 2)), nil) // no match: not tracked
	hot := ix.Stats().Hot
	if len(hot) != 2 {
		t.Fatalf("Hot = %+v, want 2 entries", hot)
	}
	h := hot[0]
	slices.SortFunc(h.Workers, compareKeys)
	if h.Depth != 3 || h.Matches != 10 || h.Hash != chain("", sys)[2] || !slices.Equal(h.Workers, []proto.WorkerKey{wA, wB}) {
		t.Errorf("hottest = %+v, want the system prompt: depth 3, 10 matches, workers a and b", h)
	}
	if h := hot[1]; h.Depth != 4 || h.Matches != 3 || !slices.Equal(h.Workers, []proto.WorkerKey{wA1}) {
		t.Errorf("second = %+v, want depth 4, 3 matches, worker a#dp1", h)
	}
}

// TestRunExpiresPredictions checks that Run sweeps without any write arriving.
func TestRunExpiresPredictions(t *testing.T) {
	ix, clk := newIndex(t, Options{})
	ix.Predict(wA, chain("", doc(1, 3)), time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { ix.Run(ctx, time.Millisecond) })
	defer func() { cancel(); wg.Wait() }()
	clk.Advance(2 * time.Second)
	poll.CheckFor(t, 5*time.Second, "Run to expire the predictions", func() bool { return ix.Stats().PredictedEntries == 0 })
}
