package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/router/blockhash"
)

// simStack is a router Stack in front of a kvsim fleet, both on loopback.
type simStack struct {
	fleet *sim.Fleet
	stack *Stack
	url   string
}

func startSimStack(t *testing.T, workers int, mutate func(*sim.FleetConfig, *configs.Config)) *simStack {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	fc := sim.DefaultFleetConfig()
	fc.Workers = workers
	fc.Worker.Model = "m"
	cfg := configs.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Health.Interval = 100 * time.Millisecond
	cfg.Health.EjectBase = 200 * time.Millisecond
	// fasthttp counts a connection that has not carried a request yet as busy for 5 s
	// after accepting it (net/http does the same), and HTTP clients dial spare ones.
	cfg.Timeouts.Shutdown = 30 * time.Second
	// The tests are about routing: give /tokenize time on a loaded test machine rather
	// than fall back to approx hashes (which prefix_test covers).
	cfg.Tokenize.Timeout = 10 * time.Second
	if mutate != nil {
		mutate(&fc, &cfg)
	}
	fleet, err := sim.StartFleet(ctx, fc)
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range fleet.Infos() {
		cfg.Workers = append(cfg.Workers, configs.Worker{ID: info.ID, URL: info.URL, Events: info.Events, Replay: info.Replay,
			MaxConns: 256, DPRanks: fc.Worker.DataParallelSize})
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	st, err := NewStack(&cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx, ln, func() { close(ready) }) }()
	<-ready
	t.Cleanup(func() {
		// The tests' clients use the default transport: hang up its idle keep-alive
		// connections so the drain does not wait for the server to time them out.
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stack: %v", err)
		}
		_ = fleet.Close()
	})
	ss := &simStack{fleet: fleet, stack: st, url: "http://" + ln.Addr().String()}
	// Every worker's event feed must be connected before the test's traffic, or its first
	// blocks would be missed.
	poll.CheckFor(t, 10*time.Second, "event feeds subscribed", func() bool {
		for _, w := range fleet.Workers() {
			if !w.EventsSubscribed() {
				return false
			}
		}
		return true
	})
	return ss
}

type chatResult struct {
	worker         string
	cachedHeader   string
	prompt, cached int
	reply          string
	status         int
	err            error
	started, ended time.Time
}

type chatMsg struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// chatOnce sends one non-streaming chat request and reads the usage the worker reported.
func chatOnce(client *http.Client, url string, msgs []chatMsg, maxTokens int) chatResult {
	body, _ := json.Marshal(map[string]any{"model": "m", "messages": msgs, "max_tokens": maxTokens})
	res := chatResult{started: time.Now()}
	resp, err := client.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(string(body)))
	if err != nil {
		res.err = err
		return res
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	res.ended = time.Now()
	res.status = resp.StatusCode
	res.worker = resp.Header.Get("x-kvroute-worker")
	res.cachedHeader = resp.Header.Get("x-kvroute-cached-blocks")
	if resp.StatusCode != 200 {
		res.err = fmt.Errorf("status %d: %s", resp.StatusCode, b)
		return res
	}
	var out struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
			Details      struct {
				Cached int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(b, &out); err != nil || len(out.Choices) == 0 {
		res.err = fmt.Errorf("bad completion %s: %w", b, err)
		return res
	}
	res.prompt, res.cached, res.reply = out.Usage.PromptTokens, out.Usage.Details.Cached, out.Choices[0].Message.Content
	return res
}

// chatStream sends one streaming chat request and reads the usage of its last chunk.
func chatStream(client *http.Client, url string, msgs []chatMsg, maxTokens int) chatResult {
	body, _ := json.Marshal(map[string]any{"model": "m", "messages": msgs, "max_tokens": maxTokens,
		"stream": true, "stream_options": map[string]any{"include_usage": true}})
	res := chatResult{started: time.Now()}
	resp, err := client.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(string(body)))
	if err != nil {
		res.err = err
		return res
	}
	defer resp.Body.Close()
	res.status, res.worker = resp.StatusCode, resp.Header.Get("x-kvroute-worker")
	res.cachedHeader = resp.Header.Get("x-kvroute-cached-blocks")
	b, err := io.ReadAll(resp.Body)
	res.ended = time.Now()
	if err != nil {
		res.err = fmt.Errorf("read stream: %w", err)
		return res
	}
	if resp.StatusCode != 200 || !strings.HasSuffix(string(b), "data: [DONE]\n\n") {
		res.err = fmt.Errorf("status %d, stream %.200q", resp.StatusCode, b)
		return res
	}
	for _, line := range strings.Split(string(b), "\n") {
		var chunk struct {
			Usage *struct {
				PromptTokens int `json:"prompt_tokens"`
				Details      struct {
					Cached int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			} `json:"usage"`
		}
		if l, ok := strings.CutPrefix(line, "data: "); ok && json.Unmarshal([]byte(l), &chunk) == nil && chunk.Usage != nil {
			res.prompt, res.cached = chunk.Usage.PromptTokens, chunk.Usage.Details.Cached
		}
	}
	return res
}

func someWords(rng *rand.Rand, n int) string {
	w := make([]string, n)
	for i := range w {
		w[i] = fmt.Sprintf("w%d", rng.IntN(5000))
	}
	return strings.Join(w, " ")
}

// Each turn of a conversation goes back to the worker holding its history: the worker
// reports at least 90% of the previous turn's prompt as cached.
func TestCacheAwareMultiTurnAffinity(t *testing.T) {
	multiTurnAffinity(t, startSimStack(t, 4, nil))
}

// TestCacheAwareMultiTurnAffinityEventLoop: the same through the event-loop data plane
// (router/dataplane.go), whose loops hash in engine mode off the loop.
func TestCacheAwareMultiTurnAffinityEventLoop(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the event loop runs on Linux only")
	}
	ss := startSimStack(t, 4, func(_ *sim.FleetConfig, cfg *configs.Config) {
		cfg.DataPlane = configs.DataPlaneEventLoop
	})
	multiTurnAffinity(t, ss)
	// The loops served every chat request: the one hand-off is this GET /metrics.
	resp, err := http.Get(ss.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "kvroute_router_dataplane_handoffs_total{") && line != `kvroute_router_dataplane_handoffs_total{reason="request"} 1` {
			t.Errorf("hand-offs: %s", line)
		}
	}
}

func multiTurnAffinity(t *testing.T, ss *simStack) {
	client := &http.Client{Timeout: 30 * time.Second}
	var wg sync.WaitGroup
	for u := 0; u < 8; u++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(u), 7))
			msgs := []chatMsg{{Role: "system", Content: someWords(rng, 300)}}
			prevPrompt, prevWorker := 0, ""
			for turn := 0; turn < 5; turn++ {
				msgs = append(msgs, chatMsg{Role: "user", Content: someWords(rng, 60)})
				r := chatOnce(client, ss.url, msgs, 24)
				if r.err != nil {
					t.Errorf("user %d turn %d: %v", u, turn, r.err)
					return
				}
				if turn > 0 {
					if r.worker != prevWorker {
						t.Errorf("user %d turn %d went to %s, its history is on %s", u, turn, r.worker, prevWorker)
					}
					if float64(r.cached) < 0.9*float64(prevPrompt) {
						t.Errorf("user %d turn %d: cached %d tokens, want >= 90%% of the previous prompt's %d", u, turn, r.cached, prevPrompt)
					}
					var overlap, total int
					if _, err := fmt.Sscanf(r.cachedHeader, "%d/%d", &overlap, &total); err != nil || overlap == 0 || overlap > total ||
						total != r.prompt/16 {
						t.Errorf("user %d turn %d: x-kvroute-cached-blocks %q, want overlap/%d with overlap > 0", u, turn, r.cachedHeader, r.prompt/16)
					}
				}
				prevPrompt, prevWorker = r.prompt, r.worker
				msgs = append(msgs, chatMsg{Role: "assistant", Content: r.reply})
			}
		}()
	}
	wg.Wait()
	if d := ss.stack.Server.Decisions(1); len(d) != 1 || len(d[0].Candidates) != 4 || !d[0].Exact {
		t.Errorf("decision log: %+v", d)
	}
}

// 100 users sharing one long system prompt arrive at once: the router spreads them over
// every worker (none above 2x the mean in flight) and still hits the shared prefix.
func TestCacheAwareSharedPrefixBurstSpreads(t *testing.T) {
	ss := startSimStack(t, 4, nil)
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 128}}
	t.Cleanup(client.CloseIdleConnections) // runs before the stack's drain (cleanups are LIFO)
	system := someWords(rand.New(rand.NewPCG(1, 1)), 1500)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for u := 0; u < 100; u++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(u), 99))
			msgs := []chatMsg{{Role: "system", Content: system}, {Role: "user", Content: someWords(rng, 30)}}
			if r := chatStream(client, ss.url, msgs, 64); r.err != nil {
				errs <- r.err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The load each routing decision saw: no worker above 2x the mean in flight, once
	// the burst has at least two requests per worker in flight.
	peak := 0.0
	for _, d := range ss.stack.Server.Decisions(256) {
		var total, top int64
		for _, c := range d.Candidates {
			total += c.InFlight
			top = max(top, c.InFlight)
		}
		if total >= 2*int64(len(d.Candidates)) {
			peak = max(peak, float64(top)*float64(len(d.Candidates))/float64(total))
		}
	}
	if peak > 2 {
		t.Errorf("at some decision one worker had %.2fx the mean in flight, want <= 2x", peak)
	}
	var cached, prompt uint64
	for _, w := range ss.fleet.Workers() {
		s := w.Stats()
		if s.Requests < 5 { // every worker takes a real share (the mean is 25)
			t.Errorf("worker %s served only %d of 100 requests", w.ID(), s.Requests)
		}
		cached += s.CachedTokens
		prompt += s.PromptTokens
	}
	// Each worker computes the shared prompt once; everything else of it is a hit.
	if hit := float64(cached) / float64(prompt); hit < 0.7 {
		t.Errorf("fleet hit rate %.2f, want >= 0.7 with a shared 1500-word system prompt", hit)
	}
}

// A worker killed mid-run takes no new traffic, and requests that start after it died
// see no error.
func TestCacheAwareWorkerKilledMidRun(t *testing.T) {
	ss := startSimStack(t, 3, func(_ *sim.FleetConfig, cfg *configs.Config) {
		cfg.Health.Interval = 50 * time.Millisecond
	})
	client := &http.Client{Timeout: 30 * time.Second}
	victim := ss.fleet.Workers()[1]
	var killedAt atomic.Int64
	var mu sync.Mutex
	var results []chatResult
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for u := 0; u < 6; u++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(u), 5))
			for ctx.Err() == nil {
				msgs := []chatMsg{{Role: "system", Content: someWords(rng, 200)}, {Role: "user", Content: someWords(rng, 20)}}
				r := chatOnce(client, ss.url, msgs, 8)
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(300 * time.Millisecond) // traffic on every worker before the kill
	killedAt.Store(time.Now().UnixNano())
	_ = victim.Close()
	poll.CheckFor(t, 5*time.Second, "victim ejected or unhealthy", func() bool {
		return !ss.stack.Pool.Worker(victim.ID()).Available()
	})
	detected := time.Now()
	time.Sleep(500 * time.Millisecond)
	cancel()
	wg.Wait()
	after, afterDetected := 0, 0
	for _, r := range results {
		if r.started.UnixNano() <= killedAt.Load() {
			continue // in flight when the worker died: may fail
		}
		after++
		if r.err != nil {
			t.Errorf("request started after the kill failed: %v", r.err)
		}
		if r.started.After(detected) {
			afterDetected++
			if r.worker == victim.ID() {
				t.Errorf("request routed to the dead worker after it was detected")
			}
		}
	}
	if after == 0 || afterDetected == 0 {
		t.Fatalf("no requests after the kill (%d) or after its detection (%d)", after, afterDetected)
	}
}

// TestTokenizeCacheEntriesBound checks that tokenize.cache_entries reaches the engine-mode
// /tokenize cache: distinct requests past the bound leave it at the bound.
func TestTokenizeCacheEntriesBound(t *testing.T) {
	ss := startSimStack(t, 1, func(_ *sim.FleetConfig, cfg *configs.Config) { cfg.Tokenize.CacheEntries = 3 })
	entries := func() float64 {
		mfs, err := ss.stack.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "kvroute_tokenize_cache_entries" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no kvroute_tokenize_cache_entries metric")
		return 0
	}
	for i := range 6 {
		r := chatOnce(http.DefaultClient, ss.url, []chatMsg{{Role: "user", Content: fmt.Sprintf("question %d about caches", i)}}, 2)
		if r.err != nil || r.status != http.StatusOK {
			t.Fatalf("request %d: status %d, %v", i, r.status, r.err)
		}
		if got, want := entries(), float64(min(i+1, 3)); got != want {
			t.Fatalf("after %d requests: %v cache entries, want %v", i+1, got, want)
		}
	}
}

// The config's default tokenize cache bound is the engine's own default (configs cannot
// import router/blockhash, so the number is written twice).
func TestTokenizeCacheEntriesDefault(t *testing.T) {
	if got, want := configs.Default().Tokenize.CacheEntries, blockhash.DefaultCacheEntries; got != want {
		t.Fatalf("configs default tokenize.cache_entries %d, blockhash.DefaultCacheEntries %d", got, want)
	}
}
