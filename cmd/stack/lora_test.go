package stack

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/upstream"
)

// loraAnswer is what a test reads from one answer.
type loraAnswer struct {
	status       int
	worker       string
	cachedHeader string
	cached       int
	body         string
}

func loraPost(t *testing.T, client *http.Client, url, path string, body map[string]any) loraAnswer {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := client.Post(url+path, "application/json", strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	a := loraAnswer{status: resp.StatusCode, worker: resp.Header.Get("x-kvroute-worker"),
		cachedHeader: resp.Header.Get("x-kvroute-cached-blocks"), body: string(out)}
	var u struct {
		Usage struct {
			Details struct {
				Cached int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		} `json:"usage"`
	}
	if json.Unmarshal(out, &u) == nil {
		a.cached = u.Usage.Details.Cached
	}
	return a
}

// LoRA end to end (issue 18): kvsim workers serve adapters; an adapter's request is
// hashed under its base model and the adapter's name, so it matches the blocks the
// adapter's KV events report (lora_name), and never the base model's; an adapter served
// by one worker goes only there; an adapter nobody serves is 404 model_not_found.
func TestLoRAEndToEnd(t *testing.T) {
	ss := startSimStack(t, 2, func(fc *sim.FleetConfig, _ *configs.Config) { fc.Worker.LoRA = []string{"sql", "chat"} })
	client := &http.Client{Timeout: 30 * time.Second}
	t.Cleanup(client.CloseIdleConnections)

	// A third worker serves another adapter only it has.
	sc := ss.fleet.Workers()[0].Config()
	sc.LoRA = []string{"only"}
	solo, err := sim.StartWorker(t.Context(), "solo", sc, "127.0.0.1", 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = solo.Close() })
	info := solo.Info()
	pw, err := ss.stack.Pool.Add(configs.Worker{ID: "solo", URL: info.URL, Events: info.Events, Replay: info.Replay, MaxConns: 64}, upstream.SourceAPI)
	if err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, 10*time.Second, "solo to be available with its feed", func() bool {
		return pw.Available() && pw.Serves("only") && solo.EventsSubscribed()
	})

	// Blocks an adapter computed on a worker, told only by its KV events (sent straight to
	// the worker: the router made no prediction), are indexed under (base, adapter).
	toks := make([]int, 160) // 10 blocks
	for i := range toks {
		toks[i] = 1000 + i
	}
	ids := make([]uint32, len(toks))
	for i, v := range toks {
		ids[i] = uint32(v)
	}
	w0 := ss.fleet.Workers()[0]
	if a := loraPost(t, client, w0.URL(), "/v1/completions", map[string]any{"model": "sql", "prompt": toks, "max_tokens": 1}); a.status != 200 {
		t.Fatalf("direct adapter request: %d %s", a.status, a.body)
	}
	adapterHashes := proto.HashBlocks(nil, proto.Seed("m", "sql", ""), ids, 16)
	held := func(hs []proto.BlockHash) int {
		n := 0
		for _, m := range ss.stack.Index.Match(hs, nil) {
			if m.Worker.ID == w0.ID() {
				n = m.Blocks
			}
		}
		return n
	}
	poll.CheckFor(t, 10*time.Second, "the adapter's blocks indexed under (m, sql)", func() bool { return held(adapterHashes) == 10 })
	if n := held(proto.HashBlocks(nil, proto.Seed("m", "", ""), ids, 16)); n != 0 {
		t.Fatalf("the adapter's blocks match %d base-model blocks", n)
	}

	// Through the router the adapter's request goes where its blocks are and hits them.
	longer := append(toks[:len(toks):len(toks)], 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7)
	a := loraPost(t, client, ss.url, "/v1/completions", map[string]any{"model": "sql", "prompt": longer, "max_tokens": 1})
	if a.status != 200 || a.worker != w0.ID() || a.cachedHeader != "10/11" || a.cached != 160 {
		t.Fatalf("adapter request: status %d worker %s (want %s), x-kvroute-cached-blocks %q (want 10/11), cached %d (want 160): %s",
			a.status, a.worker, w0.ID(), a.cachedHeader, a.cached, a.body)
	}
	// The base model with the same prompt matches none of the adapter's blocks, and the
	// worker agrees.
	a = loraPost(t, client, ss.url, "/v1/completions", map[string]any{"model": "m", "prompt": longer, "max_tokens": 1})
	if a.status != 200 || a.cachedHeader != "0/11" || a.cached != 0 {
		t.Fatalf("base request: status %d, x-kvroute-cached-blocks %q (want 0/11), cached %d (want 0): %s", a.status, a.cachedHeader, a.cached, a.body)
	}

	// A chat on an adapter, hashed with the engine's /tokenize (named after the adapter):
	// its second turn hits the first's blocks, predicted and reported.
	msgs := []map[string]string{{"role": "system", "content": strings.Repeat("adapter system prompt words ", 40)}, {"role": "user", "content": "hello"}}
	first := loraPost(t, client, ss.url, "/v1/chat/completions", map[string]any{"model": "chat", "messages": msgs, "max_tokens": 4})
	if first.status != 200 {
		t.Fatalf("chat: %d %s", first.status, first.body)
	}
	msgs = append(msgs, map[string]string{"role": "assistant", "content": "ok"}, map[string]string{"role": "user", "content": "more"})
	second := loraPost(t, client, ss.url, "/v1/chat/completions", map[string]any{"model": "chat", "messages": msgs, "max_tokens": 4})
	var overlap, total int
	if _, err := fmt.Sscanf(second.cachedHeader, "%d/%d", &overlap, &total); err != nil || overlap == 0 || second.worker != first.worker || second.cached < overlap*16 {
		t.Fatalf("second chat turn: worker %s (first %s), x-kvroute-cached-blocks %q, cached %d", second.worker, first.worker, second.cachedHeader, second.cached)
	}
	if d := ss.stack.Server.Decisions(1); len(d) != 1 || !d[0].Exact {
		t.Fatalf("the adapter's chat was not hashed exactly (engine /tokenize): %+v", d)
	}

	// An adapter one worker serves goes only there.
	for i := range 4 {
		a := loraPost(t, client, ss.url, "/v1/completions", map[string]any{"model": "only", "prompt": fmt.Sprintf("request %d", i), "max_tokens": 1})
		if a.status != 200 || a.worker != "solo" {
			t.Fatalf("adapter only solo serves: status %d, worker %q: %s", a.status, a.worker, a.body)
		}
	}
	// An adapter nobody serves.
	a = loraPost(t, client, ss.url, "/v1/completions", map[string]any{"model": "nope", "prompt": "x", "max_tokens": 1})
	if a.status != http.StatusNotFound || !strings.Contains(a.body, `"code":"model_not_found"`) {
		t.Fatalf("unknown adapter: status %d: %s", a.status, a.body)
	}
}
