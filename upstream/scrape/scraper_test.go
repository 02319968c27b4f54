package scrape

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// result is one callback invocation.
type result struct {
	target string
	sample Sample
	at     time.Time
	err    error
}

// recorder collects callback results.
type recorder struct {
	mu  sync.Mutex
	res []result
}

func (r *recorder) cb(target string, s Sample, at time.Time, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res = append(r.res, result{target, s, at, err})
}

func (r *recorder) of(target string) []result {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []result
	for _, x := range r.res {
		if x.target == target {
			out = append(out, x)
		}
	}
	return out
}

// targetSet is a changing target list.
type targetSet struct {
	mu sync.Mutex
	ts []Target
}

func (s *targetSet) set(ts ...Target) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ts = ts
}

func (s *targetSet) get() []Target {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Target(nil), s.ts...)
}

// serveBody starts a loopback server answering every path with body and counting hits.
func serveBody(t *testing.T, body []byte) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

// runScraper runs s until the test ends and checks that Run returns.
func runScraper(t *testing.T, s *Scraper) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
	return cancel
}

func TestScraperReportsEachTarget(t *testing.T) {
	vllm, _ := serveBody(t, readTestdata(t, "vllm.txt"))
	sglang, _ := serveBody(t, readTestdata(t, "sglang.txt"))
	var rec recorder
	var ts targetSet
	ts.set(Target{"w0", vllm.URL}, Target{"w1", sglang.URL})
	reg := prometheus.NewPedanticRegistry()
	s, err := New(Config{Interval: 10 * time.Millisecond}, ts.get, rec.cb, reg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	runScraper(t, s)
	poll.CheckFor(t, 10*time.Second, "two results per target", func() bool {
		return len(rec.of("w0")) >= 2 && len(rec.of("w1")) >= 2
	})
	for id, want := range map[string]Sample{
		"w0": {Engine: "vllm", BlockSize: 16, NumBlocks: 53192, Running: 7, KVUsage: 0.5125,
			PrefixQueries: 998877, PrefixHits: 554433},
		"w1": {Engine: "sglang", BlockSize: 1, NumBlocks: 450000, Running: 12, Waiting: 3,
			KVUsage: 0.28, PrefixQueries: 8128902, PrefixHits: 61234},
	} {
		for _, r := range rec.of(id) {
			if r.err != nil {
				t.Fatalf("%s: %v", id, r.err)
			}
			if r.sample != want {
				t.Errorf("%s: got %+v, want %+v", id, r.sample, want)
			}
			if r.at.Before(start) || r.at.After(time.Now()) {
				t.Errorf("%s: at %v outside the test", id, r.at)
			}
		}
	}
	if n := testutil.CollectAndCount(reg, "kvroute_scrape_duration_seconds"); n != 1 {
		t.Errorf("duration histogram series = %d, want 1", n)
	}
	if n := testutil.CollectAndCount(reg, "kvroute_scrape_errors_total"); n != 0 {
		t.Errorf("error series = %d, want none", n)
	}
}

// TestScraperTargetsChange removes a target and adds another while running.
func TestScraperTargetsChange(t *testing.T) {
	a, aHits := serveBody(t, readTestdata(t, "vllm.txt"))
	b, _ := serveBody(t, readTestdata(t, "vllm_v0.txt"))
	var rec recorder
	var ts targetSet
	ts.set(Target{"a", a.URL})
	s, err := New(Config{Interval: 5 * time.Millisecond}, ts.get, rec.cb, nil)
	if err != nil {
		t.Fatal(err)
	}
	runScraper(t, s)
	poll.CheckFor(t, 10*time.Second, "a scraped", func() bool { return len(rec.of("a")) >= 1 })
	ts.set(Target{"b", b.URL})
	hitsAtSwitch := aHits.Load()
	poll.CheckFor(t, 10*time.Second, "b scraped 5 times", func() bool { return len(rec.of("b")) >= 5 })
	// One scrape of a may have been in flight when it was removed.
	if h := aHits.Load(); h > hitsAtSwitch+1 {
		t.Errorf("removed target scraped %d more times", h-hitsAtSwitch)
	}
	for _, r := range rec.of("b") {
		if r.err != nil || r.sample.BlockSize != 32 {
			t.Fatalf("b: %+v %v", r.sample, r.err)
		}
	}
}

// TestScraperOneInFlightPerTarget holds a scrape open across many rounds.
func TestScraperOneInFlightPerTarget(t *testing.T) {
	body := readTestdata(t, "vllm.txt")
	release := make(chan struct{})
	var cur, peak, total atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		total.Add(1)
		n := cur.Add(1)
		defer cur.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	fast, _ := serveBody(t, body)

	var rec recorder
	reg := prometheus.NewPedanticRegistry()
	s, err := New(Config{Interval: 2 * time.Millisecond, Timeout: time.Minute},
		func() []Target { return []Target{{"slow", srv.URL}, {"fast", fast.URL}} }, rec.cb, reg)
	if err != nil {
		t.Fatal(err)
	}
	runScraper(t, s)
	skipped := s.skipped.WithLabelValues("slow")
	poll.CheckFor(t, 10*time.Second, "10 skipped rounds", func() bool { return testutil.ToFloat64(skipped) >= 10 })
	if total.Load() != 1 || peak.Load() != 1 {
		t.Fatalf("requests to the held target: %d, peak concurrency %d; want 1 and 1", total.Load(), peak.Load())
	}
	if len(rec.of("slow")) != 0 {
		t.Fatal("a result was reported before the scrape ended")
	}
	// The fast target keeps being scraped while the slow one is held (polled: on a loaded
	// machine ten skipped 2 ms rounds can pass before two loopback scrapes complete).
	poll.CheckFor(t, 10*time.Second, "two results of the other target while one is held", func() bool {
		return len(rec.of("fast")) >= 2
	})
	close(release)
	poll.CheckFor(t, 10*time.Second, "the held scrape reported and the next ones", func() bool {
		return len(rec.of("slow")) >= 3
	})
	if peak.Load() != 1 {
		t.Errorf("peak concurrency %d", peak.Load())
	}
	if r := rec.of("slow")[0]; r.err != nil || r.sample.BlockSize != 16 {
		t.Errorf("held scrape: %+v %v", r.sample, r.err)
	}
}

func TestScraperTimeout(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // never answers
	}))
	t.Cleanup(srv.Close)
	var rec recorder
	reg := prometheus.NewPedanticRegistry()
	s, err := New(Config{Interval: time.Hour, Timeout: 50 * time.Millisecond},
		func() []Target { return []Target{{"w0", srv.URL}} }, rec.cb, reg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	runScraper(t, s)
	poll.CheckFor(t, 10*time.Second, "the timeout", func() bool { return len(rec.of("w0")) == 1 })
	r := rec.of("w0")[0]
	if !errors.Is(r.err, context.DeadlineExceeded) {
		t.Errorf("error %v, want a deadline exceeded", r.err)
	}
	if d := r.at.Sub(start); d < 50*time.Millisecond || d > 5*time.Second {
		t.Errorf("timed out after %v, want about 50ms", d)
	}
	if n := testutil.ToFloat64(s.errs.WithLabelValues("w0")); n != 1 {
		t.Errorf("errors_total{worker=w0} = %v, want 1", n)
	}
}

func TestScrapeErrors(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	handler := func(status int, body string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(status)
			_, _ = w.Write([]byte(body))
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	tests := []struct {
		name, url, want string
	}{
		{"status", handler(http.StatusServiceUnavailable, "vllm:num_requests_running 1\n"), "status 503"},
		{"garbage", handler(http.StatusOK, "<html>hello</html>\n"), "parse: line 1: invalid metric name"},
		{"empty", handler(http.StatusOK, ""), "no samples"},
		{"too large", handler(http.StatusOK, strings.Repeat("x 1\n", 1000)), "body exceeds 1000 bytes"},
		{"refused", closed.URL, "connect"},
		{"redirect", handler(http.StatusFound, ""), "status 302"},
	}
	reg := prometheus.NewPedanticRegistry()
	s, err := New(Config{MaxBodyBytes: 1000}, func() []Target { return nil }, func(string, Sample, time.Time, error) {}, reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Scrape(context.Background(), Target{tt.name, tt.url})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Scrape = %+v, %v; want an error containing %q", got, err, tt.want)
			}
			if got != (Sample{}) {
				t.Errorf("failed scrape returned %+v", got)
			}
			if n := testutil.ToFloat64(s.errs.WithLabelValues(tt.name)); n != 1 {
				t.Errorf("errors_total = %v, want 1", n)
			}
		})
	}
	// Exactly at the limit is fine.
	ok := handler(http.StatusOK, strings.Repeat("x 1\n", 250))
	if _, err := s.Scrape(context.Background(), Target{"ok", ok}); err != nil {
		t.Errorf("body of exactly MaxBodyBytes: %v", err)
	}
}

// TestScraperStopsWithContext ends Run while a scrape hangs with a long timeout.
func TestScraperStopsWithContext(t *testing.T) {
	entered := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	var calls atomic.Int64
	reg := prometheus.NewPedanticRegistry()
	s, err := New(Config{Interval: time.Hour, Timeout: time.Hour},
		func() []Target { return []Target{{"w0", srv.URL}} },
		func(string, Sample, time.Time, error) { calls.Add(1) }, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no scrape started")
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if calls.Load() != 0 {
		t.Errorf("the cancelled scrape was reported %d times", calls.Load())
	}
	if n := testutil.CollectAndCount(reg, "kvroute_scrape_errors_total"); n != 0 {
		t.Errorf("the cancelled scrape counted as an error")
	}
}

func TestNewConfig(t *testing.T) {
	nop := func(string, Sample, time.Time, error) {}
	none := func() []Target { return nil }
	s, err := New(Config{}, none, nop, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Interval: time.Second, Timeout: time.Second, Path: "/metrics", MaxBodyBytes: 16 << 20}
	if s.cfg != want {
		t.Errorf("defaults %+v, want %+v", s.cfg, want)
	}
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{Interval: -time.Second}, "interval must not be negative, got -1s"},
		{Config{Timeout: -1}, "timeout must not be negative, got -1ns"},
		{Config{MaxBodyBytes: -1}, "max body bytes must not be negative, got -1"},
		{Config{Path: "metrics"}, `path must start with '/', got "metrics"`},
	} {
		if _, err := New(tt.cfg, none, nop, nil); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) error %v, want %q", tt.cfg, err, tt.want)
		}
	}
	if _, err := New(Config{}, nil, nop, nil); err == nil {
		t.Error("nil targets accepted")
	}
	reg := prometheus.NewPedanticRegistry()
	if _, err := New(Config{}, none, nop, reg); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{}, none, nop, reg); err == nil || !strings.Contains(err.Error(), "register scrape metrics") {
		t.Errorf("second registration: %v", err)
	}
}

// BenchmarkScrape scrapes a loopback server serving a vLLM body with two DP engines
// (77 KB): request, body and parse. Compare runs with:
//
//	go test -run '^$' -bench 'Scrape' -count 10 ./upstream/scrape > new.txt && benchstat old.txt new.txt
func BenchmarkScrape(b *testing.B) {
	body := readTestdata(b, "vllm_dp2.txt")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	s, err := New(Config{}, func() []Target { return nil }, func(string, Sample, time.Time, error) {}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Scrape(context.Background(), Target{"w0", srv.URL}); err != nil {
			b.Fatal(err)
		}
	}
}
