package indexer_test

import (
	"fmt"
	"slices"
	"time"

	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
)

// The router's use of the index: events from the workers' sources go to Apply; each
// request's chain goes to Match; the chosen worker gets a prediction.
func Example() {
	ix, err := indexer.New(indexer.Options{BlockSize: 4})
	if err != nil {
		panic(err)
	}
	// Worker a stored a 3-block chain of model "m" (engine ids 101..103).
	tokens := []uint32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}
	a := proto.WorkerKey{ID: "http://a:8000"}
	ix.Apply(a, "m", &proto.Batch{DPRank: -1, Events: []proto.Event{{
		Kind:        proto.BlockStored,
		BlockHashes: []proto.EngineHash{101, 102, 103},
		TokenIDs:    tokens[:12],
		BlockSize:   4,
		Medium:      "GPU",
	}}})

	// A request with the same first 8 tokens then different ones.
	req := append(slices.Clone(tokens[:8]), 99, 98, 97, 96)
	hashes := proto.HashBlocks(nil, proto.Seed("m", "", ""), req, 4)
	buf := make([]indexer.WorkerMatch, 0, 64) // reused across requests: no allocation
	for _, m := range ix.Match(hashes, buf) {
		fmt.Printf("%s holds %d of %d blocks (%d confirmed)\n", m.Worker, m.Blocks, len(hashes), m.Confirmed)
	}

	// Route it to worker b and predict: b now matches the whole request until its events
	// confirm the blocks or the prediction expires.
	b := proto.WorkerKey{ID: "http://b:8000"}
	ix.Predict(b, hashes, 2*time.Minute)
	for _, m := range ix.Match(hashes, buf) {
		if m.Worker == b {
			fmt.Printf("%s holds %d of %d blocks (%d confirmed)\n", m.Worker, m.Blocks, len(hashes), m.Confirmed)
		}
	}
	// Output:
	// http://a:8000 holds 2 of 3 blocks (2 confirmed)
	// http://b:8000 holds 3 of 3 blocks (0 confirmed)
}
