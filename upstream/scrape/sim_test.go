package scrape

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// TestScrapeKvsim scrapes real kvsim workers imitating vLLM and SGLang, through a
// running Scraper: the geometry must match the worker's configuration and capacity,
// and the prefix counters its own statistics after two requests sharing a prompt.
func TestScrapeKvsim(t *testing.T) {
	for _, engine := range []string{"vllm", "sglang"} {
		t.Run(engine, func(t *testing.T) {
			cfg := sim.DefaultFleetConfig()
			cfg.Worker.Engine = engine
			cfg.Worker.BlockSize = 32
			cfg.Worker.KVBlocks = 1000
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			fleet, err := sim.StartFleet(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = fleet.Close() })
			w := fleet.Workers()[0]

			prompt := strings.Repeat("the quick brown fox jumps over the lazy dog ", 40)
			for range 2 {
				complete(t, w.URL(), prompt)
			}
			st := w.Stats()

			var rec recorder
			s, err := New(Config{Interval: 10 * time.Millisecond},
				func() []Target { return []Target{{w.ID(), w.URL()}} }, rec.cb, nil)
			if err != nil {
				t.Fatal(err)
			}
			runScraper(t, s)
			poll.CheckFor(t, 10*time.Second, "a scrape", func() bool { return len(rec.of(w.ID())) > 0 })
			r := rec.of(w.ID())[0]
			if r.err != nil {
				t.Fatal(r.err)
			}
			got := r.sample
			if got.Engine != engine || got.BlockSize != 32 || got.NumBlocks != 1000 || st.TotalBlocks != 1000 {
				t.Errorf("got engine %q, block size %d, %d blocks; want %q, 32, 1000 (worker: %d)",
					got.Engine, got.BlockSize, got.NumBlocks, engine, st.TotalBlocks)
			}
			if got.PrefixQueries != float64(st.PromptTokens) || got.PrefixHits != float64(st.CachedTokens) || got.PrefixHits == 0 {
				t.Errorf("prefix counters %v/%v, worker stats %d prompt and %d cached tokens",
					got.PrefixHits, got.PrefixQueries, st.PromptTokens, st.CachedTokens)
			}
			if got.Running != 0 || got.Waiting != 0 || got.KVUsage < 0 || got.KVUsage > 1 {
				t.Errorf("idle worker: %+v", got)
			}
		})
	}
}

// complete sends one non-streaming completion and waits for it.
func complete(t *testing.T, base, prompt string) {
	t.Helper()
	body, err := json.Marshal(map[string]any{"model": "kvsim", "prompt": prompt, "max_tokens": 2})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(base+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("completion: status %d: %s", resp.StatusCode, b)
	}
}
