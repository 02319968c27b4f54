package router

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvroute/kvroute/proto/prototest/poll"
)

func TestNonStreamingForwardsBodyUntouchedAndSetsHeaders(t *testing.T) {
	fw := newFakeWorker(t, "m")
	tr := startRouter(t, testConfig(fw))
	body := `{"model":"m","messages":[{"role":"user","content":"h\u00e9llo"}],"temperature":0.5,  "x":[1,2]}`
	resp, got := post(t, tr.url+"/v1/chat/completions", body, "X-Request-Id", "abc-123", "Connection", "keep-alive", "Te", "trailers")
	if resp.StatusCode != 200 || !strings.Contains(string(got), `"content":"ok"`) {
		t.Fatalf("status %d body %s", resp.StatusCode, got)
	}
	if w := resp.Header.Get("x-kvroute-worker"); w != "w0" {
		t.Errorf("x-kvroute-worker = %q", w)
	}
	if id := resp.Header.Get("X-Request-Id"); id != "abc-123" {
		t.Errorf("X-Request-Id = %q, want the client's", id)
	}
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if sha256.Sum256(fw.lastBody) != sha256.Sum256([]byte(body)) {
		t.Errorf("worker got body %q, want the original bytes", fw.lastBody)
	}
	if fw.lastHdr.Get("X-Request-Id") != "abc-123" || fw.lastHdr.Get("Te") != "" || fw.lastHdr.Get("X-Forwarded-For") == "" {
		t.Errorf("forwarded headers: %v", fw.lastHdr)
	}
}

func TestRequestIDGenerated(t *testing.T) {
	fw := newFakeWorker(t, "m")
	tr := startRouter(t, testConfig(fw))
	resp, _ := post(t, tr.url+"/v1/completions", `{"model":"m","prompt":"x"}`)
	id := resp.Header.Get("X-Request-Id")
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if len(id) != 16 || fw.lastHdr.Get("X-Request-Id") != id {
		t.Errorf("generated id %q, worker saw %q", id, fw.lastHdr.Get("X-Request-Id"))
	}
}

// The first SSE event must reach the client while the worker is still generating.
func TestStreamFirstChunkArrivesBeforeWorkerFinishes(t *testing.T) {
	fw := newFakeWorker(t, "m")
	fw.gateAt.Store(2) // chunk 1 goes out, chunk 2 waits for the test
	tr := startRouter(t, testConfig(fw))
	req, _ := http.NewRequest("POST", tr.url+"/v1/chat/completions", strings.NewReader(streamBody))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("x-kvroute-worker") != "w0" || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("headers: %v", resp.Header)
	}
	br := bufio.NewReader(resp.Body)
	got := make(chan string, 1)
	go func() {
		line, _ := br.ReadString('\n')
		got <- line
	}()
	select {
	case line := <-got:
		if !strings.Contains(line, "c1") {
			t.Fatalf("first line %q", line)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("first chunk did not reach the client while the worker was blocked")
	}
	close(fw.gate)
	rest, _ := io.ReadAll(br)
	if !strings.Contains(string(rest), "c3") || !strings.HasSuffix(string(rest), "data: [DONE]\n\n") {
		t.Errorf("rest of stream: %q", rest)
	}
	poll.CheckFor(t, 2*time.Second, "in-flight back to 0", func() bool { return tr.pool.Worker("w0").InFlight() == 0 })
}

func TestClientDisconnectCancelsUpstream(t *testing.T) {
	fw := newFakeWorker(t, "m")
	fw.gateAt.Store(2)
	fw.chunks.Store(100000) // long enough that the worker is still writing when the router hangs up
	tr := startRouter(t, testConfig(fw))
	conn, err := net.Dial("tcp", strings.TrimPrefix(tr.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "+
		strconv.Itoa(len(streamBody))+"\r\n\r\n"+streamBody)
	br := bufio.NewReader(conn)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(line, "c1") {
			break
		}
	}
	conn.Close()
	// The router notices on its next write; the worker's next chunk is that write.
	close(fw.gate)
	poll.CheckFor(t, 5*time.Second, "worker request canceled", func() bool { return fw.canceled.Load() == 1 })
	poll.CheckFor(t, 2*time.Second, "in-flight back to 0", func() bool { return tr.pool.Worker("w0").InFlight() == 0 })
	if v := testutil.ToFloat64(tr.srv.metrics.requests.WithLabelValues("w0", "m", "499")); v != 1 {
		t.Errorf("requests{status=499} = %v", v)
	}
}

func TestRetryOnDeadWorkerIsInvisible(t *testing.T) {
	dead := newFakeWorker(t, "m")
	live := newFakeWorker(t, "m")
	cfg := testConfig(dead, live)
	cfg.Policy = "round_robin"
	cfg.Health.Interval = time.Hour // keep the dead worker "available": passive detection only
	tr := startRouter(t, cfg)
	dead.Close() // refused connections from now on
	for i := 0; i < 6; i++ {
		resp, body := post(t, tr.url+"/v1/chat/completions", chatBody)
		if resp.StatusCode != 200 || resp.Header.Get("x-kvroute-worker") != "w1" {
			t.Fatalf("request %d: status %d worker %q body %s", i, resp.StatusCode, resp.Header.Get("x-kvroute-worker"), body)
		}
	}
	if v := testutil.ToFloat64(tr.srv.metrics.upErrors.WithLabelValues("w0", "connect")); v < 1 {
		t.Errorf("connect errors on w0 = %v", v)
	}
	if st := tr.pool.Worker("w0").State(); !st.Ejected {
		t.Errorf("dead worker not ejected after repeated connect errors: %+v", st)
	}
}

func TestRetryOn5xxAnd429ThenPassThroughLast(t *testing.T) {
	a, b := newFakeWorker(t, "m"), newFakeWorker(t, "m")
	cfg := testConfig(a, b)
	cfg.Health.Interval = time.Hour
	cfg.Policy = "round_robin" // the first request tries a first
	cfg.Health.EjectAfter = 1
	tr := startRouter(t, cfg)
	a.fail.Store(503)
	for i := 0; i < 4; i++ {
		resp, _ := post(t, tr.url+"/v1/chat/completions", streamBody)
		if resp.StatusCode != 200 || resp.Header.Get("x-kvroute-worker") != "w1" {
			t.Fatalf("status %d from %q, want 200 from w1", resp.StatusCode, resp.Header.Get("x-kvroute-worker"))
		}
	}
	b.fail.Store(429)
	// a is ejected by now: only b is tried, and its 429 reaches the client as it was.
	resp, body := post(t, tr.url+"/v1/chat/completions", chatBody)
	if resp.StatusCode != 429 || !strings.Contains(string(body), "worker says 429") {
		t.Errorf("status %d body %s, want the worker's 429", resp.StatusCode, body)
	}
}

func TestEjectionAndReadmission(t *testing.T) {
	fw := newFakeWorker(t, "m")
	cfg := testConfig(fw)
	cfg.Health.EjectAfter = 2
	cfg.MaxAttempts = 1
	tr := startRouter(t, cfg)
	w := tr.pool.Worker("w0")
	fw.fail.Store(500)
	for i := 0; i < 2; i++ {
		resp, _ := post(t, tr.url+"/v1/chat/completions", chatBody)
		// The failing health checks (every 50 ms) may eject the worker before the
		// requests on a loaded machine: then a request meets no worker.
		if resp.StatusCode == 503 && w.State().Ejected {
			break
		}
		if resp.StatusCode != 500 {
			t.Fatalf("request %d: status %d, want the worker's 500", i, resp.StatusCode)
		}
	}
	if !w.State().Ejected || w.Available() {
		t.Fatalf("not ejected after 2 failures: %+v", w.State())
	}
	resp, body := post(t, tr.url+"/v1/chat/completions", chatBody)
	checkOpenAIError(t, resp, body, 503, "no_healthy_worker")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	// Still failing health checks: stays out past its ejection.
	time.Sleep(3 * cfg.Health.EjectBase)
	if w.Available() {
		t.Fatal("re-admitted while its health check fails")
	}
	fw.fail.Store(0)
	poll.CheckFor(t, 3*time.Second, "re-admission", w.Available)
	if resp, _ := post(t, tr.url+"/v1/chat/completions", chatBody); resp.StatusCode != 200 {
		t.Errorf("after re-admission: status %d", resp.StatusCode)
	}
}

func TestHungWorkerFirstByteTimeoutRetriesElsewhere(t *testing.T) {
	hung, ok := newFakeWorker(t, "m"), newFakeWorker(t, "m")
	hung.hang.Store(true)
	cfg := testConfig(hung, ok)
	cfg.Health.Interval = time.Hour
	cfg.Timeouts.FirstByte = 300 * time.Millisecond
	cfg.Policy = "round_robin"
	tr := startRouter(t, cfg)
	for i := 0; i < 2; i++ {
		start := time.Now()
		resp, body := post(t, tr.url+"/v1/chat/completions", streamBody)
		if resp.StatusCode != 200 || resp.Header.Get("x-kvroute-worker") != "w1" || !strings.Contains(string(body), "[DONE]") {
			t.Fatalf("status %d worker %q body %q", resp.StatusCode, resp.Header.Get("x-kvroute-worker"), body)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("took %s", d)
		}
	}
	if v := testutil.ToFloat64(tr.srv.metrics.upErrors.WithLabelValues("w0", "timeout")); v < 1 {
		t.Errorf("timeouts on w0 = %v", v)
	}
}

// A worker that answers /health but never generates is taken out of rotation after one
// timed-out request, whatever the policy and eject_after, by the generation probe; it
// comes back once it generates again.
func TestHungWorkerEjectedByGenerationProbe(t *testing.T) {
	for _, probe := range []bool{true, false} {
		t.Run(fmt.Sprintf("generation_probe=%v", probe), func(t *testing.T) {
			hung, ok := newFakeWorker(t, "m"), newFakeWorker(t, "m")
			hung.hang.Store(true)
			cfg := testConfig(hung, ok)
			cfg.Health.EjectAfter = 1000 // no ejection by counting failed requests
			cfg.Health.GenerationProbe = probe
			cfg.Timeouts.FirstByte = 300 * time.Millisecond
			cfg.Policy = "round_robin"
			tr := startRouter(t, cfg)
			w := tr.pool.Worker("w0")
			for i := 0; i < 2; i++ {
				if resp, _ := post(t, tr.url+"/v1/chat/completions", streamBody); resp.StatusCode != 200 {
					t.Fatalf("status %d", resp.StatusCode)
				}
			}
			if v := testutil.ToFloat64(tr.srv.metrics.upErrors.WithLabelValues("w0", "timeout")); v < 1 {
				t.Fatalf("no request timed out on w0 (%v)", v)
			}
			probes := func(result string) float64 {
				return metricSum(t, tr.reg, "kvroute_upstream_generation_probes_total", "worker", "w0", "result", result)
			}
			if !probe {
				checks := func() float64 {
					return metricSum(t, tr.reg, "kvroute_upstream_health_checks_total", "worker", "w0", "result", "ok")
				}
				base := checks()
				poll.CheckFor(t, 3*time.Second, "five more health checks", func() bool { return checks() >= base+5 })
				if !w.Available() || probes("fail")+probes("ok") != 0 {
					t.Fatalf("probe off: available %v, probes %v: %+v", w.Available(), probes("fail")+probes("ok"), w.State())
				}
				return
			}
			poll.CheckFor(t, 3*time.Second, "ejection by the generation probe", func() bool { return w.State().Ejected && !w.Available() })
			if probes("fail") < 1 {
				t.Errorf("generation probe failures = %v, want >= 1", probes("fail"))
			}
			// Past its ejection, /health passes but the probe still fails: it stays out.
			time.Sleep(3 * cfg.Health.EjectMax)
			if w.Available() {
				t.Fatal("re-admitted while it does not generate")
			}
			hung.hang.Store(false)
			poll.CheckFor(t, 3*time.Second, "re-admission once it generates", w.Available)
			if probes("ok") < 1 {
				t.Errorf("generation probe successes = %v, want >= 1", probes("ok"))
			}
		})
	}
}

func TestIdleTimeoutEndsStreamWithErrorEvent(t *testing.T) {
	fw := newFakeWorker(t, "m")
	fw.gateAt.Store(2) // never opened: the worker stalls after chunk 1
	cfg := testConfig(fw)
	cfg.Timeouts.Idle = 200 * time.Millisecond
	tr := startRouter(t, cfg)
	resp, body := post(t, tr.url+"/v1/chat/completions", streamBody)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	s := string(body)
	if !strings.Contains(s, "c1") || !strings.Contains(s, `"code":"upstream_timeout"`) || strings.Contains(s, "[DONE]") {
		t.Errorf("stream %q: want c1 then an upstream_timeout error event", s)
	}
	poll.CheckFor(t, 2*time.Second, "in-flight back to 0", func() bool { return tr.pool.Worker("w0").InFlight() == 0 })
}

func TestErrorCases(t *testing.T) {
	fw := newFakeWorker(t, "m")
	cfg := testConfig(fw)
	cfg.MaxBodyBytes = 1024
	tr := startRouter(t, cfg)
	cases := []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"malformed json", "POST", "/v1/chat/completions", `{"model":"m",`, 400, "invalid_json"},
		{"not an object", "POST", "/v1/chat/completions", `"hi"`, 400, "invalid_json"},
		{"missing messages", "POST", "/v1/chat/completions", `{"model":"m"}`, 400, "invalid_request"},
		{"unknown model", "POST", "/v1/chat/completions", `{"model":"nope","messages":[]}`, 404, "model_not_found"},
		{"too large", "POST", "/v1/chat/completions", `{"model":"m","messages":[],"x":"` + strings.Repeat("a", 2000) + `"}`, 413, "request_too_large"},
		{"wrong method", "GET", "/v1/chat/completions", ``, 405, "method_not_allowed"},
		{"wrong method models", "POST", "/v1/models", `{}`, 405, "method_not_allowed"},
		{"unknown path", "GET", "/v2/nothing", ``, 404, "not_found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(c.method, tr.url+c.path, strings.NewReader(c.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			checkOpenAIError(t, resp, body, c.status, c.code)
		})
	}
	if n := fw.requests.Load(); n != 0 {
		t.Errorf("bad requests reached the worker %d times", n)
	}
}

func TestNoHealthyWorker(t *testing.T) {
	fw := newFakeWorker(t, "m")
	tr := startRouter(t, testConfig(fw))
	fw.fail.Store(500) // health checks fail from now on
	poll.CheckFor(t, 3*time.Second, "worker unhealthy", func() bool { return !tr.pool.Worker("w0").Available() })
	resp, body := post(t, tr.url+"/v1/chat/completions", chatBody)
	checkOpenAIError(t, resp, body, 503, "no_healthy_worker")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	r, err := http.Get(tr.url + "/ready")
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != 503 {
		t.Errorf("/ready = %d with no healthy worker", r.StatusCode)
	}
}

func TestModelsHealthReadyMetrics(t *testing.T) {
	a, b := newFakeWorker(t, "m", "shared"), newFakeWorker(t, "other", "shared")
	tr := startRouter(t, testConfig(a, b))
	get := func(path string) (int, string) {
		r, err := http.Get(tr.url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		body, _ := io.ReadAll(r.Body)
		return r.StatusCode, string(body)
	}
	if code, body := get("/v1/models"); code != 200 || !strings.Contains(body, `"id":"m"`) || !strings.Contains(body, `"id":"other"`) || strings.Count(body, `"shared"`) != 1 {
		t.Errorf("/v1/models = %d %s", code, body)
	}
	if code, _ := get("/health"); code != 200 {
		t.Errorf("/health = %d", code)
	}
	if code, _ := get("/ready"); code != 200 {
		t.Errorf("/ready = %d", code)
	}
	resp, _ := post(t, tr.url+"/v1/completions", `{"model":"other","prompt":"x"}`)
	if resp.Header.Get("x-kvroute-worker") != "w1" {
		t.Errorf("model other routed to %q, only w1 serves it", resp.Header.Get("x-kvroute-worker"))
	}
	_, metrics := get("/metrics")
	for _, want := range []string{
		`kvroute_router_requests_total{model="other",status="200",worker="w1"} 1`,
		`kvroute_router_inflight_requests{worker="w0"} 0`,
		`kvroute_upstream_worker_available{worker="w1"} 1`,
		"kvroute_router_request_duration_seconds_bucket",
		"kvroute_router_time_to_first_byte_seconds_bucket",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestGracefulDrainCompletesInFlightStream(t *testing.T) {
	fw := newFakeWorker(t, "m")
	fw.gateAt.Store(2)
	tr := startRouter(t, testConfig(fw))
	req, _ := http.NewRequest("POST", tr.url+"/v1/chat/completions", strings.NewReader(streamBody))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if line, _ := br.ReadString('\n'); !strings.Contains(line, "c1") {
		t.Fatalf("first line %q", line)
	}
	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shutdown <- tr.srv.Shutdown(ctx)
	}()
	poll.CheckFor(t, 2*time.Second, "draining", tr.srv.draining.Load)
	// New connections are refused while the stream goes on.
	poll.CheckFor(t, 2*time.Second, "listener closed", func() bool {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(tr.url, "http://"), 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case err := <-shutdown:
		t.Fatalf("shutdown returned (%v) with a stream in flight", err)
	default:
	}
	close(fw.gate)
	rest, _ := io.ReadAll(br)
	if !strings.HasSuffix(string(rest), "data: [DONE]\n\n") {
		t.Errorf("stream cut by the drain: %q", rest)
	}
	select {
	case err := <-shutdown:
		if err != nil {
			t.Errorf("shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not return after the stream ended")
	}
}

// A Shutdown that runs before Serve has got going (a stack told to stop right after it
// started) still stops it: fasthttp's own Shutdown closes only the listeners its Serve
// registered, so Serve used to accept on ln forever and the stack's Run never returned.
func TestShutdownBeforeServeStopsIt(t *testing.T) {
	fw := newFakeWorker(t, "m")
	tr := startRouterWith(t, testConfig(fw), func(tr *testRouter) {
		if err := tr.srv.Shutdown(t.Context()); err != nil {
			t.Fatal(err)
		}
	})
	poll.CheckFor(t, 10*time.Second, "the listener to refuse connections", func() bool {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(tr.url, "http://"), time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
}
