package router

import (
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvroute/kvroute/proto/prototest/poll"
)

func TestParseUsage(t *testing.T) {
	for _, tc := range []struct {
		body string
		want ReportedUsage
		ok   bool
	}{
		{`{"id":"x","usage":{"prompt_tokens":100,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":64}}}`, ReportedUsage{100, 64}, true},
		{` {"usage": {"prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 0}, "prompt_tokens": 7}} `, ReportedUsage{7, 0}, true},
		{`{"usage":{"prompt_tokens":100,"prompt_tokens_details":null}}`, ReportedUsage{}, false}, // engine without details
		{`{"usage":{"prompt_tokens":100}}`, ReportedUsage{}, false},
		{`{"usage":null}`, ReportedUsage{}, false},
		{`{"choices":[]}`, ReportedUsage{}, false},
		{`{"usage":{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":11}}}`, ReportedUsage{}, false}, // more cached than prompt
		{`{"usage":{"prompt_tokens":-1,"prompt_tokens_details":{"cached_tokens":0}}}`, ReportedUsage{}, false},
		{`{"usage":{"prompt_tokens":"10","prompt_tokens_details":{"cached_tokens":0}}}`, ReportedUsage{}, false},
		{`{"usage":{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":1e3}}}`, ReportedUsage{}, false},
		{`{"usage":{"prompt_tokens":10,`, ReportedUsage{}, false},
		{`[1,2]`, ReportedUsage{}, false},
		{``, ReportedUsage{}, false},
	} {
		got, ok := parseUsage([]byte(tc.body))
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseUsage(%s) = %+v, %v; want %+v, %v", tc.body, got, ok, tc.want, tc.ok)
		}
	}
}

func TestSSEUsage(t *testing.T) {
	usage := `data: {"id":"c","choices":[],"usage":{"prompt_tokens":50,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":32}}}`
	for _, tc := range []struct {
		chunk string
		ok    bool
	}{
		{usage + "\n\ndata: [DONE]\n\n", true},
		{"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n" + usage + "\r\n\r\n", true},
		{usage, true}, // no line end yet
		{`data: {"choices":[{"delta":{"content":"the word \"usage\" in text"}}]}` + "\n\n", false},
		{`data: {"usage":null}` + "\n\n", false},
		{`: comment "usage"` + "\n\n", false},
		{"data: [DONE]\n\n", false},
		{"event: response.completed\n" + usage + "\n\n", true},
		{usage + "\n\ndata: [DO", true},                                       // [DONE] split across reads
		{usage + "\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"a", true}, // the next event not ended
		// Only the last data event counts: engines send the usage last.
		{usage + "\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"late\"}}]}\n\n", false},
		{"data: {\"choices\":[],\"usage\":null}\n\n" + usage + "\n\n", true},
	} {
		u, ok := sseUsage([]byte(tc.chunk))
		if ok != tc.ok || (ok && u != (ReportedUsage{50, 32})) {
			t.Errorf("sseUsage(%q) = %+v, %v; want ok %v", tc.chunk, u, ok, tc.ok)
		}
	}
}

// FuzzParseUsage checks parseUsage against encoding/json on any bytes: never a panic,
// and a usage it accepts is what encoding/json reads.
func FuzzParseUsage(f *testing.F) {
	f.Add([]byte(`{"usage":{"prompt_tokens":100,"prompt_tokens_details":{"cached_tokens":64}}}`))
	f.Add([]byte(`{"usage":{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":0}},"usage":null}`))
	f.Add([]byte(`{"usage":{"prompt_tokens_details":{"cached_tokens":3},"prompt_tokens":4}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		u, ok := parseUsage(b)
		_, _ = sseUsage(b)
		if !ok {
			return
		}
		if u.CachedTokens > u.PromptTokens || u.CachedTokens < 0 {
			t.Fatalf("accepted %+v", u)
		}
		var ref struct {
			Usage struct {
				PromptTokens int `json:"prompt_tokens"`
				Details      struct {
					Cached int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			} `json:"usage"`
		}
		// Only valid JSON is compared: the scanner checks structure, not every byte.
		if json.Valid(b) && json.Unmarshal(b, &ref) == nil && !strings.Contains(string(b), `\u`) &&
			(ref.Usage.PromptTokens != u.PromptTokens || ref.Usage.Details.Cached != u.CachedTokens) {
			// Duplicate keys: encoding/json keeps the last, the scanner the first usage.
			if strings.Count(string(b), "usage") < 2 && strings.Count(string(b), "tokens") <= 2 {
				t.Fatalf("parseUsage(%s) = %+v, encoding/json %+v", b, u, ref.Usage)
			}
		}
	})
}

// The drift detector fires both ways within its window and clears when the figures
// agree again.
func TestDriftDetector(t *testing.T) {
	reg := prometheus.NewRegistry()
	tr, err := newTruth(reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	gauge := func(w string) float64 { return testutil.ToFloat64(tr.drift.WithLabelValues(w, "m")) }
	t0 := time.Unix(1_000_000, 0)
	for i := range 10 { // agreeing: no drift
		tr.observe("a", "m", 512, ReportedUsage{600, 500}, true, t0.Add(time.Duration(i)*time.Second))
	}
	if gauge("a") != 0 {
		t.Fatal("drift while predicted and reported agree")
	}
	for i := range 5 { // over-prediction
		tr.observe("b", "m", 512, ReportedUsage{600, 16}, true, t0.Add(time.Duration(i)*time.Second))
	}
	if gauge("b") != 1 || !tr.drifting("b") {
		t.Fatal("over-prediction not detected")
	}
	for i := range 5 { // under-prediction
		tr.observe("c", "m", 0, ReportedUsage{600, 512}, true, t0.Add(time.Duration(i)*time.Second))
	}
	if gauge("c") != 1 {
		t.Fatal("under-prediction not detected")
	}
	// 30 s later the old seconds have left the window; agreeing figures clear it.
	for i := range 5 {
		tr.observe("c", "m", 500, ReportedUsage{600, 512}, true, t0.Add(time.Duration(40+i)*time.Second))
	}
	if gauge("c") != 0 {
		t.Fatal("drift not cleared once the figures agree")
	}
	tr.observe("d", "m", 512, ReportedUsage{}, false, t0) // unreported: counted apart
	if testutil.ToFloat64(tr.unreported.WithLabelValues("d", "m")) != 1 || tr.drifting("d") {
		t.Fatal("an unreported answer was not counted apart")
	}
	tr.forget("b")
	if tr.drifting("b") || testutil.CollectAndCount(tr.drift) != 2 {
		t.Fatalf("forget left b's series: %d", testutil.CollectAndCount(tr.drift))
	}
}

// A worker's usage is read from non-streamed answers and from streams, and a usage that
// is missing or malformed counts the answer as unreported: in every case the client
// gets the worker's bytes unchanged.
func TestReportedUsageThroughTheRouter(t *testing.T) {
	fw := newFakeWorker(t, "m")
	r := startRouter(t, testConfig(fw))
	reported := func() float64 {
		return testutil.ToFloat64(r.srv.truth.reported.WithLabelValues("w0", "m"))
	}
	unreported := func() float64 {
		return testutil.ToFloat64(r.srv.truth.unreported.WithLabelValues("w0", "m"))
	}
	for i, tc := range []struct {
		usage      string // "" = none
		body       string
		wantCached float64 // reported_cached_tokens_total after this case
		wantUnrep  float64
	}{
		{"", chatBody, 0, 1},
		{`{"prompt_tokens":40,"prompt_tokens_details":{"cached_tokens":32}}`, chatBody, 32, 1},
		{`{"prompt_tokens":40,"prompt_tokens_details":{"cached_tokens":16}}`, streamBody, 48, 1},
		{`{"prompt_tokens":"forty","prompt_tokens_details":{"cached_tokens":16}}`, chatBody, 48, 2},
		{`{"prompt_tokens":40,"prompt_tokens_details":{"cached_tokens":99}}`, streamBody, 48, 3},
		{`[1,2,`, chatBody, 48, 4},
	} {
		if tc.usage == "" {
			fw.usage.Store(nil)
		} else {
			u := tc.usage
			fw.usage.Store(&u)
		}
		resp, body := post(t, r.url+"/v1/chat/completions", tc.body)
		if resp.StatusCode != 200 || (tc.usage != "" && !strings.Contains(string(body), tc.usage)) {
			t.Fatalf("case %d: %d %s", i, resp.StatusCode, body)
		}
		poll.CheckFor(t, 5*time.Second, "the answer to be settled", func() bool {
			return reported() == tc.wantCached && unreported() == tc.wantUnrep
		})
	}
	d := r.srv.Decisions(10)
	if len(d) < 3 || d[len(d)-2].Reported == nil || d[len(d)-2].Reported.CachedTokens != 32 {
		t.Errorf("the decision of the second request does not show its reported usage: %+v", d)
	}
}

// BenchmarkParseUsage measures reading the usage of a non-streamed answer of about 2 KB,
// what the router pays per answer for the truth metrics. Compare two runs with
// `go run golang.org/x/perf/cmd/benchstat@latest old.txt new.txt`.
func BenchmarkParseUsage(b *testing.B) {
	body := []byte(`{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"` +
		strings.Repeat("lorem ipsum dolor sit amet, ", 70) + `"},"finish_reason":"stop"}],` +
		`"usage":{"prompt_tokens":1800,"completion_tokens":400,"total_tokens":2200,"prompt_tokens_details":{"cached_tokens":1600}}}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, ok := parseUsage(body); !ok {
			b.Fatal("no usage")
		}
	}
}
