package router

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// startSimFleet starts n kvsim workers and a config routing to them (ids w0..).
func startSimFleet(t *testing.T, n int) (*sim.Fleet, *configs.Config) {
	t.Helper()
	fc := sim.DefaultFleetConfig()
	fc.Workers = n
	fc.Worker.TimeScale = 0.01
	f, err := sim.StartFleet(context.Background(), fc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	cfg := testConfig()
	for i, w := range f.Workers() {
		cfg.Workers = append(cfg.Workers, configs.Worker{ID: fmt.Sprintf("w%d", i), URL: w.URL(), MaxConns: 64})
	}
	return f, cfg
}

// respond sends a Responses request through the router and returns the answer's id
// and the worker that answered.
func respond(t *testing.T, url, body string) (id, worker string) {
	t.Helper()
	resp, out := post(t, url+"/v1/responses", body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	var r struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(out, &r); err != nil || r.ID == "" {
		t.Fatalf("answer %s: %v", out, err)
	}
	return r.ID, resp.Header.Get("x-kvroute-worker")
}

func doMethod(t *testing.T, method, url string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestResponsesStickToTheHolder(t *testing.T) {
	_, cfg := startSimFleet(t, 4)
	cfg.Policy = "round_robin" // without stickiness every turn would move
	tr := startRouter(t, cfg)
	id, holder := respond(t, tr.url, `{"model":"kvsim","input":"turn 0","max_output_tokens":4}`)
	for turn := 1; turn < 6; turn++ {
		next, w := respond(t, tr.url, fmt.Sprintf(`{"model":"kvsim","previous_response_id":%q,"input":"turn %d","max_output_tokens":4}`, id, turn))
		if w != holder {
			t.Fatalf("turn %d went to %s, the response is on %s", turn, w, holder)
		}
		id = next
	}
	// Retrieval and cancel go to the holder; DELETE forgets the id.
	for _, m := range []struct{ method, suffix string }{{"GET", ""}, {"POST", "/cancel"}, {"DELETE", ""}} {
		resp, out := doMethod(t, m.method, tr.url+"/v1/responses/"+id+m.suffix)
		if resp.StatusCode != 200 || resp.Header.Get("x-kvroute-worker") != holder {
			t.Fatalf("%s %s: %d on %q: %s", m.method, m.suffix, resp.StatusCode, resp.Header.Get("x-kvroute-worker"), out)
		}
	}
	resp, out := doMethod(t, "GET", tr.url+"/v1/responses/"+id)
	checkOpenAIError(t, resp, out, 404, "response_not_found")
	if n := gathered(t, tr, "kvroute_router_stored_responses"); n != 5 { // 6 stored, 1 deleted
		t.Errorf("kvroute_router_stored_responses = %v", n)
	}
	// A response stored with store false is not remembered (the engine did not keep it).
	unstored, _ := respond(t, tr.url, `{"model":"kvsim","input":"x","store":false,"max_output_tokens":2}`)
	resp, out = post(t, tr.url+"/v1/responses", fmt.Sprintf(`{"model":"kvsim","previous_response_id":%q,"input":"y"}`, unstored))
	checkOpenAIError(t, resp, out, 404, "response_not_found")
}

func TestResponsesUnknownGoneAndDown(t *testing.T) {
	_, cfg := startSimFleet(t, 2)
	tr := startRouter(t, cfg)
	resp, out := post(t, tr.url+"/v1/responses", `{"model":"kvsim","previous_response_id":"resp_nobody","input":"x"}`)
	checkOpenAIError(t, resp, out, 404, "response_not_found")
	if !strings.Contains(string(out), "resp_nobody") {
		t.Errorf("the message does not name the id: %s", out)
	}
	// A worker that left the fleet: its responses are gone.
	tr.srv.responses.put("resp_left", "w9", "kvsim", time.Now())
	resp, out = doMethod(t, "GET", tr.url+"/v1/responses/resp_left")
	checkOpenAIError(t, resp, out, 404, "response_not_found")
	// A worker that holds it but is unavailable: 503, not re-routed.
	id, holder := respond(t, tr.url, `{"model":"kvsim","input":"x","max_output_tokens":2}`)
	w := tr.pool.Worker(holder)
	tr.pool.ReportFailure(w, errStatus5xx)
	tr.pool.ReportFailure(w, errStatus5xx)
	tr.pool.ReportFailure(w, errStatus5xx)
	if w.Available() {
		t.Fatal("the worker was not ejected")
	}
	resp, out = post(t, tr.url+"/v1/responses", fmt.Sprintf(`{"model":"kvsim","previous_response_id":%q,"input":"y"}`, id))
	checkOpenAIError(t, resp, out, 503, "response_worker_unavailable")
	// Bad requests.
	for _, body := range []string{`{"input":"x"}`, `{"model":"kvsim"}`, `{"model":"kvsim","input":3}`, `{"model":"kvsim","input":"x","instructions":[1]}`} {
		resp, out := post(t, tr.url+"/v1/responses", body)
		checkOpenAIError(t, resp, out, 400, "invalid_request")
	}
	resp, out = doMethod(t, "PUT", tr.url+"/v1/responses/"+id)
	checkOpenAIError(t, resp, out, 405, "method_not_allowed")
	resp, out = doMethod(t, "GET", tr.url+"/v1/responses/"+id+"/nope")
	checkOpenAIError(t, resp, out, 404, "not_found")
}

func TestResponsesStreamThroughRouter(t *testing.T) {
	_, cfg := startSimFleet(t, 3)
	cfg.Policy = "round_robin"
	tr := startRouter(t, cfg)
	resp, err := http.Post(tr.url+"/v1/responses", "application/json",
		strings.NewReader(`{"model":"kvsim","input":"hello","stream":true,"max_output_tokens":6}`))
	if err != nil {
		t.Fatal(err)
	}
	holder := resp.Header.Get("x-kvroute-worker")
	var id, last string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev struct {
			Type     string `json:"type"`
			Response *struct {
				ID string `json:"id"`
			} `json:"response"`
			Error any `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &ev); err != nil || ev.Error != nil {
			t.Fatalf("event %s: %v", data, err)
		}
		if ev.Type == "response.created" {
			id = ev.Response.ID
		}
		last = ev.Type
	}
	resp.Body.Close()
	if last != "response.completed" || id == "" {
		t.Fatalf("stream ended with %q, id %q", last, id)
	}
	for range 3 { // round robin would move each of them
		_, w := respond(t, tr.url, fmt.Sprintf(`{"model":"kvsim","previous_response_id":%q,"input":"more","max_output_tokens":2}`, id))
		if w != holder {
			t.Fatalf("follow-up of a streamed response went to %s, not %s", w, holder)
		}
	}
	// The stream was complete: counted as a 200, not as a cut stream.
	poll.CheckFor(t, 5*time.Second, "the stream counted as a 200", func() bool {
		return testutil.ToFloat64(tr.srv.metrics.requests.WithLabelValues(holder, "kvsim", "200")) >= 1
	})
	if n := testutil.CollectAndCount(tr.srv.metrics.upErrors); n != 0 {
		t.Errorf("%d upstream error series", n)
	}
}

func TestPassthrough(t *testing.T) {
	_, cfg := startSimFleet(t, 2)
	cfg.Passthrough = []string{"/v1/extra"}
	cfg.MaxBodyBytes = 1 << 16
	tr := startRouter(t, cfg)
	seen := map[string]bool{}
	for _, p := range []string{"/tokenize", "/detokenize", "/v1/rerank", "/rerank", "/v1/score", "/score", "/pooling", "/classify"} {
		for range 2 {
			resp, out := post(t, tr.url+p, `{"model":"kvsim","prompt":"hi","tokens":[1,2],"query":"q","documents":["a"],"input":"x","text_1":"a","text_2":"b"}`)
			if resp.StatusCode != 200 || resp.Header.Get("x-kvroute-worker") == "" || resp.Header.Get("X-Request-Id") == "" {
				t.Fatalf("%s: %d %v %s", p, resp.StatusCode, resp.Header, out)
			}
			seen[resp.Header.Get("x-kvroute-worker")] = true
		}
	}
	if len(seen) != 2 {
		t.Errorf("pass-through used workers %v, want both", seen)
	}
	upload := func(model string, size int) (*http.Response, []byte) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		fw, _ := mw.CreateFormFile("file", "a.wav")
		_, _ = fw.Write(bytes.Repeat([]byte{'a'}, size))
		if model != "" {
			_ = mw.WriteField("model", model)
		}
		_ = mw.Close()
		resp, err := http.Post(tr.url+"/v1/audio/transcriptions", mw.FormDataContentType(), &buf)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp, out
	}
	resp, out := upload("kvsim", 1000)
	if resp.StatusCode != 200 || !strings.Contains(string(out), "transcribed by") {
		t.Fatalf("audio: %d %s", resp.StatusCode, out)
	}
	resp, out = upload("", 1000)
	checkOpenAIError(t, resp, out, 400, "invalid_request")
	resp, out = upload("kvsim", 1<<17)
	checkOpenAIError(t, resp, out, 413, "request_too_large")
	resp, out = post(t, tr.url+"/tokenize", `{"prompt":"no model"}`)
	checkOpenAIError(t, resp, out, 400, "invalid_request")
	resp, out = post(t, tr.url+"/tokenize", `{"model":"nope","prompt":"x"}`)
	checkOpenAIError(t, resp, out, 404, "model_not_found")
	resp, out = post(t, tr.url+"/v1/unknown", `{"model":"kvsim"}`)
	checkOpenAIError(t, resp, out, 404, "not_found")
	resp, out = doMethod(t, "GET", tr.url+"/tokenize")
	checkOpenAIError(t, resp, out, 405, "method_not_allowed")
	// A configured extra path is forwarded (kvsim does not serve it: its 404 comes back).
	resp, _ = post(t, tr.url+"/v1/extra", `{"model":"kvsim"}`)
	if resp.StatusCode != 404 || resp.Header.Get("x-kvroute-worker") == "" {
		t.Errorf("extra path: %d %v", resp.StatusCode, resp.Header)
	}
}

// TestRouterPathsServed checks configs.RouterPaths against the endpoint table: every
// path the config refuses as a passthrough entry is one the router serves.
func TestRouterPathsServed(t *testing.T) {
	tr := startRouter(t, testConfig(newFakeWorker(t, "m")))
	for _, p := range configs.RouterPaths {
		resp, out := post(t, tr.url+p, `{}`)
		if resp.StatusCode == 404 && strings.Contains(string(out), `"not_found"`) {
			t.Errorf("%s is not served", p)
		}
	}
}

// An unstored streamed response is complete at its terminal event too: it has no
// data: [DONE], and must not end with the router's cut-stream error event.
func TestResponsesUnstoredStreamCompletes(t *testing.T) {
	_, cfg := startSimFleet(t, 1)
	tr := startRouter(t, cfg)
	resp, out := post(t, tr.url+"/v1/responses", `{"model":"kvsim","input":"hello","stream":true,"store":false,"max_output_tokens":3}`)
	if resp.StatusCode != 200 || strings.Contains(string(out), `"error":{`) || !strings.Contains(string(out), "response.completed") {
		t.Fatalf("%d %s", resp.StatusCode, out)
	}
	if tr.srv.responses.len() != 0 {
		t.Error("an unstored response was remembered")
	}
}

// gathered returns the value of the router's gauge named name.
func gathered(t *testing.T, tr *testRouter, name string) float64 {
	t.Helper()
	mfs, err := tr.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}

// A pass-through request a worker fails (5xx, before any byte) is retried on another.
func TestPassthroughRetries(t *testing.T) {
	_, cfg := startSimFleet(t, 1)
	var failed atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{"object":"list","data":[{"id":"kvsim","object":"model"}]}`)
	})
	mux.HandleFunc("POST /v1/rerank", func(w http.ResponseWriter, _ *http.Request) {
		failed.Add(1)
		w.WriteHeader(500)
	})
	broken := httptest.NewServer(mux)
	t.Cleanup(broken.Close)
	cfg.Workers = append(cfg.Workers, configs.Worker{ID: "broken", URL: broken.URL, MaxConns: 8})
	cfg.Policy = "round_robin"
	cfg.Health.EjectAfter = 100 // keep it in rotation: the test is about the retry
	tr := startRouter(t, cfg)
	for i := range 4 {
		resp, out := post(t, tr.url+"/v1/rerank", `{"model":"kvsim","query":"q","documents":["a","b"]}`)
		if resp.StatusCode != 200 || resp.Header.Get("x-kvroute-worker") != "w0" {
			t.Fatalf("request %d: %d on %q: %s", i, resp.StatusCode, resp.Header.Get("x-kvroute-worker"), out)
		}
	}
	if failed.Load() == 0 || testutil.ToFloat64(tr.srv.metrics.retries.WithLabelValues("kvsim")) != float64(failed.Load()) {
		t.Errorf("broken worker tried %d times, retries %v", failed.Load(), testutil.ToFloat64(tr.srv.metrics.retries.WithLabelValues("kvsim")))
	}
}
