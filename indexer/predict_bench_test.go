package indexer

import (
	"testing"
	"time"

	"github.com/kvroute/kvroute/proto"
)

// BenchmarkPredictRefresh predicts a 512-block chain again on the worker that already
// has it predicted, as the router does for each turn of a conversation without KV events
// (bench/decision's turn 40): the cost of refreshing predictions. 64 such chains live
// on 8 workers; each op refreshes one. Reported per block. exact: every block is
// refreshed (Options.ExactRefresh); tips: the default, where a chain refreshed less than
// TTL/8 ago is passed a run at a time (predTips), as here.
func BenchmarkPredictRefresh(b *testing.B) {
	for _, exact := range []bool{true, false} {
		name := "tips"
		if exact {
			name = "exact"
		}
		b.Run(name, func(b *testing.B) { benchPredictRefresh(b, exact) })
	}
}

func benchPredictRefresh(b *testing.B, exact bool) {
	ix, err := New(Options{ExactRefresh: exact})
	if err != nil {
		b.Fatal(err)
	}
	const chains, blocks = 64, 512
	hs := make([][]proto.BlockHash, chains)
	for c := range hs {
		hs[c] = make([]proto.BlockHash, blocks)
		for i := range hs[c] {
			hs[c][i] = proto.BlockHash(uint64(c+1)<<32 | uint64(i+1))
		}
		ix.Predict(proto.WorkerKey{ID: string(rune('a' + c%8))}, hs[c], time.Hour)
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		c := i % chains
		ix.Predict(proto.WorkerKey{ID: string(rune('a' + c%8))}, hs[c], time.Hour)
		i++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*blocks), "ns/block")
}
