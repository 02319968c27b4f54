package stack

import (
	"bytes"
	"encoding/json"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/router/admin"
)

// completeCached sends a one-token completion of toks to base and returns the worker the
// router chose ("" when base is a worker) and the reply's usage cached_tokens.
func completeCached(t *testing.T, client *http.Client, base string, toks []uint32) (string, int) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"model": "m", "prompt": toks, "max_tokens": 1, "ignore_eos": true})
	resp, err := client.Post(base+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("completion via %s: %d %s", base, resp.StatusCode, b)
	}
	var out struct {
		Usage sim.Usage `json:"usage"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return resp.Header.Get("x-kvroute-worker"), out.Usage.PromptTokensDetails.CachedTokens
}

// TestCPUTierRouting runs kvsim workers with a CPU offload tier behind a router with
// cache_aware.tier_weights cpu 0.5, over real ZMQ feeds: a prompt evicted from its
// worker's GPU cache stays indexed on that worker's CPU tier (the query API's tiers say
// so), the router sends the prompt back there rather than to the idle worker holding
// nothing, the worker loads it back (cached tokens in the usage, GPU tier indexed
// again), and once the CPU tier evicts it too the index forgets it.
func TestCPUTierRouting(t *testing.T) {
	const blocks = 20 // the prompt's full blocks
	ss := startSimStack(t, 2, func(fc *sim.FleetConfig, cfg *configs.Config) {
		fc.Worker.BlockSize, fc.Worker.KVBlocks, fc.Worker.CPUBlocks = itBlockSize, 40, 100
		cfg.CacheAware.TierWeights["cpu"] = 0.5
		cfg.Admin.Listen = "127.0.0.1:0"
	})
	client := &http.Client{Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	rng := rand.New(rand.NewPCG(19, 19))
	tokens := func(n int) []uint32 {
		t := make([]uint32, n)
		for i := range t {
			t[i] = 100 + uint32(rng.IntN(30000))
		}
		return t
	}
	workers := map[string]*sim.Worker{}
	for _, w := range ss.fleet.Workers() {
		workers[w.ID()] = w
	}
	// tiersOf polls the query API for the prompt's tier counts per worker.
	tiersOf := func(toks []uint32) map[string]map[string]int {
		code, body := postQuery(t, client, ss.stack.AdminAddr(), map[string]any{"model": "m", "token_ids": toks})
		if code != http.StatusOK {
			t.Fatalf("query: %d %s", code, body)
		}
		var ans admin.IndexAnswer
		if err := json.Unmarshal(body, &ans); err != nil {
			t.Fatal(err)
		}
		out := map[string]map[string]int{}
		for _, w := range ans.Workers {
			out[w.ID] = w.Tiers
		}
		return out
	}
	waitTiers := func(what string, toks []uint32, want map[string]map[string]int) {
		t.Helper()
		var got map[string]map[string]int
		if !poll.Until(10*time.Second, func() bool {
			got = tiersOf(toks)
			return maps.EqualFunc(got, want, maps.Equal)
		}) {
			t.Fatalf("%s: index tiers %v, want %v", what, got, want)
		}
	}

	prompt := tokens(blocks*itBlockSize + 1)
	holder, cached := completeCached(t, client, ss.url, prompt)
	if cached != 0 || workers[holder] == nil {
		t.Fatalf("first run: worker %q, cached %d", holder, cached)
	}
	waitTiers("after the first run", prompt, map[string]map[string]int{holder: {"gpu": blocks, "cpu": blocks}})

	// Two 30-block prompts sent to the holder directly push the prompt out of its
	// 40-block GPU cache; the CPU tier (100 blocks) keeps it.
	h := workers[holder]
	for range 2 {
		completeCached(t, client, h.URL(), tokens(30*itBlockSize))
	}
	waitTiers("after GPU eviction", prompt, map[string]map[string]int{holder: {"cpu": blocks}})

	// Both workers idle: the CPU holder (20 blocks at 0.5) beats the other (nothing).
	loaded0 := h.Stats().CPULoadedTokens
	again, cached := completeCached(t, client, ss.url, prompt)
	if again != holder {
		t.Fatalf("prompt held on %s's CPU tier routed to %s", holder, again)
	}
	if cached != blocks*itBlockSize || h.Stats().CPULoadedTokens-loaded0 != blocks*itBlockSize {
		t.Errorf("load-back: cached_tokens %d, CPU-loaded tokens %d, want %d each",
			cached, h.Stats().CPULoadedTokens-loaded0, blocks*itBlockSize)
	}
	waitTiers("after the load-back", prompt, map[string]map[string]int{holder: {"gpu": blocks, "cpu": blocks}})

	// Four more 30-block prompts evict it from both tiers (BlockRemoved "CPU").
	for range 4 {
		completeCached(t, client, h.URL(), tokens(30*itBlockSize))
	}
	waitTiers("after CPU eviction", prompt, map[string]map[string]int{})
}
