package blockhash

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest/poll"
)

func chatReq(t testing.TB, msgs []msg) *Request {
	return &Request{Model: "m", BlockSize: 16, Messages: rawJSON(t, msgs)}
}

// The engine mode's hashes are proto.HashBlocks over the ids the server returns, and
// the server is asked once per distinct request.
func TestEngineHashesAndCache(t *testing.T) {
	srv := newTokServer(t)
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, srv.URL, func(o *EngineOptions) { o.Metrics = m })
	ctx := t.Context()
	conv := conversation(3, 60)

	for turn, msgs := range conv {
		req := chatReq(t, msgs)
		want, _ := wordTok{}.EncodeChat(rawJSON(t, map[string]any{"messages": msgs}))
		wantHashes := proto.HashBlocks(nil, proto.Seed("m", "", ""), want, 16)
		for rep := range 3 {
			dst := make([]proto.BlockHash, 1, 64) // Hash appends after existing entries
			r, err := e.Hash(ctx, req, dst)
			if err != nil {
				t.Fatalf("turn %d rep %d: %v", turn, rep, err)
			}
			if !r.Exact || r.Tokens != len(want) || !slices.Equal(r.Hashes[1:], wantHashes) || len(wantHashes) == 0 {
				t.Fatalf("turn %d rep %d: got exact=%v tokens=%d %d hashes, want %d tokens %d hashes",
					turn, rep, r.Exact, r.Tokens, len(r.Hashes)-1, len(want), len(wantHashes))
			}
		}
		if got := srv.calls.Load(); got != int64(turn+1) {
			t.Fatalf("after turn %d: %d calls, want %d (one per turn)", turn, got, turn+1)
		}
	}
	if got := testutil.ToFloat64(m.hits); got != 6 {
		t.Errorf("cache hits = %v, want 6", got)
	}
	if got := testutil.ToFloat64(m.calls); got != 3 {
		t.Errorf("calls metric = %v, want 3", got)
	}
	if got := testutil.CollectAndCount(m.duration); got != 1 {
		t.Errorf("duration histogram series = %d", got)
	}
	if e.Len() != 3 {
		t.Errorf("cache holds %d entries, want 3", e.Len())
	}

	// The cache key covers seed and block size: another salt or block size is hashed
	// again from a new call, and an option change is a new request.
	salted := chatReq(t, conv[0])
	salted.CacheSalt = "s1"
	r, err := e.Hash(ctx, salted, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := wordTok{}.EncodeChat(rawJSON(t, map[string]any{"messages": conv[0]}))
	if !slices.Equal(r.Hashes, proto.HashBlocks(nil, proto.Seed("m", "", "s1"), want, 16)) {
		t.Fatal("salted request not hashed with the salted seed")
	}
	noGen := chatReq(t, conv[0])
	noGen.Options.AddGenerationPrompt = []byte("false")
	if _, err := e.Hash(ctx, noGen, nil); err != nil {
		t.Fatal(err)
	}
	if got := srv.calls.Load(); got != 5 {
		t.Fatalf("%d calls, want 5", got)
	}
}

// N concurrent identical requests make one call and all get its result.
func TestEngineSingleflight(t *testing.T) {
	srv := newTokServer(t)
	m, _ := NewMetrics(nil)
	e := newEngine(t, srv.URL, func(o *EngineOptions) { o.Metrics = m })
	release := srv.hold()
	defer release()
	req := chatReq(t, conversation(1, 200)[0])
	const n = 16
	results := make([]Result, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { results[i], errs[i] = e.Hash(t.Context(), req, nil) })
	}
	poll.CheckFor(t, 5*time.Second, "all requests waiting on one call", func() bool {
		return srv.calls.Load() == 1 && testutil.ToFloat64(m.shared) == n-1
	})
	release()
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		if !slices.Equal(results[i].Hashes, results[0].Hashes) || len(results[0].Hashes) == 0 {
			t.Fatalf("request %d got other hashes", i)
		}
	}
	if got := srv.calls.Load(); got != 1 {
		t.Fatalf("%d calls, want 1", got)
	}
}

// A waiter whose context ends stops waiting; the call goes on for the others.
func TestEngineWaiterCanceled(t *testing.T) {
	srv := newTokServer(t)
	e := newEngine(t, srv.URL, nil)
	release := srv.hold()
	defer release()
	req := chatReq(t, conversation(1, 20)[0])
	first := make(chan error, 1)
	go func() { _, err := e.Hash(context.Background(), req, nil); first <- err }()
	poll.CheckFor(t, 5*time.Second, "first call", func() bool { return srv.calls.Load() == 1 })
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := e.Hash(ctx, req, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled waiter: %v", err)
	}
	release()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
}

// A worker that accepts connections but never answers costs one timeout, then nothing
// during the cooldown; a refused connection fails at once.
func TestEngineDeadWorker(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // hold it open, never answer
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	m, _ := NewMetrics(nil)
	const timeout = 150 * time.Millisecond
	e := newEngine(t, "http://"+ln.Addr().String(), func(o *EngineOptions) {
		o.Timeout = timeout
		o.Cooldown = time.Hour
		o.Metrics = m
	})
	req := chatReq(t, conversation(1, 20)[0])
	start := time.Now()
	_, err = e.Hash(t.Context(), req, nil)
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("black-holed worker: got %v, want a deadline error", err)
	}
	if took < timeout || took > timeout+2*time.Second {
		t.Fatalf("black-holed worker failed after %v, want about %v", took, timeout)
	}
	_, err = e.Hash(t.Context(), req, nil)
	if !errors.Is(err, ErrCooldown) {
		t.Fatalf("during cooldown: %v, want ErrCooldown", err)
	}
	accepted := func() int { mu.Lock(); defer mu.Unlock(); return len(conns) }
	poll.CheckFor(t, 5*time.Second, "the dead worker's accept", func() bool { return accepted() >= 1 })
	if accepted() != 1 {
		t.Fatalf("the dead worker saw %d connections, want 1", accepted())
	}
	if got := testutil.ToFloat64(m.errors.WithLabelValues(reasonTimeout)); got != 1 {
		t.Errorf("timeout errors = %v", got)
	}
	if got := testutil.ToFloat64(m.errors.WithLabelValues(reasonCooldown)); got != 1 {
		t.Errorf("cooldown errors = %v", got)
	}

	// Refused: a port nobody listens on.
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := free.Addr().String()
	free.Close()
	e2 := newEngine(t, "http://"+addr, func(o *EngineOptions) { o.Timeout = 5 * time.Second })
	_, err = e2.Hash(t.Context(), req, nil)
	if !errors.Is(err, errTransport) {
		t.Fatalf("refused: %v, want a transport error (not a timeout)", err)
	}

	// No worker at all.
	e3, err := NewEngine(EngineOptions{Pick: func(string) (string, bool) { return "", false }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e3.Hash(t.Context(), req, nil); !errors.Is(err, ErrNoWorker) {
		t.Fatalf("no worker: %v", err)
	}
}

// Error statuses are ErrEngine; 5xx, 404 and 405 start a cooldown, other 4xx do not;
// nothing is cached.
func TestEngineErrorStatus(t *testing.T) {
	srv := newTokServer(t)
	now := time.Unix(1000, 0)
	var clock sync.Mutex
	e := newEngine(t, srv.URL, func(o *EngineOptions) {
		o.Cooldown = time.Second
		o.Now = func() time.Time { clock.Lock(); defer clock.Unlock(); return now }
	})
	req := chatReq(t, conversation(1, 20)[0])
	srv.status.Store(http.StatusBadRequest)
	for range 2 {
		if _, err := e.Hash(t.Context(), req, nil); !errors.Is(err, ErrEngine) {
			t.Fatalf("400: %v", err)
		}
	}
	if srv.calls.Load() != 2 {
		t.Fatalf("4xx must neither be cached nor start a cooldown: %d calls", srv.calls.Load())
	}
	srv.status.Store(http.StatusInternalServerError)
	if _, err := e.Hash(t.Context(), req, nil); !errors.Is(err, ErrEngine) {
		t.Fatalf("500: %v", err)
	}
	if _, err := e.Hash(t.Context(), req, nil); !errors.Is(err, ErrCooldown) {
		t.Fatalf("after 500: %v, want ErrCooldown", err)
	}
	srv.status.Store(0)
	clock.Lock()
	now = now.Add(time.Second)
	clock.Unlock()
	if _, err := e.Hash(t.Context(), req, nil); err != nil {
		t.Fatalf("after the cooldown: %v", err)
	}
	if srv.calls.Load() != 4 {
		t.Fatalf("%d calls, want 4", srv.calls.Load())
	}
	// A worker without /tokenize (404) is not asked again on every request.
	srv.status.Store(http.StatusNotFound)
	if _, err := e.Hash(t.Context(), chatReq(t, conversation(2, 20)[1]), nil); !errors.Is(err, ErrEngine) {
		t.Fatalf("404: %v", err)
	}
	if _, err := e.Hash(t.Context(), chatReq(t, conversation(3, 20)[2]), nil); !errors.Is(err, ErrCooldown) {
		t.Fatalf("after 404: %v, want ErrCooldown", err)
	}
	if srv.calls.Load() != 5 {
		t.Fatalf("%d calls, want 5", srv.calls.Load())
	}
}

// Unreadable answers are ErrEngine.
func TestEngineBadAnswer(t *testing.T) {
	for _, body := range []string{`not json`, `{"count":2,"tokens":[1]}`, `{"count":1}`, `{"tokens":[1,-2]}`, `{"tokens":[1.5]}`, `{"tokens":[1]} x`} {
		mux := http.NewServeMux()
		mux.HandleFunc("POST /tokenize", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(body)) })
		srv := httpServer(t, mux)
		e := newEngine(t, srv, nil)
		if _, err := e.Hash(t.Context(), chatReq(t, conversation(1, 5)[0]), nil); !errors.Is(err, ErrEngine) {
			t.Errorf("answer %q: %v, want ErrEngine", body, err)
		}
	}
}

// The cache evicts the least recently used entries beyond its bounds.
func TestEngineCacheBounds(t *testing.T) {
	srv := newTokServer(t)
	e := newEngine(t, srv.URL, func(o *EngineOptions) { o.CacheEntries = 2 })
	reqs := []*Request{
		{Model: "m", BlockSize: 4, Prompt: rawJSON(t, words(0, 40))},
		{Model: "m", BlockSize: 4, Prompt: rawJSON(t, words(100, 40))},
		{Model: "m", BlockSize: 4, Prompt: rawJSON(t, words(200, 40))},
	}
	hash := func(i int) {
		t.Helper()
		if _, err := e.Hash(t.Context(), reqs[i], nil); err != nil {
			t.Fatal(err)
		}
	}
	hash(0)
	hash(1)
	hash(0) // 0 is now the most recent
	hash(2) // evicts 1
	if e.Len() != 2 || srv.calls.Load() != 3 {
		t.Fatalf("len %d calls %d", e.Len(), srv.calls.Load())
	}
	hash(0)
	hash(2)
	if srv.calls.Load() != 3 {
		t.Fatalf("0 and 2 should be cached: %d calls", srv.calls.Load())
	}
	hash(1)
	if srv.calls.Load() != 4 {
		t.Fatalf("1 should have been evicted: %d calls", srv.calls.Load())
	}

	// A block budget smaller than one request's blocks caches nothing.
	e2 := newEngine(t, srv.URL, func(o *EngineOptions) { o.CacheBlocks = 3 })
	if _, err := e2.Hash(t.Context(), reqs[0], nil); err != nil {
		t.Fatal(err)
	}
	if e2.Len() != 0 {
		t.Fatalf("a 10-block request was cached under a 3-block budget")
	}
}

// The /tokenize body carries the options that change the tokens, in vLLM's field
// names, with documents and reasoning_effort merged into chat_template_kwargs.
func TestEngineTokenizeBody(t *testing.T) {
	srv := newTokServer(t)
	e := newEngine(t, srv.URL, nil)
	req := chatReq(t, conversation(1, 5)[0])
	req.LoRA = "adapter-1"
	req.Options = Options{
		AddGenerationPrompt: []byte("false"), ContinueFinalMessage: []byte("true"),
		AddSpecialTokens: []byte(" true "), ChatTemplate: []byte(`"{{x}}"`),
		ChatTemplateKwargs: []byte(`{"a": 1, "enable_thinking": false}`), Tools: []byte(`[{"type":"function","function":{"name":"f"}}]`),
		Documents: []byte(`[{"title":"t","text":"x"}]`), ReasoningEffort: []byte(`"low"`),
	}
	if _, err := e.Hash(t.Context(), req, nil); err != nil {
		t.Fatal(err)
	}
	got := srv.lastBody(t)
	kw, _ := got["chat_template_kwargs"].(map[string]any)
	if got["model"] != "adapter-1" || got["add_generation_prompt"] != false || got["continue_final_message"] != true ||
		got["add_special_tokens"] != true || got["chat_template"] != "{{x}}" || len(got["tools"].([]any)) != 1 ||
		kw["a"] != 1.0 || kw["enable_thinking"] != false || kw["reasoning_effort"] != "low" || len(kw["documents"].([]any)) != 1 ||
		got["documents"] != nil || got["reasoning_effort"] != nil || len(got["messages"].([]any)) != 2 {
		t.Fatalf("tokenize body: %v", got)
	}

	// reasoning_effort without enable_thinking in the kwargs sets it, as vLLM does.
	req.Options = Options{ReasoningEffort: []byte(`"none"`)}
	if _, err := e.Hash(t.Context(), req, nil); err != nil {
		t.Fatal(err)
	}
	got = srv.lastBody(t)
	if kw := got["chat_template_kwargs"].(map[string]any); kw["enable_thinking"] != false || kw["reasoning_effort"] != "none" {
		t.Fatalf("tokenize body: %v", got)
	}

	// A completions prompt: prompt and add_special_tokens only; a batch uses its first.
	req = &Request{Model: "m", BlockSize: 16, Prompt: []byte(`["first prompt", "second"]`), Options: Options{AddSpecialTokens: []byte("false")}}
	if _, err := e.Hash(t.Context(), req, nil); err != nil {
		t.Fatal(err)
	}
	got = srv.lastBody(t)
	if len(got) != 3 || got["prompt"] != "first prompt" || got["add_special_tokens"] != false || got["model"] != "m" {
		t.Fatalf("tokenize body: %v", got)
	}
}

// An adapter's /tokenize goes to a worker serving the adapter, not just its base model,
// and its hashes are seeded with the base model and the adapter.
func TestEngineAdapterPick(t *testing.T) {
	srv := newTokServer(t)
	var asked []string
	e := newEngine(t, srv.URL, func(o *EngineOptions) {
		o.Pick = func(model string) (string, bool) { asked = append(asked, model); return srv.URL, true }
	})
	req := chatReq(t, conversation(1, 5)[0])
	req.Model, req.LoRA = "base", "sql"
	res, err := e.Hash(t.Context(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(asked) != 1 || asked[0] != "sql" || srv.lastBody(t)["model"] != "sql" {
		t.Fatalf("picked for %v, body %v", asked, srv.lastBody(t))
	}
	base := *req
	base.LoRA = ""
	rb, err := e.Hash(t.Context(), &base, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Hashes) == 0 || len(res.Hashes) != len(rb.Hashes) || res.Hashes[0] == rb.Hashes[0] {
		t.Fatalf("adapter hashes %v, base hashes %v: want as many, all different", res.Hashes, rb.Hashes)
	}
	if asked[1] != "base" {
		t.Fatalf("base request picked for %v", asked)
	}
}

func httpServer(t *testing.T, h http.Handler) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s.URL
}
