package workload

import (
	"context"
	"slices"
	"testing"

	"github.com/kvroute/kvroute/bench/sim"
)

// TestReplayCountsTokensNotChunks replays against a kvsim worker that streams several
// tokens per chunk: Outcome.Tokens must be the output tokens (usage), not the chunks, so
// output tokens/s stays right with kvbench run --stream-chunk-tokens.
func TestReplayCountsTokensNotChunks(t *testing.T) {
	fc := sim.DefaultFleetConfig()
	fc.Workers = 1
	fc.Worker.Model = "m"
	fc.Worker.StreamChunkTokens = 4
	fleet, err := sim.StartFleet(context.Background(), fc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fleet.Close() })
	w := &Workload{Name: "t", Requests: []Request{
		{Prompt: fillTokens(nil, "t", 1, 40), MaxTokens: 10, Prev: -1},
		{Prompt: fillTokens(nil, "t", 2, 40), MaxTokens: 1, Prev: -1},
	}}
	outs, err := Replay(context.Background(), w, ReplayConfig{URL: fleet.Infos()[0].URL, Model: "m"})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []int{10, 1} {
		if o := outs[i]; o.Err != "" || o.Tokens != want || o.Prompt != 40 {
			t.Errorf("request %d: %+v, want %d tokens of a 40-token prompt", i, o, want)
		}
	}
	if outs[0].ITL <= 0 || outs[0].ITL > outs[0].E2E {
		t.Errorf("ITL %v out of (0, E2E %v]", outs[0].ITL, outs[0].E2E)
	}
}

// SpreadModels keeps a conversation on one model and conversations opening with the same
// prompt block together, alternating models between such groups.
func TestSpreadModels(t *testing.T) {
	sys := func(g uint64) []uint32 { return fillTokens(nil, "sys", g, 32) }
	w := &Workload{Requests: []Request{
		{Prompt: sys(1), Prev: -1}, // group 0
		{Prompt: sys(2), Prev: -1}, // group 1
		{Prompt: sys(1), Prev: -1}, // group 0
		{Prompt: sys(3), Prev: -1}, // group 2
		{Prompt: sys(9), Prev: 1},  // turn 2 of request 1's conversation
		{Prompt: sys(9), Prev: 4},
	}}
	got := SpreadModels(w, []string{"a", "b"})
	if want := []string{"a", "b", "a", "a", "b", "b"}; !slices.Equal(got, want) {
		t.Fatalf("models %v, want %v", got, want)
	}
	if SpreadModels(w, nil) != nil {
		t.Fatal("no models should spread nothing")
	}
}
