package sim

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kvroute/kvroute/proto/prototest/poll"
)

func setFault(t *testing.T, w *Worker, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(w.URL()+"/sim/fault", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

func TestFaultErrorRate(t *testing.T) {
	f := startFleet(t, 1, nil)
	w := f.Workers()[0]
	if code, out := setFault(t, w, `{"error_rate": 1}`); code != 200 {
		t.Fatalf("set fault: %d %s", code, out)
	}
	resp, out := post(t, w.URL()+"/v1/completions", map[string]any{"prompt": "hi"})
	var e struct {
		Error struct {
			Code int `json:"code"`
		} `json:"error"`
	}
	if resp.StatusCode != 500 || json.Unmarshal(out, &e) != nil || e.Error.Code != 500 {
		t.Fatalf("got %d %s", resp.StatusCode, out)
	}
	// Half the requests fail with rate 0.5 (seeded RNG, 200 draws: well inside 60-140).
	if code, out := setFault(t, w, `{"error_rate": 0.5}`); code != 200 {
		t.Fatalf("set fault: %d %s", code, out)
	}
	for range 200 {
		post(t, w.URL()+"/v1/completions", map[string]any{"prompt": "hi", "max_tokens": 1})
	}
	if failed := w.Stats().Failed - 1; failed < 60 || failed > 140 {
		t.Fatalf("%d of 200 failed at rate 0.5", failed)
	}
	// Bad fault bodies are rejected and leave the faults unchanged.
	for _, bad := range []string{`{"error_rate": 2}`, `{"eror_rate": 0.1}`, `{"die_after_chunks": -1}`, `[]`} {
		if code, out := setFault(t, w, bad); code != 400 {
			t.Errorf("%s: %d %s", bad, code, out)
		}
	}
	if w.Faults().ErrorRate != 0.5 {
		t.Fatalf("faults changed: %+v", w.Faults())
	}
	setFault(t, w, `{}`)
	if resp, _ := post(t, w.URL()+"/v1/completions", map[string]any{"prompt": "hi"}); resp.StatusCode != 200 {
		t.Fatalf("after clearing: %d", resp.StatusCode)
	}
}

func TestFaultHang(t *testing.T) {
	f := startFleet(t, 1, func(c *Config) { c.Faults.HangRate = 1 })
	w := f.Workers()[0]
	start := time.Now() // before the context: its deadline is at most start + 150ms
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", w.URL()+"/v1/completions", strings.NewReader(`{"prompt":"hi"}`))
	_, err := http.DefaultClient.Do(req)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) < 150*time.Millisecond {
		t.Fatalf("hung request returned %v after %v", err, time.Since(start))
	}
	if st := w.Stats(); st.Hung != 1 || st.Requests != 0 {
		t.Fatalf("stats %+v", st)
	}
	setFault(t, w, `{}`)
	complete(t, w, map[string]any{"prompt": "hi", "max_tokens": 1})
}

func TestFaultDieMidStream(t *testing.T) {
	f := startFleet(t, 1, func(c *Config) { c.Faults.DieAfterChunks = 2 })
	w := f.Workers()[0]
	body := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":50,"ignore_eos":true,"stream":true}`
	resp, err := http.Post(w.URL()+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("stream ended cleanly: %s", out)
	}
	if n := strings.Count(string(out), "data: "); n != 2 || strings.Contains(string(out), "[DONE]") {
		t.Fatalf("got %d events before the drop: %s", n, out)
	}
	// Non-streamed: the connection closes without a response.
	if _, err := http.Post(w.URL()+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"hi","max_tokens":2}`)); err == nil {
		t.Fatal("non-streamed request got a response")
	}
	poll.CheckFor(t, 5*time.Second, "engine idle", func() bool { st := w.Stats(); return st.Running == 0 && st.UsedBlocks == 0 })
	if st := w.Stats(); st.Died != 2 || st.Aborted != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestFaultSlow(t *testing.T) {
	f := startFleet(t, 1, nil)
	w := f.Workers()[0]
	b0 := w.Stats().BusyTime
	ttft(t, w, words(0, 400)) // prefill 2 ms + 20 ms, one decode step 2.01 ms
	b1 := w.Stats().BusyTime
	setFault(t, w, `{"slow_factor": 5}`)
	slow, _ := ttft(t, w, words(1000, 400)) // the same work, 5x slower
	b2 := w.Stats().BusyTime
	normal, slowed := b1-b0, b2-b1
	if normal != 24010*time.Microsecond || slowed != 5*normal {
		t.Fatalf("modelled busy time %v normal, %v slowed (want 24.01ms and 5x)", normal, slowed)
	}
	// Timers never fire early, so the slowed 110 ms prefill is a floor of the real TTFT.
	if slow < 105*time.Millisecond {
		t.Fatalf("slowed TTFT %v, want >= 105ms", slow)
	}
}

func TestFaultDropAndRestartOverHTTP(t *testing.T) {
	f := startFleet(t, 1, nil)
	w := f.Workers()[0]
	sub := subscribe(t, w)
	if code, out := setFault(t, w, `{"drop_event_batches": 1}`); code != 200 || strings.Contains(out, `"drop_event_batches":1`) {
		t.Fatalf("set fault: %d %s (the drop is an action, not kept as state)", code, out)
	}
	complete(t, w, map[string]any{"prompt": words(0, 20), "max_tokens": 1})
	complete(t, w, map[string]any{"prompt": words(100, 20), "max_tokens": 1})
	if b := sub.next(); b.Seq != 1 {
		t.Fatalf("seq %d, want 1 after one dropped batch", b.Seq)
	}
	resp, err := http.Post(w.URL()+"/sim/restart", "application/json", strings.NewReader(`{"down_ms": 50, "announce_clear": true}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("restart: %v %v", err, resp)
	}
	resp.Body.Close()
	if b := sub.next(); b.Seq != 0 || b.Events[0].Kind != "AllBlocksCleared" {
		t.Fatalf("after restart %+v", b)
	}
	var st Stats
	resp, err = http.Get(w.URL() + "/sim/stats")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil || st.NextSeq != 1 {
		t.Fatalf("stats %+v %v", st, err)
	}
	resp.Body.Close()
}

func TestShutdownReleasesHungRequests(t *testing.T) {
	fc := DefaultFleetConfig()
	fc.Worker.Faults.HangRate = 1
	f, err := StartFleet(context.Background(), fc)
	if err != nil {
		t.Fatal(err)
	}
	w := f.Workers()[0]
	errc := make(chan error, 1)
	go func() {
		_, err := http.Post(w.URL()+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"hi"}`))
		errc <- err
	}()
	poll.CheckFor(t, 5*time.Second, "request hung", func() bool { return w.Stats().Hung == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := f.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("shutdown waited %v for a hung request", d)
	}
	if err := <-errc; err == nil {
		t.Fatal("a hung request got an answer at shutdown")
	}
}

func TestRestartOffline(t *testing.T) {
	f := startFleet(t, 1, nil)
	w := f.Workers()[0]
	complete(t, w, map[string]any{"prompt": "hi", "max_tokens": 1})
	resp, err := http.Post(w.URL()+"/sim/restart", "application/json", strings.NewReader(`{"down_ms": 1000, "offline": true}`))
	if err != nil {
		t.Fatalf("restart request: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("restart: %d", resp.StatusCode)
	}
	// Connections are refused (not answered 503) while offline. The restart answer is
	// sent before the listener closes, so a request right after it may still be served
	// (200) or reset as the listener closes: poll until a connection is refused.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	poll.CheckFor(t, 900*time.Millisecond, "a refused connection", func() bool {
		resp, err := client.Get(w.URL() + "/health")
		if err != nil {
			return strings.Contains(err.Error(), "connection refused")
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("offline worker answered %d, want its connections refused", resp.StatusCode)
		}
		return false
	})
	// ...and the worker comes back on the same port.
	poll.CheckFor(t, 5*time.Second, "worker back online", func() bool {
		resp, err := client.Get(w.URL() + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	complete(t, w, map[string]any{"prompt": "hi", "max_tokens": 1})
}
