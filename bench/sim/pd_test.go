package sim

import (
	"context"
	"encoding/json"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// startPD starts one worker with the given role on host (127.0.0.1 for prefill,
// 127.0.0.2 standing in for another pod) and closes it at the end of the test.
func startPD(t *testing.T, id, role, host string, mod func(*Config)) *Worker {
	t.Helper()
	c := DefaultConfig()
	c.Role = role
	c.TimeScale = 0.2
	if mod != nil {
		mod(&c)
	}
	w, err := StartWorker(context.Background(), id, c, host, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// decodeHost is the decode workers' address: another loopback address when the host has
// it, as another pod would have.
func decodeHost(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		return "127.0.0.1"
	}
	_ = ln.Close()
	return "127.0.0.2"
}

// prefillBody is what vLLM's example proxy sends the prefill worker
// (tests/v1/kv_connector/nixl_integration/toy_proxy_server.py).
func prefillBody(orig map[string]any) map[string]any {
	b := maps.Clone(orig)
	b["stream"] = false
	b["max_tokens"] = 1
	delete(b, "stream_options")
	b["kv_transfer_params"] = map[string]any{"do_remote_decode": true, "do_remote_prefill": false,
		"remote_engine_id": nil, "remote_block_ids": nil, "remote_host": nil, "remote_port": nil}
	return b
}

type prefillAnswer struct {
	completion
	KV map[string]any `json:"kv_transfer_params"`
}

func postJSON(t *testing.T, url string, body any) (int, []byte) {
	t.Helper()
	resp, out := post(t, url, body)
	return resp.StatusCode, out
}

// waitFor polls cond every 5 ms for up to 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type rawAnswer struct {
	status int
	body   []byte
	err    error
}

// rawPost posts JSON without a *testing.T, for goroutines.
func rawPost(url string, body any) rawAnswer {
	b, _ := json.Marshal(body)
	resp, err := http.Post(url, "application/json", strings.NewReader(string(b)))
	if err != nil {
		return rawAnswer{err: err}
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return rawAnswer{status: resp.StatusCode, body: out, err: err}
}

func errorOf(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Error struct {
			Message string `json:"message"`
			Type    string `json:"type"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Message == "" {
		t.Fatalf("not an OpenAI error: %s", body)
	}
	return e.Error.Message
}

func TestPDVLLMFlow(t *testing.T) {
	p := startPD(t, "p0", RolePrefill, "127.0.0.1", func(c *Config) {
		// A slow link so the transfer's modelled time is visible: 200 tokens * 1 MB
		// at 8 Gbit/s = 200 ms, scaled by 0.2 = 40 ms.
		c.KVBytesPerToken = 1_000_000
		c.PDLinkGbps = 8
	})
	d := startPD(t, "d0", RoleDecode, decodeHost(t), nil)
	if p.BootstrapPort() == 0 || d.BootstrapPort() != 0 || p.Info().Role != "prefill" || d.Info().Role != "decode" {
		t.Fatalf("prefill info %+v, decode info %+v", p.Info(), d.Info())
	}
	orig := map[string]any{"model": "kvsim", "prompt": words(0, 200), "max_tokens": 8, "ignore_eos": true,
		"stream": true, "stream_options": map[string]any{"include_usage": true}}

	st, out := postJSON(t, p.URL()+"/v1/completions", prefillBody(orig))
	if st != 200 {
		t.Fatalf("prefill: %d %s", st, out)
	}
	var pa prefillAnswer
	if err := json.Unmarshal(out, &pa); err != nil {
		t.Fatal(err)
	}
	kv := pa.KV
	if pa.Usage.CompletionTokens != 1 || pa.Choices[0].FinishReason != "length" || kv == nil ||
		kv["do_remote_prefill"] != true || kv["do_remote_decode"] != false || kv["remote_host"] != "127.0.0.1" ||
		kv["remote_port"] != float64(p.BootstrapPort()) || kv["remote_engine_id"] == "" || kv["remote_request_id"] == "" {
		t.Fatalf("prefill answer %s", out)
	}
	groups, _ := kv["remote_block_ids"].([]any)
	if len(groups) != 1 || len(groups[0].([]any)) != 13 { // 200 tokens + 1 output in 16-token blocks
		t.Fatalf("remote_block_ids %v", kv["remote_block_ids"])
	}
	if s := p.PDStats(); s.Held != 1 {
		t.Fatalf("prefill holds %d KVs, want 1", s.Held)
	}
	heldUsage := p.Stats().UsedBlocks
	if heldUsage != 13 {
		t.Fatalf("prefill uses %d blocks while holding, want 13", heldUsage)
	}

	// The decode worker gets the original request with the prefill's params.
	dec := maps.Clone(orig)
	dec["kv_transfer_params"] = kv
	start := time.Now()
	chunks := streamChunks(t, d.URL()+"/v1/completions", dec)
	if el := time.Since(start); el < 40*time.Millisecond {
		t.Fatalf("decode answered in %v, before the modelled 40 ms transfer", el)
	}
	last := chunks[len(chunks)-1]
	if last.Usage == nil || last.Usage.CompletionTokens != 8 || last.Usage.PromptTokens != 200 {
		t.Fatalf("decode usage %+v", last.Usage)
	}
	ps, ds := p.PDStats(), d.PDStats()
	if ps.Sent != 1 || ps.Held != 0 || ds.Received != 1 || ds.Failed != 0 || ds.ReceivedTokens != 200 {
		t.Fatalf("prefill %+v decode %+v", ps, ds)
	}
	waitFor(t, "prefill blocks freed", func() bool { return p.Stats().UsedBlocks == 0 })
	// The decode worker computed one prompt token (the pulled KV covers the rest) and
	// caches the pulled blocks like its own.
	if got := d.Stats().PromptTokens; got != 200 {
		t.Fatalf("decode prompt tokens %d", got)
	}
	if n := len(d.CachedBlockHashes()); n < 12 {
		t.Fatalf("decode caches %d blocks, want the 12 full prompt blocks at least", n)
	}
	// The prefill cache works as before: the same prompt again hits it.
	st, out = postJSON(t, p.URL()+"/v1/completions", prefillBody(orig))
	var again prefillAnswer
	if err := json.Unmarshal(out, &again); st != 200 || err != nil || again.Usage.PromptTokensDetails.CachedTokens != 192 {
		t.Fatalf("second prefill: %d %s", st, out)
	}
	// The decode worker now holds the prompt's 12 full blocks: a second decode of it
	// pulls only the 8 tokens beyond them.
	dec2 := maps.Clone(dec)
	dec2["kv_transfer_params"] = again.KV
	dec2["stream"] = false
	delete(dec2, "stream_options")
	if c := complete(t, d, dec2); c.Usage.CompletionTokens != 8 || d.PDStats().ReceivedTokens != 208 {
		t.Fatalf("second decode: %+v, %+v", c, d.PDStats())
	}
	// The same KV cannot be pulled twice.
	st, out = postJSON(t, d.URL()+"/v1/completions", dec)
	if st != 503 || !strings.Contains(errorOf(t, out), "no KV held") {
		t.Fatalf("second pull of the same KV: %d %s", st, out)
	}
	// Metrics on both sides.
	if m := scrape(t, d.URL()); !strings.Contains(m, `kvsim:pd_transfers_total{result="ok",side="recv"} 2`) {
		t.Fatalf("decode metrics lack the transfer:\n%s", grepLines(m, "pd_"))
	}
}

func scrape(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// prefillKV runs a prefill on p and returns its kv_transfer_params.
func prefillKV(t *testing.T, p *Worker, orig map[string]any) map[string]any {
	t.Helper()
	st, out := postJSON(t, p.URL()+"/v1/completions", prefillBody(orig))
	var pa prefillAnswer
	if err := json.Unmarshal(out, &pa); st != 200 || err != nil || pa.KV == nil {
		t.Fatalf("prefill: %d %s", st, out)
	}
	return pa.KV
}

func TestPDVLLMFailures(t *testing.T) {
	orig := map[string]any{"prompt": words(0, 100), "max_tokens": 4, "stream": true}
	withKV := func(kv map[string]any) map[string]any {
		b := maps.Clone(orig)
		b["kv_transfer_params"] = kv
		return b
	}
	t.Run("dead prefill worker", func(t *testing.T) {
		p := startPD(t, "p0", RolePrefill, "127.0.0.1", nil)
		d := startPD(t, "d0", RoleDecode, decodeHost(t), nil)
		kv := prefillKV(t, p, orig)
		_ = p.Close()
		st, out := postJSON(t, d.URL()+"/v1/completions", withKV(kv))
		if st != 503 || !strings.Contains(errorOf(t, out), "kv transfer from 127.0.0.1:") {
			t.Fatalf("%d %s", st, out)
		}
		if s := d.PDStats(); s.Failed != 1 || s.PullsWaiting != 0 {
			t.Fatalf("%+v", s)
		}
	})
	t.Run("transfer never completes", func(t *testing.T) {
		p := startPD(t, "p0", RolePrefill, "127.0.0.1", nil)
		d := startPD(t, "d0", RoleDecode, decodeHost(t), func(c *Config) { c.PDTransferTimeoutMS = 200 })
		kv := prefillKV(t, p, orig)
		if err := p.SetFaults(Faults{TransferHang: true}); err != nil {
			t.Fatal(err)
		}
		st, out := postJSON(t, d.URL()+"/v1/completions", withKV(kv))
		if st != 503 || !strings.Contains(errorOf(t, out), "no KV within 200ms") {
			t.Fatalf("%d %s", st, out)
		}
	})
	t.Run("hold expired", func(t *testing.T) {
		p := startPD(t, "p0", RolePrefill, "127.0.0.1", func(c *Config) { c.PDKVHoldMS = 20 })
		d := startPD(t, "d0", RoleDecode, decodeHost(t), nil)
		kv := prefillKV(t, p, orig)
		waitFor(t, "the hold to expire", func() bool { s := p.PDStats(); return s.Expired == 1 && s.Held == 0 })
		if u := p.Stats().UsedBlocks; u != 0 {
			t.Fatalf("%d blocks still used after the hold expired", u)
		}
		st, out := postJSON(t, d.URL()+"/v1/completions", withKV(kv))
		if st != 503 || !strings.Contains(errorOf(t, out), "already pulled or expired") {
			t.Fatalf("%d %s", st, out)
		}
	})
	t.Run("injected transfer error", func(t *testing.T) {
		p := startPD(t, "p0", RolePrefill, "127.0.0.1", func(c *Config) { c.Faults.TransferErrorRate = 1 })
		d := startPD(t, "d0", RoleDecode, decodeHost(t), nil)
		kv := prefillKV(t, p, orig)
		st, out := postJSON(t, d.URL()+"/v1/completions", withKV(kv))
		if st != 503 || !strings.Contains(errorOf(t, out), "injected transfer fault") {
			t.Fatalf("%d %s", st, out)
		}
	})
	t.Run("wrong engine and blocks", func(t *testing.T) {
		p := startPD(t, "p0", RolePrefill, "127.0.0.1", nil)
		d := startPD(t, "d0", RoleDecode, decodeHost(t), nil)
		kv := prefillKV(t, p, orig)
		bad := maps.Clone(kv)
		bad["remote_engine_id"] = "nobody"
		st, out := postJSON(t, d.URL()+"/v1/completions", withKV(bad))
		if st != 503 || !strings.Contains(errorOf(t, out), `unknown engine \"nobody\"`) && !strings.Contains(errorOf(t, out), `unknown engine "nobody"`) {
			t.Fatalf("%d %s", st, out)
		}
		bad = maps.Clone(kv)
		bad["remote_block_ids"] = []int{1, 2}
		st, out = postJSON(t, d.URL()+"/v1/completions", withKV(bad))
		if st != 503 || !strings.Contains(errorOf(t, out), "block_ids name 2 blocks") {
			t.Fatalf("%d %s", st, out)
		}
		// A refused pull frees the hold: nothing leaks.
		waitFor(t, "blocks freed", func() bool { return p.PDStats().Held == 0 && p.Stats().UsedBlocks == 0 })
	})
	t.Run("bad params and roles", func(t *testing.T) {
		p := startPD(t, "p0", RolePrefill, "127.0.0.1", nil)
		d := startPD(t, "d0", RoleDecode, decodeHost(t), nil)
		good := map[string]any{"do_remote_prefill": true, "remote_engine_id": "e", "remote_request_id": "r",
			"remote_host": "127.0.0.1", "remote_port": 1, "remote_block_ids": []int{1}}
		with := func(k string, v any) map[string]any {
			m := maps.Clone(good)
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
			return m
		}
		cases := []struct {
			url  string
			body map[string]any
			want string
		}{
			{d.URL(), withKV(with("remote_host", nil)), "remote_host is required"},
			{d.URL(), withKV(with("remote_host", "a/b")), "is not a host name"},
			{d.URL(), withKV(with("remote_port", 70000)), "remote_port must be a port"},
			{d.URL(), withKV(with("remote_engine_id", strings.Repeat("e", 300))), "longer than 256 bytes"},
			{d.URL(), withKV(with("remote_block_ids", "x")), "remote_block_ids: must be a list"},
			{d.URL(), withKV(with("remote_block_ids", []int{-1})), "block id -1 out of range"},
			{d.URL(), withKV(with("do_remote_decode", true)), "must not both be true"},
			{d.URL(), map[string]any{"prompt": "x", "kv_transfer_params": "garbage"}, "kv_transfer_params: json"},
			{d.URL(), prefillBody(orig), "role is decode"},
			{p.URL(), withKV(good), "role is prefill"},
			{p.URL(), map[string]any{"prompt": "x", "stream": true, "kv_transfer_params": map[string]any{"do_remote_decode": true}}, "needs stream false"},
			{p.URL(), map[string]any{"prompt": "x", "kv_transfer_params": good, "bootstrap_room": 1}, "must not be mixed"},
		}
		for _, c := range cases {
			st, out := postJSON(t, c.url+"/v1/completions", c.body)
			if st != 400 || !strings.Contains(errorOf(t, out), c.want) {
				t.Errorf("%v: %d %s, want 400 with %q", c.body["kv_transfer_params"], st, out, c.want)
			}
		}
		// Empty remote_block_ids: nothing to pull, the decode worker prefills itself.
		empty := withKV(with("remote_block_ids", []int{}))
		empty["stream"] = false
		if c := complete(t, d, empty); c.Usage.PromptTokens != 100 || c.Usage.CompletionTokens == 0 {
			t.Fatalf("%+v", c)
		}
		if d.PDStats().Received != 0 {
			t.Fatal("an empty remote_block_ids was pulled")
		}
		// Ordinary requests work on every role (the router's fallback to aggregated
		// serving).
		for _, w := range []*Worker{p, d} {
			if c := complete(t, w, map[string]any{"prompt": words(0, 40), "max_tokens": 3, "ignore_eos": true}); c.Usage.CompletionTokens != 3 {
				t.Fatalf("%s: %+v", w.ID(), c)
			}
		}
	})
}

// sglangBody is what SGLang's PD router sends both workers
// (python/sglang/srt/disaggregation/mini_lb.py).
func sglangBody(p *Worker, room uint64, stream bool) map[string]any {
	return map[string]any{"model": "kvsim", "prompt": words(0, 300), "max_tokens": 6, "ignore_eos": true,
		"stream": stream, "bootstrap_host": "127.0.0.1", "bootstrap_port": p.BootstrapPort(), "bootstrap_room": room}
}

func TestPDSGLangFlow(t *testing.T) {
	p := startPD(t, "p0", RolePrefill, "127.0.0.1", func(c *Config) { c.Engine = "sglang" })
	d := startPD(t, "d0", RoleDecode, decodeHost(t), func(c *Config) { c.Engine = "sglang" })
	if p.Info().BootstrapPort != p.BootstrapPort() || p.BootstrapPort() == 0 {
		t.Fatalf("info %+v", p.Info())
	}
	// Sent to both at once, the decode request first: it waits for the room.
	body := sglangBody(p, 1<<62+5, true)
	decoded := make(chan rawAnswer, 1)
	go func() { decoded <- rawPost(d.URL()+"/v1/completions", body) }()
	waitFor(t, "the decode worker to wait for its KV", func() bool { return d.PDStats().PullsWaiting == 1 })
	if m := scrape(t, d.URL()); !strings.Contains(m, `sglang:num_queue_reqs{model_name="kvsim"} 1`) {
		t.Fatalf("a request waiting for its KV is not queued in the metrics:\n%s", grepLines(m, "queue"))
	}
	resp := streamChunks(t, p.URL()+"/v1/completions", body)
	a := <-decoded
	if a.err != nil || a.status != 200 {
		t.Fatalf("decode: %d %v %s", a.status, a.err, a.body)
	}
	var text string
	for _, e := range sseEvents(t, strings.NewReader(string(a.body))) {
		var c chunk
		if e != "[DONE]" && json.Unmarshal([]byte(e), &c) == nil && len(c.Choices) > 0 && c.Choices[0].Text != nil {
			text += *c.Choices[0].Text
		}
	}
	if n := len(strings.Fields(text)); n != 6 {
		t.Fatalf("decode streamed %d words %q, want 6", n, text)
	}
	if len(resp) != 1 {
		t.Fatalf("prefill streamed %d chunks, want its one token", len(resp))
	}
	if ps, ds := p.PDStats(), d.PDStats(); ps.Sent != 1 || ps.Held != 0 || ds.Received != 1 {
		t.Fatalf("prefill %+v decode %+v", ps, ds)
	}

	// Unary, prefill first this time: the KV waits in the room.
	body = sglangBody(p, 7, false)
	if st, out := postJSON(t, p.URL()+"/v1/completions", body); st != 200 {
		t.Fatalf("prefill: %d %s", st, out)
	}
	if p.PDStats().Held != 1 {
		t.Fatal("prefill holds no KV for the room")
	}
	c := complete(t, d, body)
	if c.Usage.CompletionTokens != 6 {
		t.Fatalf("%+v", c)
	}

	// A null bootstrap_port is the decode worker's own bootstrap_port (SGLang's
	// default-port rule).
	d2 := startPD(t, "d1", RoleDecode, decodeHost(t), func(c *Config) { c.BootstrapPort = p.BootstrapPort() })
	body = sglangBody(p, 8, false)
	body["bootstrap_port"] = nil
	if st, out := postJSON(t, p.URL()+"/v1/completions", body); st != 200 {
		t.Fatalf("prefill: %d %s", st, out)
	}
	if c := complete(t, d2, body); c.Usage.CompletionTokens != 6 || d2.PDStats().Received != 1 {
		t.Fatalf("%+v", c)
	}
}

func TestPDSGLangFailures(t *testing.T) {
	t.Run("prefill never comes", func(t *testing.T) {
		p := startPD(t, "p0", RolePrefill, "127.0.0.1", nil)
		d := startPD(t, "d0", RoleDecode, decodeHost(t), func(c *Config) { c.PDTransferTimeoutMS = 100 })
		st, out := postJSON(t, d.URL()+"/v1/completions", sglangBody(p, 9, true))
		// The prefill side gives up first and says so, unless the host is too loaded
		// for that answer to beat the decode side's own deadline.
		if msg := errorOf(t, out); st != 503 || !strings.Contains(msg, "no prefill finished for bootstrap_room 9") && !strings.Contains(msg, "no KV within 100ms") {
			t.Fatalf("%d %s", st, out)
		}
		waitFor(t, "the room to be forgotten", func() bool {
			p.pd.mu.Lock()
			defer p.pd.mu.Unlock()
			return len(p.pd.rooms) == 0
		})
	})
	t.Run("dead prefill worker", func(t *testing.T) {
		p := startPD(t, "p0", RolePrefill, "127.0.0.1", nil)
		d := startPD(t, "d0", RoleDecode, decodeHost(t), nil)
		body := sglangBody(p, 3, false)
		_ = p.Close()
		st, out := postJSON(t, d.URL()+"/v1/completions", body)
		if st != 503 || !strings.Contains(errorOf(t, out), "kv transfer from") {
			t.Fatalf("%d %s", st, out)
		}
	})
	t.Run("prefill killed while the decode waits", func(t *testing.T) {
		p := startPD(t, "p0", RolePrefill, "127.0.0.1", nil)
		d := startPD(t, "d0", RoleDecode, decodeHost(t), nil)
		done := make(chan rawAnswer, 1)
		go func() { done <- rawPost(d.URL()+"/v1/completions", sglangBody(p, 4, false)) }()
		waitFor(t, "the decode worker to wait", func() bool { return d.PDStats().PullsWaiting == 1 })
		_ = p.Close()
		if a := <-done; a.status != 503 {
			t.Fatalf("%d %v %s", a.status, a.err, a.body)
		}
	})
	t.Run("bad fields", func(t *testing.T) {
		d := startPD(t, "d0", RoleDecode, decodeHost(t), nil)
		for _, c := range []struct {
			body map[string]any
			want string
		}{
			{map[string]any{"prompt": "x", "bootstrap_room": 1}, "must be given together"},
			{map[string]any{"prompt": "x", "bootstrap_host": "h", "bootstrap_port": 1}, "must be given together"},
			{map[string]any{"prompt": "x", "bootstrap_host": []string{"a"}, "bootstrap_port": 1, "bootstrap_room": 1}, "bootstrap_host must be a string"},
			{map[string]any{"prompt": "x", "bootstrap_host": "h", "bootstrap_port": 0, "bootstrap_room": 1}, "bootstrap_port must be a port"},
			{map[string]any{"prompt": "x", "bootstrap_host": "h", "bootstrap_port": 1, "bootstrap_room": -1}, "bootstrap_room must be an integer"},
			{map[string]any{"prompt": "x", "bootstrap_host": "h", "bootstrap_port": 1, "bootstrap_room": uint64(1) << 63}, "bootstrap_room must be an integer"},
		} {
			st, out := postJSON(t, d.URL()+"/v1/completions", c.body)
			if st != 400 || !strings.Contains(errorOf(t, out), c.want) {
				t.Errorf("%v: %d %s", c.body, st, out)
			}
		}
	})
}

// TestPDBothRole: a both worker decodes from a prefill worker's KV, but holds nothing
// for a vLLM prefill request (no side channel), answering it as an ordinary one.
func TestPDBothRole(t *testing.T) {
	p := startPD(t, "p0", RolePrefill, "127.0.0.1", nil)
	b := startPD(t, "b0", RoleBoth, decodeHost(t), nil)
	if b.BootstrapPort() != 0 || b.Info().Role != "" {
		t.Fatalf("both worker info %+v", b.Info())
	}
	orig := map[string]any{"prompt": words(0, 64), "max_tokens": 3, "ignore_eos": true}
	st, out := postJSON(t, b.URL()+"/v1/completions", prefillBody(orig))
	var pa prefillAnswer
	if err := json.Unmarshal(out, &pa); st != 200 || err != nil || pa.KV != nil || pa.Usage.CompletionTokens != 1 {
		t.Fatalf("prefill on a both worker: %d %s", st, out)
	}
	if b.PDStats().Held != 0 {
		t.Fatal("a both worker holds KV")
	}
	dec := maps.Clone(orig)
	dec["kv_transfer_params"] = prefillKV(t, p, orig)
	if c := complete(t, b, dec); c.Usage.CompletionTokens != 3 || b.PDStats().Received != 1 {
		t.Fatalf("decode on a both worker: %+v %+v", c, b.PDStats())
	}
}

// TestPDRestartAndChat: a prefill worker's restart drops its held KV (the decode fails
// cleanly, nothing is freed into the new cache); chat requests carry the params too.
func TestPDRestartAndChat(t *testing.T) {
	p := startPD(t, "p0", RolePrefill, "127.0.0.1", nil)
	d := startPD(t, "d0", RoleDecode, decodeHost(t), nil)
	chat := map[string]any{"messages": []map[string]any{{"role": "user", "content": words(0, 120)}},
		"max_completion_tokens": 5, "ignore_eos": true}
	pb := prefillBody(chat)
	pb["max_completion_tokens"] = 1
	st, out := postJSON(t, p.URL()+"/v1/chat/completions", pb)
	var pa prefillAnswer
	if err := json.Unmarshal(out, &pa); st != 200 || err != nil || pa.KV == nil {
		t.Fatalf("chat prefill: %d %s", st, out)
	}
	dec := maps.Clone(chat)
	dec["kv_transfer_params"] = pa.KV
	if c := complete2(t, d.URL()+"/v1/chat/completions", dec); c.Usage.CompletionTokens != 5 || c.Choices[0].Message.Content == "" {
		t.Fatalf("chat decode: %+v", c)
	}

	kv := prefillKV(t, p, map[string]any{"prompt": words(0, 100)})
	if err := p.Restart(RestartOptions{}); err != nil {
		t.Fatal(err)
	}
	if s := p.PDStats(); s.Held != 0 || p.Stats().UsedBlocks != 0 {
		t.Fatalf("after restart: %+v, %d blocks used", s, p.Stats().UsedBlocks)
	}
	st, out = postJSON(t, d.URL()+"/v1/completions", map[string]any{"prompt": words(0, 100), "kv_transfer_params": kv})
	if st != 503 || !strings.Contains(errorOf(t, out), "already pulled or expired") {
		t.Fatalf("%d %s", st, out)
	}

	// An offline restart (a crashed process) takes the side channel down too, and
	// brings it back on the same port.
	kv = prefillKV(t, p, map[string]any{"prompt": words(0, 100)})
	if err := p.Restart(RestartOptions{Offline: true, Down: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p.BootstrapPort()))); err == nil {
		c.Close()
		t.Fatal("the side channel accepts connections while the worker is offline")
	}
	st, out = postJSON(t, d.URL()+"/v1/completions", map[string]any{"prompt": words(0, 100), "kv_transfer_params": kv})
	if st != 503 {
		t.Fatalf("%d %s", st, out)
	}
	waitFor(t, "the side channel back", func() bool {
		resp, err := http.Get("http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(p.BootstrapPort())) + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func complete2(t *testing.T, url string, body map[string]any) completion {
	t.Helper()
	st, out := postJSON(t, url, body)
	var c completion
	if err := json.Unmarshal(out, &c); st != 200 || err != nil || len(c.Choices) == 0 {
		t.Fatalf("%s: %d %s", url, st, out)
	}
	return c
}

// TestPDDecodeUsageDuringTransfer: while a KV moves, the decode worker's blocks for it
// are taken (kv_cache_usage_perc) and the request counts as waiting.
func TestPDDecodeUsageDuringTransfer(t *testing.T) {
	p := startPD(t, "p0", RolePrefill, "127.0.0.1", func(c *Config) {
		c.PDLinkGbps = 0.001 // 160 tokens * 128 KiB at 1 Mbit/s: minutes, cut short below
		c.TimeScale = 1
	})
	d := startPD(t, "d0", RoleDecode, decodeHost(t), func(c *Config) { c.KVBlocks = 100 })
	orig := map[string]any{"prompt": words(0, 160), "max_tokens": 2}
	dec := maps.Clone(orig)
	dec["kv_transfer_params"] = prefillKV(t, p, orig)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		b, _ := json.Marshal(dec)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, d.URL()+"/v1/completions", strings.NewReader(string(b)))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitFor(t, "the transfer to start", func() bool { return d.PDStats().PullsWaiting == 1 })
	m := scrape(t, d.URL())
	if !strings.Contains(m, `vllm:num_requests_waiting{engine="0",model_name="kvsim"} 1`) ||
		!strings.Contains(m, `vllm:kv_cache_usage_perc{engine="0",model_name="kvsim"} 0.1`) {
		t.Fatalf("metrics during the transfer:\n%s", grepLines(m, "vllm:"))
	}
	cancel() // the client gives up: the reservation is given back
	<-done
	waitFor(t, "the reservation to be freed", func() bool { return d.Stats().UsedBlocks == 0 && d.PDStats().PullsWaiting == 0 })
}

// TestPDFleets starts a prefill and a decode fleet as a router's tests would.
func TestPDFleets(t *testing.T) {
	start := func(role, prefix string) *Fleet {
		fc := DefaultFleetConfig()
		fc.Workers, fc.IDPrefix, fc.Worker.Role = 2, prefix, role
		f, err := StartFleet(context.Background(), fc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = f.Close() })
		return f
	}
	pf, df := start(RolePrefill, "p"), start(RoleDecode, "d")
	infos := append(pf.Infos(), df.Infos()...)
	for i, want := range []string{"p0", "p1", "d0", "d1"} {
		in := infos[i]
		if in.ID != want || (i < 2) != (in.Role == RolePrefill && in.BootstrapPort > 0) || (i >= 2) != (in.Role == RoleDecode && in.BootstrapPort == 0) {
			t.Fatalf("info %d: %+v", i, in)
		}
	}
	orig := map[string]any{"prompt": words(0, 50), "max_tokens": 2, "ignore_eos": true}
	for _, p := range pf.Workers() {
		for _, d := range df.Workers() {
			dec := maps.Clone(orig)
			dec["kv_transfer_params"] = prefillKV(t, p, orig)
			if c := complete(t, d, dec); c.Usage.CompletionTokens != 2 {
				t.Fatalf("%s -> %s: %+v", p.ID(), d.ID(), c)
			}
		}
	}
}

// TestPDEvents: both roles publish KV events. The prefill worker's BlockStored carry the
// prompt it computed; the decode worker's carry the same tokens for the pulled blocks
// (under its own engine hashes).
func TestPDEvents(t *testing.T) {
	p := startPD(t, "p0", RolePrefill, "127.0.0.1", nil)
	d := startPD(t, "d0", RoleDecode, decodeHost(t), func(c *Config) { c.Seed = 2 })
	ps, ds := subscribe(t, p), subscribe(t, d)
	orig := map[string]any{"prompt": words(0, 64), "max_tokens": 2, "ignore_eos": true}
	dec := maps.Clone(orig)
	dec["kv_transfer_params"] = prefillKV(t, p, orig)
	if c := complete(t, d, dec); c.Usage.CompletionTokens != 2 {
		t.Fatalf("%+v", c)
	}
	stored := func(s *eventSub) (tokens []uint32, hashes []uint64) {
		for len(tokens) < 64 {
			for _, e := range s.next().Events {
				if e.Kind == "BlockStored" {
					tokens, hashes = append(tokens, e.Tokens...), append(hashes, e.Hashes...)
				}
			}
		}
		return tokens[:64], hashes[:4]
	}
	pt, ph := stored(ps)
	dt, dh := stored(ds)
	if !slices.Equal(pt, dt) || len(pt) != 64 {
		t.Fatalf("prefill stored %v, decode stored %v", pt, dt)
	}
	if slices.Equal(ph, dh) {
		t.Fatal("the decode worker published the prefill worker's engine hashes")
	}
}

// TestPDFaultEndpoint: the transfer faults are set and read back over POST /sim/fault,
// as chaos runs set them.
func TestPDFaultEndpoint(t *testing.T) {
	p := startPD(t, "p0", RolePrefill, "127.0.0.1", nil)
	st, out := postJSON(t, p.URL()+"/sim/fault", map[string]any{"transfer_hang": true, "transfer_error_rate": 0.25})
	if st != 200 || !p.Faults().TransferHang || p.Faults().TransferErrorRate != 0.25 {
		t.Fatalf("%d %s", st, out)
	}
	if st, out := postJSON(t, p.URL()+"/sim/fault", map[string]any{"transfer_error_rate": 2}); st != 400 {
		t.Fatalf("%d %s", st, out)
	}
}
