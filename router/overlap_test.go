package router

import (
	"testing"
	"time"

	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
)

// rankBlockSize is the block size of TestPredictionUnderRankZeroCountsForTheWorker
// (moved here from the Stack's index integration tests, cmd/stack, as it needs no Stack).
const rankBlockSize = 16

// A routing decision is predicted under DP rank 0 (router/cacheaware.go committed): the worker's
// overlap is the best of its ranks, so it covers the request whichever rank the engine
// picks, while the confirmed blocks stay on the rank whose events stored them.
func TestPredictionUnderRankZeroCountsForTheWorker(t *testing.T) {
	ix, err := indexer.New(indexer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	toks := make([]uint32, 4*rankBlockSize)
	for i := range toks {
		toks[i] = uint32(7 + i)
	}
	hashes := proto.HashBlocks(nil, proto.Seed("m", "", ""), toks, rankBlockSize)
	st := &routeState{hashes: hashes}
	ix.Predict(proto.WorkerKey{ID: "w"}, hashes[:3], time.Minute)
	st.matches = ix.Match(hashes, nil)
	if got := st.overlap("w"); got != 3 {
		t.Fatalf("overlap from the rank-0 prediction: %d, want 3", got)
	}
	// Rank 1 stores all four blocks (its batch names its rank).
	eng := []proto.EngineHash{1, 2, 3, 4}
	ix.Apply(proto.WorkerKey{ID: "w"}, "m", &proto.Batch{DPRank: 1, Events: []proto.Event{{
		Kind: proto.BlockStored, BlockHashes: eng, TokenIDs: toks, BlockSize: rankBlockSize, Medium: "GPU"}}})
	st.matches = ix.Match(hashes, st.matches)
	if got := st.overlap("w"); got != 4 {
		t.Fatalf("overlap after rank 1 stored the blocks: %d, want 4", got)
	}
	for _, m := range st.matches {
		switch m.Worker.DPRank {
		case 0:
			if m.Confirmed != 0 || m.Blocks != 3 {
				t.Errorf("rank 0: %d blocks, %d confirmed; want the 3 predicted, none confirmed", m.Blocks, m.Confirmed)
			}
		case 1:
			if m.Confirmed != 4 {
				t.Errorf("rank 1: %d confirmed, want 4", m.Confirmed)
			}
		}
	}
}
