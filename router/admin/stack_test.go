package admin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/cmd/stack"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// testRouter is a full router Stack, started from a config file, in front of a kvsim
// fleet, with its admin API on its own loopback listener.
type testRouter struct {
	fleet   *sim.Fleet
	stack   *stack.Stack
	url     string // the OpenAI listener
	admin   string // the admin listener's base URL
	cfgPath string
	cfgText string
	token   string
}

const testModel = "m"

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// startRouter starts workers kvsim workers and a router in front of them; the router's
// config file sets the admin token.
func startRouter(t *testing.T, workers int, token string) *testRouter {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	fc := sim.DefaultFleetConfig()
	fc.Workers = workers
	fc.Worker.Model = testModel
	fleet, err := sim.StartFleet(ctx, fc)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "listen: 127.0.0.1:0\nhealth: {interval: 100ms, eject_base: 200ms}\ntimeouts: {shutdown: 15s}\n")
	// Dynamo's cost (pending_weight 1) spreads the tests' light traffic, which shares one
	// preamble, over every worker, so each has figures to show; the default 0.25 keeps it
	// on the workers that hold the preamble while their queues are short. Queues stay
	// short when the router is quick: a fresh-clone CI run saw a worker that never held
	// the preamble receive nothing in 54 s. temperature 4 gives a worker that costs the
	// preamble's blocks more a small share of the requests all the same.
	fmt.Fprintf(&b, "cache_aware: {pending_weight: 1, temperature: 4}\n")
	// The dashboard test holds a worker's events back and waits for its stale flag.
	fmt.Fprintf(&b, "events: {max_staleness: 2s}\n")
	fmt.Fprintf(&b, "admin: {listen: \"127.0.0.1:0\", token: %q}\nworkers:\n", token)
	for _, info := range fleet.Infos() {
		fmt.Fprintf(&b, "  - {id: %s, url: %q, events: %q, replay: %q, models: [%s], max_conns: 256}\n", info.ID, info.URL, info.Events, info.Replay, testModel)
	}
	tr := &testRouter{fleet: fleet, cfgPath: filepath.Join(t.TempDir(), "kvroute.yaml"), cfgText: b.String(), token: token}
	if err := os.WriteFile(tr.cfgPath, []byte(tr.cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.LoadFile(tr.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	st, err := stack.NewStack(cfg, quiet)
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
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("stack stopped before it was ready: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stack: %v", err)
		}
		_ = fleet.Close()
	})
	if st.AdminAddr() == "" {
		t.Fatal("the admin listener did not start")
	}
	tr.stack, tr.url, tr.admin = st, "http://"+ln.Addr().String(), "http://"+st.AdminAddr()
	poll.CheckFor(t, 10*time.Second, "event feeds subscribed", func() bool {
		for _, w := range fleet.Workers() {
			if !w.EventsSubscribed() {
				return false
			}
		}
		return true
	})
	return tr
}

// words returns n pseudo-random words from rng.
func words(rng *rand.Rand, n int) string {
	w := make([]string, n)
	for i := range w {
		w[i] = fmt.Sprintf("w%d", rng.IntN(5000))
	}
	return strings.Join(w, " ")
}

// sharedPreamble is the system-prompt start every test request shares: the prefix the
// heat map must show.
var sharedPreamble = words(rand.New(rand.NewPCG(1, 1)), 300)

// served is one request's outcome.
type served struct {
	started time.Time
	worker  string
	err     error
}

// chat sends one chat request (streaming when stream is true) whose system prompt is
// the shared preamble plus group's own text, and returns the worker that served it.
func chat(client *http.Client, url string, group int, rng *rand.Rand, stream bool) served {
	system := sharedPreamble + " " + words(rand.New(rand.NewPCG(uint64(group), 2)), 80)
	body, _ := json.Marshal(map[string]any{
		"model": testModel, "max_tokens": 8, "stream": stream,
		"messages": []map[string]string{{"role": "system", "content": system}, {"role": "user", "content": words(rng, 20)}},
	})
	res := served{started: time.Now()}
	resp, err := client.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(string(body)))
	if err != nil {
		res.err = err
		return res
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	res.worker = resp.Header.Get("x-kvroute-worker")
	switch {
	case err != nil:
		res.err = err
	case resp.StatusCode != http.StatusOK:
		res.err = fmt.Errorf("status %d: %s", resp.StatusCode, b)
	case stream && !strings.HasSuffix(string(b), "data: [DONE]\n\n"):
		res.err = fmt.Errorf("stream did not end with [DONE]: %.200q", b)
	}
	return res
}

// traffic sends n requests from users concurrent users (user u in group u) and returns
// their outcomes.
func traffic(t *testing.T, url string, users, n int) []served {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second}
	var mu sync.Mutex
	var out []served
	var wg sync.WaitGroup
	for u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(u), 3))
			for i := u; i < n; i += users {
				r := chat(client, url, u, rng, i%2 == 0)
				mu.Lock()
				out = append(out, r)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	client.CloseIdleConnections()
	for _, r := range out {
		if r.err != nil {
			t.Fatalf("request failed: %v", r.err)
		}
	}
	return out
}

// call makes an admin API request and decodes the JSON answer into out (when not nil);
// it returns the status.
func (tr *testRouter) call(t *testing.T, method, path, token string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, tr.admin+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); strings.HasPrefix(path, "/api/") && ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %.300s: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

func newListener(t *testing.T) (net.Listener, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err == nil {
		t.Cleanup(func() { _ = ln.Close() })
	}
	return ln, err
}

// runStack runs st on ln until the test ends.
func runStack(t *testing.T, st *stack.Stack, ln net.Listener) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx, ln, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("stack stopped before it was ready: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stack: %v", err)
		}
	})
}
