package router

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// holdWorker is a real OpenAI-style server on loopback that records the x-tag header of
// each inference request in arrival order and holds every request until the test
// releases it (one per value sent on release), or its client goes away.
type holdWorker struct {
	*httptest.Server
	release chan struct{}
	mu      sync.Mutex
	order   []string
}

func newHoldWorker(t *testing.T) *holdWorker {
	t.Helper()
	hw := &holdWorker{release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"object":"list","data":[{"id":"m","object":"model"}]}`)
	})
	mux.HandleFunc("/v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		hw.mu.Lock()
		hw.order = append(hw.order, r.Header.Get("x-tag"))
		hw.mu.Unlock()
		select {
		case <-hw.release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"x","object":"chat.completion","choices":[{"message":{"role":"assistant","content":"ok"}}]}`)
	})
	hw.Server = httptest.NewServer(mux)
	t.Cleanup(func() {
		close(hw.release) // frees the requests still held
		hw.Close()
	})
	return hw
}

func (hw *holdWorker) arrived() []string {
	hw.mu.Lock()
	defer hw.mu.Unlock()
	return slices.Clone(hw.order)
}

// queueStack is a router in front of one holdWorker that takes one request at a time
// (cache_aware.max_inflight 1), so that a second request finds the fleet full.
func queueStack(t *testing.T, mutate func(*configs.Config)) (*testRouter, *holdWorker) {
	t.Helper()
	hw := newHoldWorker(t)
	cfg := configs.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Health.Interval = 50 * time.Millisecond
	cfg.Timeouts.Shutdown = 5 * time.Second
	cfg.CacheAware.MaxInFlight = 1
	cfg.Workers = []configs.Worker{{ID: "w0", URL: hw.URL, MaxConns: 64, Models: []string{"m"}}}
	if mutate != nil {
		mutate(&cfg)
	}
	return startRouter(t, &cfg), hw
}

// result is one client's answer.
type result struct {
	tag    string
	status int
	header http.Header
	body   []byte
}

// send posts a chat request tagged tag in the background; its answer arrives on out.
func send(t *testing.T, tr *testRouter, tag string, out chan<- result, hdr ...string) {
	go func() {
		req, _ := http.NewRequest("POST", tr.url+"/v1/chat/completions", strings.NewReader(chatBody))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("x-tag", tag)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			out <- result{tag: tag, status: -1, body: []byte(err.Error())}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out <- result{tag: tag, status: resp.StatusCode, header: resp.Header, body: b}
	}()
}

func queueDepth(tr *testRouter) int { return int(tr.srv.queue.depth.Load()) }

// Requests that find the fleet full wait and are served as slots free: the higher class
// first, FIFO within a class; none is lost.
func TestQueueServesInPriorityThenFIFOOrder(t *testing.T) {
	tr, hw := queueStack(t, nil)
	out := make(chan result, 8)
	send(t, tr, "busy", out)
	poll.CheckFor(t, 5*time.Second, "the first request to reach the worker", func() bool { return len(hw.arrived()) == 1 })
	for i, q := range []struct{ tag, class string }{
		{"n1", ""}, {"l1", "low"}, {"n2", "normal"}, {"h1", "high"}, {"l2", "low"},
	} {
		var hdr []string
		if q.class != "" {
			hdr = []string{"x-kvroute-priority", q.class}
		}
		send(t, tr, q.tag, out, hdr...)
		poll.CheckFor(t, 5*time.Second, q.tag+" to queue", func() bool { return queueDepth(tr) == i+1 })
	}
	if n := metricSum(t, tr.reg, "kvroute_router_queue_depth", "class", "low"); n != 2 {
		t.Errorf("queue_depth{class=low} = %v, want 2", n)
	}
	want := []string{"busy", "h1", "n1", "n2", "l1", "l2"}
	for i := 1; i < len(want); i++ {
		hw.release <- struct{}{} // ends the request on the worker: the next is dispatched
		poll.CheckFor(t, 5*time.Second, want[i]+" to reach the worker", func() bool { return len(hw.arrived()) == i+1 })
	}
	hw.release <- struct{}{}
	for range want {
		if r := <-out; r.status != 200 {
			t.Errorf("%s: status %d (%s)", r.tag, r.status, r.body)
		}
	}
	if got := hw.arrived(); !slices.Equal(got, want) {
		t.Errorf("served in order %v, want %v", got, want)
	}
	if d := queueDepth(tr); d != 0 {
		t.Errorf("depth %d after the burst", d)
	}
	if n := metricSum(t, tr.reg, "kvroute_router_queue_rejected_total"); n != 0 {
		t.Errorf("%v rejections, want none", n)
	}
	if n := histogramCount(t, tr, "kvroute_router_queue_wait_seconds"); n != 5 {
		t.Errorf("queue_wait_seconds count %d, want 5", n)
	}
}

// histogramCount sums the sample counts of histogram name.
func histogramCount(t *testing.T, tr *testRouter, name string) uint64 {
	t.Helper()
	mfs, err := tr.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	return n
}

// checkOverloaded asserts a 429 server_overloaded with an integer Retry-After.
func checkOverloaded(t *testing.T, r result) {
	t.Helper()
	checkOpenAIError(t, &http.Response{StatusCode: r.status, Header: r.header}, r.body, 429, "server_overloaded")
	if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 {
		t.Errorf("%s: Retry-After %q, want whole seconds", r.tag, r.header.Get("Retry-After"))
	}
	if strings.Contains(string(r.body), "no_healthy_worker") {
		t.Errorf("%s: a full fleet answered as if down: %s", r.tag, r.body)
	}
}

// A full queue and a wait past queue.timeout both get 429 server_overloaded with
// Retry-After, counted by reason.
func TestQueueFullAndTimeoutAre429(t *testing.T) {
	tr, hw := queueStack(t, func(c *configs.Config) {
		c.Queue.MaxSize = 1
		c.Queue.Timeout = 300 * time.Millisecond
	})
	out := make(chan result, 4)
	send(t, tr, "busy", out)
	poll.CheckFor(t, 5*time.Second, "the first request to reach the worker", func() bool { return len(hw.arrived()) == 1 })
	send(t, tr, "queued", out)
	poll.CheckFor(t, 5*time.Second, "a request to queue", func() bool { return queueDepth(tr) == 1 })
	send(t, tr, "over", out)
	r := <-out
	if r.tag != "over" {
		t.Fatalf("%s answered first (%d %s), want the request over the queue's size", r.tag, r.status, r.body)
	}
	checkOverloaded(t, r)
	r = <-out // the worker is still held: the queued request times out
	if r.tag != "queued" {
		t.Fatalf("%s answered (%d), want the queued request's timeout", r.tag, r.status)
	}
	checkOverloaded(t, r)
	for reason, want := range map[string]float64{"full": 1, "timeout": 1, "client_gone": 0} {
		if n := metricSum(t, tr.reg, "kvroute_router_queue_rejected_total", "class", "normal", "reason", reason); n != want {
			t.Errorf("queue_rejected_total{reason=%s} = %v, want %v", reason, n, want)
		}
	}
	if d := queueDepth(tr); d != 0 {
		t.Errorf("depth %d", d)
	}
	hw.release <- struct{}{}
	if r := <-out; r.tag != "busy" || r.status != 200 {
		t.Errorf("%s: %d", r.tag, r.status)
	}
}

// With the queue off a full fleet is still overloaded, not down: 429 at once.
func TestQueueOffFullFleetIs429(t *testing.T) {
	tr, hw := queueStack(t, func(c *configs.Config) { c.Queue.MaxSize = 0 })
	out := make(chan result, 2)
	send(t, tr, "busy", out)
	poll.CheckFor(t, 5*time.Second, "the first request to reach the worker", func() bool { return len(hw.arrived()) == 1 })
	send(t, tr, "over", out)
	checkOverloaded(t, <-out)
	hw.release <- struct{}{}
	<-out
}

// A client that disconnects while queued leaves the queue and never reaches a worker.
func TestQueuedClientThatLeavesIsDropped(t *testing.T) {
	tr, hw := queueStack(t, nil)
	out := make(chan result, 2)
	send(t, tr, "busy", out)
	poll.CheckFor(t, 5*time.Second, "the first request to reach the worker", func() bool { return len(hw.arrived()) == 1 })
	conn, err := net.Dial("tcp", strings.TrimPrefix(tr.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-tag: gone\r\nContent-Type: application/json\r\nContent-Length: "+
		strconv.Itoa(len(chatBody))+"\r\n\r\n"+chatBody)
	poll.CheckFor(t, 5*time.Second, "the request to queue", func() bool { return queueDepth(tr) == 1 })
	conn.Close()
	poll.CheckFor(t, 5*time.Second, "the gone client to leave the queue", func() bool { return queueDepth(tr) == 0 })
	if n := metricSum(t, tr.reg, "kvroute_router_queue_rejected_total", "reason", "client_gone"); n != 1 {
		t.Errorf("queue_rejected_total{reason=client_gone} = %v, want 1", n)
	}
	if n := metricSum(t, tr.reg, "kvroute_router_requests_total", "status", "499"); n != 1 {
		t.Errorf("requests_total{status=499} = %v, want 1", n)
	}
	hw.release <- struct{}{}
	<-out
	if got := hw.arrived(); !slices.Equal(got, []string{"busy"}) {
		t.Errorf("the worker saw %v", got)
	}
}

// A priority header that names no class, or a class above the API key's, is a 400
// OpenAI-style error whatever the fleet's load; the key's class is its requests'
// default.
func TestQueuePriorityHeader(t *testing.T) {
	tr, hw := queueStack(t, func(c *configs.Config) {
		c.Auth.Keys = []configs.APIKey{{Name: "batch", Key: "batch-key-0123", Priority: "normal"}, {Name: "any", Key: "any-key-01234"}}
	})
	batch, anyKey := []string{"Authorization", "Bearer batch-key-0123"}, []string{"Authorization", "Bearer any-key-01234"}
	for _, c := range []struct {
		name string
		hdr  []string
		want string
	}{
		{"not a class", append([]string{"x-kvroute-priority", "urgent"}, anyKey...), `\"urgent\" is not a priority class (high, normal, low)`},
		{"empty class name", append([]string{"x-kvroute-priority", "HIGH"}, anyKey...), `\"HIGH\" is not a priority class`},
		{"above the key", append([]string{"x-kvroute-priority", "high"}, batch...), `\"high\" is above the class of this API key, \"normal\"`},
	} {
		resp, body := post(t, tr.url+"/v1/chat/completions", chatBody, c.hdr...)
		checkOpenAIError(t, resp, body, 400, "invalid_priority")
		if !strings.Contains(string(body), c.want) {
			t.Errorf("%s: body %s, want %s", c.name, body, c.want)
		}
	}
	if len(hw.arrived()) != 0 {
		t.Fatalf("refused requests reached the worker: %v", hw.arrived())
	}
	// Valid choices pass; the worker holds each until released.
	out := make(chan result, 4)
	send(t, tr, "busy", out, anyKey...)
	poll.CheckFor(t, 5*time.Second, "the first request to reach the worker", func() bool { return len(hw.arrived()) == 1 })
	send(t, tr, "batch-default", out, batch...)
	poll.CheckFor(t, 5*time.Second, "batch-default to queue", func() bool { return queueDepth(tr) == 1 })
	send(t, tr, "batch-low", out, append([]string{"x-kvroute-priority", "low"}, batch...)...)
	poll.CheckFor(t, 5*time.Second, "batch-low to queue", func() bool { return queueDepth(tr) == 2 })
	send(t, tr, "any-high", out, append([]string{"x-kvroute-priority", "high"}, anyKey...)...)
	poll.CheckFor(t, 5*time.Second, "any-high to queue", func() bool { return queueDepth(tr) == 3 })
	for i := range 4 {
		hw.release <- struct{}{}
		if r := <-out; r.status != 200 {
			t.Errorf("%s: %d %s", r.tag, r.status, r.body)
		}
		if i < 3 {
			poll.CheckFor(t, 5*time.Second, "the next request to reach the worker", func() bool { return len(hw.arrived()) == i+2 })
		}
	}
	if got, want := hw.arrived(), []string{"busy", "any-high", "batch-default", "batch-low"}; !slices.Equal(got, want) {
		t.Errorf("served in order %v, want %v", got, want)
	}
}

// The queue's order without a server: priority, then FIFO, per model; a retry (picky)
// neither waits nor blocks; a wake-up reaches the first waiter of each model and the
// picky ones.
func TestWaitQueueOrder(t *testing.T) {
	cfg := configs.Default()
	cfg.Queue.MaxSize = 5
	q, err := newWaitQueue(&cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	const high, normal, low = 0, 1, 2
	a1 := q.enter("a", normal, false)
	b1 := q.enter("b", low, false)
	a2 := q.enter("a", high, false)
	retry := q.enter("a", low, true)
	a3 := q.enter("a", normal, false)
	if over := q.enter("a", high, false); over != nil {
		t.Fatal("a sixth waiter entered a queue of max_size 5")
	}
	firsts := func() (out []*waiter) {
		for _, w := range []*waiter{a1, b1, a2, retry, a3} {
			if q.first(w) {
				out = append(out, w)
			}
		}
		return out
	}
	if got := firsts(); !slices.Equal(got, []*waiter{b1, a2, retry}) {
		t.Errorf("may pick: %v, want b1, a2 and the retry", got)
	}
	if !q.ahead("a") || !q.ahead("b") || q.ahead("c") {
		t.Error("ahead: want a and b queued, c not")
	}
	q.released()
	for _, w := range []*waiter{a1, b1, a2, retry, a3} {
		woken := len(w.wake) == 1
		if want := w == b1 || w == a2 || w == retry; woken != want {
			t.Errorf("waiter %+v woken %v, want %v", *w, woken, want)
		}
		<-chanOrClosed(w.wake)
	}
	q.leave(a2, true)
	if got := firsts(); !slices.Equal(got, []*waiter{a1, b1, retry}) {
		t.Errorf("after a2 left, may pick: %v, want a1 (normal, before a3), b1 and the retry", got)
	}
	if len(a1.wake) != 1 {
		t.Error("a2's departure did not wake a1, the next of model a")
	}
	for _, w := range []*waiter{a1, b1, retry, a3} {
		q.leave(w, false)
	}
	if d := q.depth.Load(); d != 0 {
		t.Errorf("depth %d after every waiter left", d)
	}
}

// chanOrClosed returns c if it holds a value, else a closed channel: draining without
// blocking.
func chanOrClosed(c chan struct{}) <-chan struct{} {
	if len(c) > 0 {
		return c
	}
	done := make(chan struct{})
	close(done)
	return done
}

// The queue's share of a request that finds room costs no allocation: the class lookup
// (header absent or valid, a key with a class) and the one check of an empty queue.
func TestQueueRequestPathDoesNotAllocate(t *testing.T) {
	s := benchServer(t) // keys without a class
	ctx := benchCtx()
	ctx.Request.Header.Set("x-kvroute-priority", "low")
	if n := testing.AllocsPerRun(200, func() {
		if c, err := s.priority(ctx); err != nil || c != 2 || s.queue.ahead("m") {
			t.Fatalf("class %d, %v", c, err)
		}
	}); n != 0 {
		t.Errorf("priority and ahead allocate %v times per request", n)
	}
	s.queue.keyClass = []int{-1, -1, -1, -1, 0} // k4, the key benchCtx sends, in class high
	ctx.Request.Header.Del("x-kvroute-priority")
	if n := testing.AllocsPerRun(200, func() {
		if c, err := s.priority(ctx); err != nil || c != 0 {
			t.Fatalf("class %d, %v", c, err)
		}
	}); n != 0 {
		t.Errorf("priority by key allocates %v times per request", n)
	}
}
