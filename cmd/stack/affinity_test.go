package stack

import (
	"net/http"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// With KV events, a worker that lost a prompt's blocks (here: its cache was reset) keeps
// the router's routing history for them, so the prompt's next turn returns to it
// instead of being placed by load alone; with affinity_weight 0 no history is kept.
func TestAffinityOutlivesEviction(t *testing.T) {
	ss := startSimStack(t, 2, func(_ *sim.FleetConfig, c *configs.Config) { c.CacheAware.AffinityWeight = 0.5 })
	if ss.stack.History == nil {
		t.Fatal("no routing history with KV events and affinity_weight 0.5")
	}
	toks := make([]uint32, 20*itBlockSize)
	for i := range toks {
		toks[i] = uint32(1000 + i)
	}
	hashes := proto.HashBlocks(nil, proto.Seed("m", "", ""), toks, itBlockSize)
	client := &http.Client{Timeout: 10 * time.Second}
	first := complete(t, client, ss.url, toks[:16*itBlockSize])
	var url string
	for _, info := range ss.fleet.Infos() {
		if info.ID == first {
			url = info.URL
		}
	}
	resp, err := client.Post(url+"/reset_prefix_cache", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	held := func(ix *indexer.Index) int {
		for _, m := range ix.Match(hashes, nil) {
			if m.Worker.ID == first {
				return m.Blocks
			}
		}
		return 0
	}
	poll.CheckFor(t, 5*time.Second, "the reset worker's blocks gone from the index", func() bool { return held(ss.stack.Index) == 0 })
	if got := held(ss.stack.History); got != 16 {
		t.Fatalf("routing history holds %d blocks of the prompt on %s, want 16", got, first)
	}
	// Both workers idle and holding nothing: only the history tells them apart.
	for range 3 {
		if got := complete(t, client, ss.url, toks); got != first {
			t.Fatalf("next turn went to %s, want %s, where the conversation was routed", got, first)
		}
	}
}

func TestNoHistoryByDefault(t *testing.T) {
	ss := startSimStack(t, 1, nil)
	if ss.stack.History != nil {
		t.Fatal("routing history kept with the default affinity_weight 0")
	}
}
