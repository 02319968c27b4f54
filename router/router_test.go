package router

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/upstream"
)

// fakeWorker is a real OpenAI-style HTTP server on loopback whose behaviour a test sets.
type fakeWorker struct {
	*httptest.Server
	models   []string
	fail     atomic.Int32 // answer inference with this status when non-zero
	hang     atomic.Bool  // accept inference requests and never answer
	chunks   atomic.Int32 // streaming: content chunks to send (default 3)
	gate     chan struct{}
	gateAt   atomic.Int32 // streaming: wait on gate before sending this chunk (0: never)
	requests atomic.Int32
	canceled atomic.Int32 // requests whose client (the router) went away
	// usage, when set, is the raw JSON value of the answers' "usage" (non-streamed) and
	// of a last chunk's before [DONE] (streamed).
	usage    atomic.Pointer[string]
	mu       sync.Mutex
	lastBody []byte
	lastHdr  http.Header
}

func newFakeWorker(t testing.TB, models ...string) *fakeWorker {
	t.Helper()
	fw := &fakeWorker{models: models, gate: make(chan struct{})}
	fw.chunks.Store(3)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		if fw.fail.Load() != 0 {
			w.WriteHeader(int(fw.fail.Load()))
			return
		}
		w.WriteHeader(200)
	})
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, r *http.Request) {
		var data []string
		for _, m := range fw.models {
			data = append(data, fmt.Sprintf(`{"id":%q,"object":"model"}`, m))
		}
		fmt.Fprintf(w, `{"object":"list","data":[%s]}`, strings.Join(data, ","))
	})
	infer := func(w http.ResponseWriter, r *http.Request) {
		fw.requests.Add(1)
		body, _ := io.ReadAll(r.Body)
		fw.mu.Lock()
		fw.lastBody, fw.lastHdr = body, r.Header.Clone()
		fw.mu.Unlock()
		if fw.hang.Load() {
			<-r.Context().Done()
			fw.canceled.Add(1)
			return
		}
		if code := fw.fail.Load(); code != 0 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(int(code))
			fmt.Fprintf(w, `{"error":{"message":"worker says %d","type":"x","code":%d}}`, code, code)
			return
		}
		var req struct {
			Stream bool `json:"stream"`
		}
		_ = json.Unmarshal(body, &req)
		w.Header().Set("X-Worker-Port", r.Host)
		// X-Worker-Hop is named by Connection: hop-by-hop, never passed to the client.
		w.Header().Set("Connection", "keep-alive, X-Worker-Hop")
		w.Header().Set("X-Worker-Hop", "1")
		if !req.Stream {
			w.Header().Set("Content-Type", "application/json")
			usage := ""
			if u := fw.usage.Load(); u != nil {
				usage = `,"usage":` + *u
			}
			fmt.Fprintf(w, `{"id":"x","object":"chat.completion","choices":[{"message":{"role":"assistant","content":"ok"}}],"body_len":%d%s}`, len(body), usage)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		fl := w.(http.Flusher)
		fl.Flush()
		n := int(fw.chunks.Load())
		for i := 1; i <= n; i++ {
			if int(fw.gateAt.Load()) == i {
				select {
				case <-fw.gate:
				case <-r.Context().Done():
					fw.canceled.Add(1)
					return
				}
			}
			if _, err := fmt.Fprintf(w, "data: {\"choices\":[{\"delta\":{\"content\":\"c%d\"}}]}\n\n", i); err != nil {
				fw.canceled.Add(1)
				return
			}
			fl.Flush()
		}
		if u := fw.usage.Load(); u != nil {
			fmt.Fprintf(w, "data: {\"choices\":[],\"usage\":%s}\n\n", *u)
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	}
	mux.HandleFunc("/v1/chat/completions", infer)
	mux.HandleFunc("/v1/completions", infer)
	mux.HandleFunc("/v1/embeddings", infer)
	fw.Server = httptest.NewServer(mux)
	t.Cleanup(fw.Close)
	return fw
}

type testRouter struct {
	srv  *Server
	pool *upstream.Pool
	url  string
	reg  *prometheus.Registry
	stop func()
}

// testDataPlane is the data plane the tests' routers use: $KVROUTE_TEST_DATA_PLANE,
// else fasthttp. make test runs this package's tests with each (dataplane_test.go).
var testDataPlane = cmp.Or(os.Getenv("KVROUTE_TEST_DATA_PLANE"), configs.DataPlaneFastHTTP)

func testConfig(workers ...*fakeWorker) *configs.Config {
	cfg := configs.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataPlane = testDataPlane
	cfg.Health.Interval = 50 * time.Millisecond
	cfg.Health.EjectBase = 100 * time.Millisecond
	cfg.Health.EjectMax = 200 * time.Millisecond
	cfg.Timeouts.Shutdown = 5 * time.Second
	for i, fw := range workers {
		cfg.Workers = append(cfg.Workers, configs.Worker{ID: fmt.Sprintf("w%d", i), URL: fw.URL, MaxConns: 64})
	}
	return &cfg
}

func startRouter(t testing.TB, cfg *configs.Config) *testRouter {
	t.Helper()
	return startRouterWith(t, cfg, nil)
}

// startRouterWith is startRouter with a hook that runs after the Server is built and
// before it serves (to mount the admin API, say).
func startRouterWith(t testing.TB, cfg *configs.Config, beforeServe func(*testRouter)) *testRouter {
	t.Helper()
	return startRouterOn(t, cfg, beforeServe, nil)
}

// startRouterOn is startRouterWith serving on wrap(the listener) when wrap is set.
func startRouterOn(t testing.TB, cfg *configs.Config, beforeServe func(*testRouter), wrap func(net.Listener) net.Listener) *testRouter {
	t.Helper()
	return startRouterOpts(t, cfg, nil, beforeServe, wrap)
}

// startRouterOpts is startRouterOn with opts, when set, completing the Server's Options
// (an index and a hasher, say) before New.
func startRouterOpts(t testing.TB, cfg *configs.Config, opts func(*Options), beforeServe func(*testRouter), wrap func(net.Listener) net.Listener) *testRouter {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	pool, err := upstream.NewPool(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	o := Options{Config: cfg, Pool: pool, Registerer: reg, Gatherer: reg, Logger: log}
	if opts != nil {
		opts(&o)
	}
	srv, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	pool.Start(ctx)
	poolDone := make(chan struct{})
	go func() { pool.Run(ctx); close(poolDone) }()
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	tr := &testRouter{srv: srv, pool: pool, url: "http://" + ln.Addr().String(), reg: reg}
	if wrap != nil {
		ln = wrap(ln)
	}
	if beforeServe != nil {
		beforeServe(tr)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	var once sync.Once
	tr.stop = func() {
		once.Do(func() {
			sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
			defer c()
			_ = srv.Shutdown(sctx)
			<-served
			cancel()
			<-poolDone
		})
	}
	t.Cleanup(tr.stop)
	return tr
}

const chatBody = `{"model":"m","messages":[{"role":"user","content":"hello"}]}`
const streamBody = `{"model":"m","stream":true,"messages":[{"role":"user","content":"hello"}]}`

func post(t *testing.T, url, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// checkOpenAIError asserts an OpenAI-shaped JSON error with the given status and code.
func checkOpenAIError(t *testing.T, resp *http.Response, body []byte, status int, code string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("status = %d, want %d (body %s)", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	var e struct {
		Error *struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Code    *string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == nil || e.Error.Message == "" || e.Error.Type == "" || e.Error.Code == nil {
		t.Fatalf("not an OpenAI error: %s (%v)", body, err)
	}
	if *e.Error.Code != code {
		t.Errorf("error code = %q, want %q", *e.Error.Code, code)
	}
}
