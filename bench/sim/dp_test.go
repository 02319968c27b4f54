package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kvroute/kvroute/proto/prototest/poll"
)

func TestDataParallelRanks(t *testing.T) {
	f := startFleet(t, 1, func(c *Config) { c.DataParallelSize = 2; c.Faults.SlowFactor = 10 })
	w := f.Workers()[0]
	ranks := w.Ranks()
	info := w.Info()
	if len(ranks) != 2 || len(info.Ranks) != 2 || info.Ranks[1].Events == info.Ranks[0].Events ||
		info.Events != ranks[0].EventsEndpoint() || info.Ranks[1].Replay != ranks[1].ReplayEndpoint() {
		t.Fatalf("info %+v", info)
	}
	sub0 := subscribeTo(t, ranks[0].EventsEndpoint(), ranks[0].EventsSubscribed)
	sub1 := subscribeTo(t, ranks[1].EventsEndpoint(), ranks[1].EventsSubscribed)

	// The X-data-parallel-rank header pins a rank; its events carry that rank.
	body, _ := json.Marshal(map[string]any{"prompt": words(0, 40), "max_tokens": 1})
	req, _ := http.NewRequest("POST", w.URL()+"/v1/completions", bytes.NewReader(body))
	req.Header.Set("X-data-parallel-rank", "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	b := sub1.next()
	if r, err := toU64(b.Rank); err != nil || r != 1 {
		t.Fatalf("rank 1 batch carries dp rank %v", b.Rank)
	}
	if got := sub0.drain(50 * time.Millisecond); len(got) != 0 {
		t.Fatalf("rank 0 published %+v", got)
	}
	if s0, s1 := ranks[0].Stats(), ranks[1].Stats(); s0.Requests != 0 || s1.Requests != 1 || w.Stats().Requests != 1 {
		t.Fatalf("rank stats %+v / %+v", s0, s1)
	}
	// Each rank has its own cache: the same prompt on rank 0 is a miss.
	c := complete(t, w, map[string]any{"prompt": words(0, 40), "max_tokens": 1})
	if c.Usage.PromptTokensDetails.CachedTokens != 0 || ranks[0].Stats().Requests != 1 {
		t.Fatalf("rank 0 hit another rank's cache: %+v", c.Usage)
	}

	// Without the header the least loaded rank (waiting*4 + running) gets the request.
	done := make(chan struct{})
	go func() {
		defer close(done)
		complete(t, w, map[string]any{"prompt": words(100, 20), "max_tokens": 20, "ignore_eos": true})
	}()
	poll.CheckFor(t, 5*time.Second, "rank 0 busy", func() bool { return ranks[0].Stats().Running == 1 })
	complete(t, w, map[string]any{"prompt": words(200, 20), "max_tokens": 1})
	<-done
	if s0, s1 := ranks[0].Stats(), ranks[1].Stats(); s0.Requests != 2 || s1.Requests != 2 {
		t.Fatalf("least-loaded dispatch: rank 0 %d requests, rank 1 %d", s0.Requests, s1.Requests)
	}

	for _, bad := range []string{"2", "-1", "x"} {
		req, _ := http.NewRequest("POST", w.URL()+"/v1/completions", strings.NewReader(`{"prompt":"hi"}`))
		req.Header.Set("X-data-parallel-rank", bad)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("rank %q: status %d", bad, resp.StatusCode)
		}
	}
	resp, err = http.Get(w.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`vllm:num_requests_running{engine="0",model_name="kvsim"}`, `vllm:num_requests_running{engine="1",model_name="kvsim"}`,
		`vllm:prompt_tokens_total{engine="1",model_name="kvsim"} 60`} {
		if !strings.Contains(string(m), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestDataParallelBasePorts(t *testing.T) {
	fc := DefaultFleetConfig()
	fc.Workers, fc.Worker.DataParallelSize = 2, 2
	// A random base below Linux's ephemeral range (32768-60999), where client
	// connections never take ports; retried if another process holds one.
	var f *Fleet
	var base int
	for attempt := 1; f == nil; attempt++ {
		base = 20000 + rand.IntN(12000)
		fc.BasePort = base
		var err error
		if f, err = StartFleet(t.Context(), fc); err != nil && attempt == 10 {
			t.Fatalf("no free range of 10 ports after 10 attempts: %v", err)
		}
	}
	defer f.Close()
	// 5 ports per worker: HTTP, 2 event ports, 2 replay ports.
	u := func(scheme string, off int) string { return fmt.Sprintf("%s://127.0.0.1:%d", scheme, base+off) }
	want := []Info{
		{ID: "w0", URL: u("http", 0), Events: u("tcp", 1), Replay: u("tcp", 3),
			Ranks: []RankInfo{{0, u("tcp", 1), u("tcp", 3)}, {1, u("tcp", 2), u("tcp", 4)}}},
		{ID: "w1", URL: u("http", 5), Events: u("tcp", 6), Replay: u("tcp", 8),
			Ranks: []RankInfo{{0, u("tcp", 6), u("tcp", 8)}, {1, u("tcp", 7), u("tcp", 9)}}},
	}
	got, _ := json.Marshal(f.Infos())
	exp, _ := json.Marshal(want)
	if string(got) != string(exp) {
		t.Fatalf("infos\n%s\nwant\n%s", got, exp)
	}
}
