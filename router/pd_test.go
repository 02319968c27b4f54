package router

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/scorer"
)

// pdWorker is a real HTTP server on loopback that speaks one side of a P/D protocol
// as vLLM's and SGLang's workers do: a vLLM prefill worker answers one token with
// kv_transfer_params naming its engine, a vLLM decode worker refuses params that name
// no such engine; an SGLang worker checks the bootstrap fields.
type pdWorker struct {
	*httptest.Server
	engine   string // the remote_engine_id its prefill answers carry
	fail     atomic.Int32
	cutAfter atomic.Int32 // decode streams: drop the connection after this many chunks
	noParams atomic.Bool  // prefill: answer without kv_transfer_params
	requests atomic.Int32
	mu       sync.Mutex
	bodies   []map[string]any
}

func newPDWorker(t *testing.T, engine string) *pdWorker {
	t.Helper()
	pw := &pdWorker{engine: engine}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		if c := pw.fail.Load(); c != 0 {
			w.WriteHeader(int(c))
		}
	})
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{"object":"list","data":[{"id":"m","object":"model"}]}`)
	})
	infer := func(w http.ResponseWriter, r *http.Request) {
		pw.requests.Add(1)
		raw, _ := io.ReadAll(r.Body)
		var body map[string]any
		if err := json.Unmarshal(raw, &body); err != nil {
			http.Error(w, `{"error":{"message":"bad json"}}`, 400)
			return
		}
		pw.mu.Lock()
		pw.bodies = append(pw.bodies, body)
		pw.mu.Unlock()
		if c := pw.fail.Load(); c != 0 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(int(c))
			fmt.Fprintf(w, `{"error":{"message":"worker says %d","type":"x","code":%d}}`, c, c)
			return
		}
		kv, _ := body["kv_transfer_params"].(map[string]any)
		if kv != nil && kv["do_remote_decode"] == true {
			// vLLM prefill: one token, then the handle of the blocks it keeps.
			w.Header().Set("Content-Type", "application/json")
			params := fmt.Sprintf(`,"kv_transfer_params":{"do_remote_prefill":true,"do_remote_decode":false,"remote_engine_id":%q,"remote_block_ids":[1,2,3],"remote_host":"127.0.0.1","remote_port":5600,"tp_size":1}`, pw.engine)
			if pw.noParams.Load() {
				params = ""
			}
			fmt.Fprintf(w, `{"id":"p","object":"chat.completion","choices":[{"message":{"role":"assistant","content":"x"}}]%s}`, params)
			return
		}
		stream, _ := body["stream"].(bool)
		if !stream {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"id":"d","object":"chat.completion","choices":[{"message":{"role":"assistant","content":"from %s"}}]}`, pw.engine)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fl := w.(http.Flusher)
		for i := 1; i <= 3; i++ {
			if c := pw.cutAfter.Load(); c > 0 && int32(i) > c {
				panic(http.ErrAbortHandler) // the engine dies mid-stream
			}
			fmt.Fprintf(w, "data: {\"choices\":[{\"delta\":{\"content\":\"%s-c%d\"}}]}\n\n", pw.engine, i)
			fl.Flush()
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	}
	mux.HandleFunc("/v1/chat/completions", infer)
	mux.HandleFunc("/v1/completions", infer)
	pw.Server = httptest.NewServer(mux)
	t.Cleanup(pw.Close)
	return pw
}

// last returns the last body the worker got; nil for none.
func (pw *pdWorker) last() map[string]any {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	if len(pw.bodies) == 0 {
		return nil
	}
	return pw.bodies[len(pw.bodies)-1]
}

// pdConfig is a router config over workers with the given roles (ids p0.. for
// prefill, d0.. for decode, b0.. for both).
func pdConfig(protocol string, ws []*pdWorker, roles []string) *configs.Config {
	cfg := testConfig()
	cfg.PD.Protocol = protocol
	n := map[string]int{}
	for i, w := range ws {
		id := fmt.Sprintf("%c%d", roles[i][0], n[roles[i]])
		n[roles[i]]++
		cfg.Workers = append(cfg.Workers, configs.Worker{ID: id, URL: w.URL, MaxConns: 64, Role: roles[i], BootstrapPort: 8998})
	}
	return cfg
}

const pdStreamBody = `{"model":"m","stream":true,"stream_options":{"include_usage":true},"min_tokens":2,"max_tokens":50,"messages":[{"role":"user","content":"hello there"}]}`

func TestPDVLLMStreamsTheDecodeAnswerWithTheprefillParams(t *testing.T) {
	p, d := newPDWorker(t, "P0"), newPDWorker(t, "D0")
	tr := startRouter(t, pdConfig(configs.PDVLLM, []*pdWorker{p, d}, []string{"prefill", "decode"}))
	resp, out := post(t, tr.url+"/v1/chat/completions", pdStreamBody)
	if resp.StatusCode != 200 || !strings.Contains(string(out), "D0-c3") || !strings.HasSuffix(string(out), "data: [DONE]\n\n") {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	if got := resp.Header.Get("x-kvroute-worker"); got != "d0" {
		t.Errorf("x-kvroute-worker = %q, want the decode worker d0", got)
	}
	if got := resp.Header.Get("x-kvroute-prefill-worker"); got != "p0" {
		t.Errorf("x-kvroute-prefill-worker = %q, want p0", got)
	}
	pb := p.last()
	want := map[string]any{"do_remote_decode": true, "do_remote_prefill": false, "remote_engine_id": nil,
		"remote_block_ids": nil, "remote_host": nil, "remote_port": nil}
	if fmt.Sprint(pb["kv_transfer_params"]) != fmt.Sprint(want) || pb["max_tokens"] != 1.0 || pb["stream"] != false {
		t.Errorf("prefill body %v", pb)
	}
	for _, k := range []string{"stream_options", "min_tokens"} {
		if _, ok := pb[k]; ok {
			t.Errorf("prefill body has %s: %v", k, pb)
		}
	}
	db := d.last()
	kv, _ := db["kv_transfer_params"].(map[string]any)
	if kv["remote_engine_id"] != "P0" || kv["do_remote_prefill"] != true || kv["do_remote_decode"] != false || kv["remote_port"] != 5600.0 {
		t.Errorf("decode kv_transfer_params %v", kv)
	}
	if db["stream"] != true || db["max_tokens"] != 50.0 || db["min_tokens"] != 2.0 || db["stream_options"] == nil {
		t.Errorf("decode body lost the client's fields: %v", db)
	}
	poll.CheckFor(t, 5*time.Second, "bookkeeping freed", func() bool {
		return tr.pool.Worker("p0").InFlight() == 0 && tr.pool.Worker("d0").InFlight() == 0 &&
			tr.srv.pd.queued("d0").Load() == 0 && tr.pool.Worker("d0").ActiveBlocks() == 0
	})
	for name, h := range map[string]any{"prefill": tr.srv.pd.prefill, "decode_ttft": tr.srv.pd.decodeTTFT} {
		if n := histCount(t, tr, "kvroute_pd_"+name+"_seconds"); n != 1 {
			t.Errorf("kvroute_pd_%s_seconds count = %d, want 1 (%T)", name, n, h)
		}
	}
	decs := tr.srv.Decisions(10)
	if len(decs) != 2 || decs[0].Phase != "decode" || decs[0].Chosen != "d0" || decs[1].Phase != "prefill" || decs[1].Chosen != "p0" {
		t.Errorf("decisions %+v", decs)
	}
}

// histCount returns the sample count of the histogram named name in tr's registry.
func histCount(t *testing.T, tr *testRouter, name string) uint64 {
	t.Helper()
	mfs, err := tr.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func TestPDVLLMNonStreamed(t *testing.T) {
	p, d := newPDWorker(t, "P0"), newPDWorker(t, "D0")
	tr := startRouter(t, pdConfig(configs.PDVLLM, []*pdWorker{p, d}, []string{"prefill", "decode"}))
	resp, out := post(t, tr.url+"/v1/completions", `{"model":"m","prompt":"hello","max_completion_tokens":9}`)
	if resp.StatusCode != 200 || !strings.Contains(string(out), "from D0") || resp.Header.Get("x-kvroute-prefill-worker") != "p0" {
		t.Fatalf("status %d headers %v: %s", resp.StatusCode, resp.Header, out)
	}
	if pb := p.last(); pb["max_completion_tokens"] != 1.0 || pb["max_tokens"] != 1.0 {
		t.Errorf("prefill body %v", pb)
	}
	if db := d.last(); db["max_completion_tokens"] != 9.0 {
		t.Errorf("decode body %v", db)
	}
}

// A prefill worker that fails before any byte (a 503, then a dead one) is retried on
// another prefill worker; the decode phase goes on with the one that answered.
func TestPDPrefillFailureRetriesAnotherPrefillWorker(t *testing.T) {
	bad, good, d := newPDWorker(t, "BAD"), newPDWorker(t, "GOOD"), newPDWorker(t, "D0")
	cfg := pdConfig(configs.PDVLLM, []*pdWorker{bad, good, d}, []string{"prefill", "prefill", "decode"})
	cfg.Policy = "round_robin"
	cfg.Health.Interval = time.Hour // the failures are seen by requests, not checks
	tr := startRouter(t, cfg)
	bad.fail.Store(503)
	for i := range 4 {
		resp, out := post(t, tr.url+"/v1/chat/completions", pdStreamBody)
		if resp.StatusCode != 200 || resp.Header.Get("x-kvroute-prefill-worker") != "p1" || !strings.Contains(string(out), "[DONE]") {
			t.Fatalf("request %d: status %d prefill %q: %s", i, resp.StatusCode, resp.Header.Get("x-kvroute-prefill-worker"), out)
		}
		if kv := d.last()["kv_transfer_params"].(map[string]any); kv["remote_engine_id"] != "GOOD" {
			t.Fatalf("decode got params of %v", kv["remote_engine_id"])
		}
	}
	bad.Close() // killed: connection refused
	resp, _ := post(t, tr.url+"/v1/chat/completions", pdStreamBody)
	if resp.StatusCode != 200 || resp.Header.Get("x-kvroute-prefill-worker") != "p1" {
		t.Fatalf("after the kill: status %d prefill %q", resp.StatusCode, resp.Header.Get("x-kvroute-prefill-worker"))
	}
	poll.CheckFor(t, 5*time.Second, "in-flight back to 0", func() bool {
		return tr.pool.Worker("p0").InFlight() == 0 && tr.pool.Worker("p1").InFlight() == 0 && tr.pool.Worker("d0").InFlight() == 0
	})
}

// Every prefill worker failing: the request is served whole by the decode pool.
func TestPDEveryPrefillFailedFallsBackToTheDecodePool(t *testing.T) {
	p, d := newPDWorker(t, "P0"), newPDWorker(t, "D0")
	cfg := pdConfig(configs.PDVLLM, []*pdWorker{p, d}, []string{"prefill", "decode"})
	cfg.Health.Interval = time.Hour
	tr := startRouter(t, cfg)
	p.fail.Store(500)
	resp, out := post(t, tr.url+"/v1/chat/completions", pdStreamBody)
	if resp.StatusCode != 200 || !strings.Contains(string(out), "D0-c3") || resp.Header.Get("x-kvroute-prefill-worker") != "" {
		t.Fatalf("status %d prefill header %q: %s", resp.StatusCode, resp.Header.Get("x-kvroute-prefill-worker"), out)
	}
	if _, ok := d.last()["kv_transfer_params"]; ok {
		t.Errorf("aggregated request carried kv_transfer_params: %v", d.last())
	}
	if v := testutil.ToFloat64(tr.srv.pd.fallbacks.WithLabelValues(fallbackPrefillFailed)); v != 1 {
		t.Errorf("fallbacks{prefill_failed} = %v", v)
	}
}

// A pool with no healthy worker: the other pool serves the request whole, counted.
func TestPDPoolDownFallsBackToAggregatedServing(t *testing.T) {
	p, d := newPDWorker(t, "P0"), newPDWorker(t, "D0")
	tr := startRouter(t, pdConfig(configs.PDVLLM, []*pdWorker{p, d}, []string{"prefill", "decode"}))
	p.fail.Store(503) // its health checks fail too
	poll.CheckFor(t, 10*time.Second, "prefill worker unavailable", func() bool { return !tr.pool.Worker("p0").Available() })
	before := p.requests.Load()
	resp, out := post(t, tr.url+"/v1/chat/completions", pdStreamBody)
	if resp.StatusCode != 200 || resp.Header.Get("x-kvroute-worker") != "d0" || !strings.Contains(string(out), "[DONE]") {
		t.Fatalf("status %d worker %q: %s", resp.StatusCode, resp.Header.Get("x-kvroute-worker"), out)
	}
	if p.requests.Load() != before {
		t.Error("the unavailable prefill worker got a request")
	}
	if v := testutil.ToFloat64(tr.srv.pd.fallbacks.WithLabelValues(fallbackNoPrefill)); v != 1 {
		t.Errorf("fallbacks{no_prefill} = %v", v)
	}
	decs := tr.srv.Decisions(1)
	if len(decs) != 1 || decs[0].Phase != "aggregated_decode_pool" {
		t.Errorf("decision %+v", decs)
	}

	p.fail.Store(0)
	poll.CheckFor(t, 10*time.Second, "prefill worker back", func() bool { return tr.pool.Worker("p0").Available() })
	d.fail.Store(503)
	poll.CheckFor(t, 10*time.Second, "decode worker unavailable", func() bool { return !tr.pool.Worker("d0").Available() })
	// d0 stays failing (so its checks keep it out): the prefill pool serves whole.
	resp, out = post(t, tr.url+"/v1/chat/completions", pdStreamBody)
	if resp.StatusCode != 200 || resp.Header.Get("x-kvroute-worker") != "p0" || !strings.Contains(string(out), "P0-c3") {
		t.Fatalf("decode pool down: status %d worker %q: %s", resp.StatusCode, resp.Header.Get("x-kvroute-worker"), out)
	}
	if v := testutil.ToFloat64(tr.srv.pd.fallbacks.WithLabelValues(fallbackNoDecode)); v != 1 {
		t.Errorf("fallbacks{no_decode} = %v", v)
	}
}

// A decode worker dying mid-stream: the client's stream ends with the SSE error event
// and the request's bookkeeping is freed on both workers.
func TestPDDecodeFailureMidStream(t *testing.T) {
	p, d := newPDWorker(t, "P0"), newPDWorker(t, "D0")
	tr := startRouter(t, pdConfig(configs.PDVLLM, []*pdWorker{p, d}, []string{"prefill", "decode"}))
	d.cutAfter.Store(1)
	req, _ := http.NewRequest("POST", tr.url+"/v1/chat/completions", strings.NewReader(pdStreamBody))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(bufio.NewReader(resp.Body))
	if !strings.Contains(string(out), "D0-c1") || !strings.Contains(string(out), `data: {"error":`) || strings.HasSuffix(string(out), "data: [DONE]\n\n") {
		t.Fatalf("stream %q", out)
	}
	poll.CheckFor(t, 5*time.Second, "bookkeeping freed", func() bool {
		return tr.pool.Worker("d0").InFlight() == 0 && tr.srv.pd.queued("d0").Load() == 0 &&
			tr.pool.Worker("d0").ActiveBlocks() == 0 && tr.pool.Worker("p0").InFlight() == 0
	})
}

// The prefill answer without kv_transfer_params: the decode worker gets the plain
// request (it prefills itself), counted.
func TestPDNoKVParams(t *testing.T) {
	p, d := newPDWorker(t, "P0"), newPDWorker(t, "D0")
	tr := startRouter(t, pdConfig(configs.PDVLLM, []*pdWorker{p, d}, []string{"prefill", "decode"}))
	p.noParams.Store(true)
	resp, _ := post(t, tr.url+"/v1/chat/completions", pdStreamBody)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if _, ok := d.last()["kv_transfer_params"]; ok {
		t.Errorf("decode body %v", d.last())
	}
	if v := testutil.ToFloat64(tr.srv.pd.fallbacks.WithLabelValues(fallbackNoKVParams)); v != 1 {
		t.Errorf("fallbacks{no_kv_params} = %v", v)
	}
}

// A prefill worker's 4xx is the client's answer: the request itself is refused.
func TestPDPrefill4xxIsTheAnswer(t *testing.T) {
	p, d := newPDWorker(t, "P0"), newPDWorker(t, "D0")
	cfg := pdConfig(configs.PDVLLM, []*pdWorker{p, d}, []string{"prefill", "decode"})
	cfg.Health.Interval = time.Hour
	tr := startRouter(t, cfg)
	p.fail.Store(400)
	resp, out := post(t, tr.url+"/v1/chat/completions", pdStreamBody)
	if resp.StatusCode != 400 || !strings.Contains(string(out), "worker says 400") || d.requests.Load() != 0 {
		t.Fatalf("status %d, decode requests %d: %s", resp.StatusCode, d.requests.Load(), out)
	}
}

func TestPDSGLangSendsBothWorkersTheBootstrapFields(t *testing.T) {
	p, d := newPDWorker(t, "P0"), newPDWorker(t, "D0")
	tr := startRouter(t, pdConfig(configs.PDSGLang, []*pdWorker{p, d}, []string{"prefill", "decode"}))
	resp, out := post(t, tr.url+"/v1/chat/completions", pdStreamBody)
	if resp.StatusCode != 200 || !strings.Contains(string(out), "D0-c3") {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	if resp.Header.Get("x-kvroute-prefill-worker") != "p0" || resp.Header.Get("x-kvroute-worker") != "d0" {
		t.Errorf("headers %v", resp.Header)
	}
	poll.CheckFor(t, 5*time.Second, "prefill half sent and ended", func() bool {
		return p.requests.Load() == 1 && tr.pool.Worker("p0").InFlight() == 0
	})
	pb, db := p.last(), d.last()
	for _, b := range []map[string]any{pb, db} {
		room, ok := b["bootstrap_room"].(float64)
		if b["bootstrap_host"] != "127.0.0.1" || b["bootstrap_port"] != 8998.0 || !ok || room < 0 || b["stream"] != true {
			t.Errorf("body %v", b)
		}
	}
	if fmt.Sprint(pb["bootstrap_room"]) != fmt.Sprint(db["bootstrap_room"]) {
		t.Errorf("rooms differ: %v %v", pb["bootstrap_room"], db["bootstrap_room"])
	}
	poll.CheckFor(t, 5*time.Second, "transfer observed", func() bool {
		mfs, _ := tr.reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "kvroute_pd_prefill_seconds" {
				return mf.GetMetric()[0].GetHistogram().GetSampleCount() == 1
			}
		}
		return false
	})
}

// With only workers of role both (the default), nothing is disaggregated.
func TestPDOffWithoutBothRoles(t *testing.T) {
	a, b := newPDWorker(t, "A"), newPDWorker(t, "B")
	tr := startRouter(t, pdConfig(configs.PDVLLM, []*pdWorker{a, b}, []string{"both", "prefill"}))
	resp, _ := post(t, tr.url+"/v1/chat/completions", pdStreamBody)
	if resp.StatusCode != 200 || resp.Header.Get("x-kvroute-prefill-worker") != "" {
		t.Fatalf("status %d headers %v", resp.StatusCode, resp.Header)
	}
	for _, w := range []*pdWorker{a, b} {
		if last := w.last(); last != nil {
			if _, ok := last["kv_transfer_params"]; ok {
				t.Errorf("body %v", last)
			}
		}
	}
}

// Order of decode picks: the least loaded by KV usage, in-flight requests and queued
// decode tokens.
func TestSelectDecode(t *testing.T) {
	s := &Server{}
	var err error
	if s.pd, err = newPDState(prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	s.pd.queued("busy-tokens").Store(4 * decodeTokensPerUnit)
	for _, tc := range []struct {
		name  string
		cands []scorer.Candidate
		want  string
	}{
		{"in flight", []scorer.Candidate{{ID: "a", InFlight: 3}, {ID: "b", InFlight: 1}}, "b"},
		{"kv usage", []scorer.Candidate{{ID: "a", HasMetrics: true, KVUsage: 0.9}, {ID: "b", HasMetrics: true, KVUsage: 0.2, InFlight: 5}}, "b"},
		{"queued tokens", []scorer.Candidate{{ID: "busy-tokens", InFlight: 1}, {ID: "c", InFlight: 3}}, "c"},
		{"one", []scorer.Candidate{{ID: "a", InFlight: 99}}, "a"},
	} {
		costs := make([]scorer.Cost, len(tc.cands))
		if i := s.selectDecode(tc.cands, costs); tc.cands[i].ID != tc.want {
			t.Errorf("%s: picked %s, want %s (costs %+v)", tc.name, tc.cands[i].ID, tc.want, costs)
		}
	}
	// Ties break at random: both equal candidates get picked.
	seen := map[string]bool{}
	for range 200 {
		cands := []scorer.Candidate{{ID: "x"}, {ID: "y"}}
		seen[cands[s.selectDecode(cands, make([]scorer.Cost, 2))].ID] = true
	}
	if !seen["x"] || !seen["y"] {
		t.Errorf("ties: picked only %v", seen)
	}
}

// An sglang request whose decode phase cannot start (every decode worker full, the
// queue off: 429) never sends its prefill half, and ends its load on the prefill worker.
func TestPDSGLangUnsentPrefillEndsItsLoad(t *testing.T) {
	p, d := newPDWorker(t, "P0"), newPDWorker(t, "D0")
	cfg := pdConfig(configs.PDSGLang, []*pdWorker{p, d}, []string{"prefill", "decode"})
	cfg.CacheAware.MaxInFlight = 1
	cfg.Queue.MaxSize = 0
	tr := startRouter(t, cfg)
	hold := tr.pool.Worker("d0").Begin(0, 0, time.Minute) // d0 is full
	defer hold.End()
	resp, out := post(t, tr.url+"/v1/chat/completions", pdStreamBody)
	if resp.StatusCode != 429 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	if p.requests.Load() != 0 || tr.pool.Worker("p0").InFlight() != 0 {
		t.Errorf("prefill requests %d, in flight %d; want 0, 0", p.requests.Load(), tr.pool.Worker("p0").InFlight())
	}
}
