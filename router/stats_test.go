package router

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/kvroute/kvroute/configs"
)

// Figures land in the windows that cover them, and a second older than the ring is
// forgotten when its bucket is reused.
func TestTrafficWindows(t *testing.T) {
	start := time.Unix(1_000_000, 0)
	ts := newTrafficStats(start)
	now := start.Add(20 * time.Minute)
	for _, c := range []struct {
		ago          time.Duration
		prompt, hit  int
		worker, mdl  string
		status       int
		ttft         time.Duration
		decisionsPer int
	}{
		{30 * time.Second, 100, 80, "a", "m1", 200, 10 * time.Millisecond, 1},
		{200 * time.Second, 100, 40, "b", "m1", 200, 20 * time.Millisecond, 2},
		{600 * time.Second, 200, 0, "a", "m2", 502, 40 * time.Millisecond, 1},
		{1000 * time.Second, 1000, 1000, "a", "m1", 200, time.Second, 1}, // beyond 15 m
	} {
		at := now.Add(-c.ago)
		ts.routed(c.worker, c.mdl, c.prompt, c.hit, at)
		ts.ttft(c.worker, c.mdl, c.ttft, at)
		ts.finished(c.worker, c.mdl, c.status, at)
		for range c.decisionsPer {
			ts.decision(at)
		}
	}
	snap := ts.snapshot(now)
	want := map[string]struct {
		routed, prompt, hit, errors, decisions uint64
	}{
		"1m":  {1, 100, 80, 0, 1},
		"5m":  {2, 200, 120, 0, 3},
		"15m": {3, 400, 120, 1, 4},
	}
	for _, w := range snap.Windows {
		g, exp := w.Global, want[w.Name]
		if g.Routed != exp.routed || g.PromptTokens != exp.prompt || g.PredictedHitTokens != exp.hit || g.Errors != exp.errors ||
			g.Decisions != exp.decisions || g.Finished != exp.routed || g.TTFT.Count != exp.routed {
			t.Errorf("%s: %+v, want %+v", w.Name, g, exp)
		}
		if r := float64(exp.hit) / float64(exp.prompt); g.HitRate == nil || math.Abs(*g.HitRate-r) > 1e-9 {
			t.Errorf("%s: hit rate %v, want %v", w.Name, g.HitRate, r)
		}
		if w.Elapsed != float64(w.Seconds) || math.Abs(g.DecisionsPerSecond-float64(exp.decisions)/float64(w.Seconds)) > 1e-9 {
			t.Errorf("%s: elapsed %v decisions/s %v", w.Name, w.Elapsed, g.DecisionsPerSecond)
		}
	}
	if m := snap.Windows[2].Models["m2"]; m.Routed != 1 || m.Errors != 1 || m.HitRate == nil || *m.HitRate != 0 {
		t.Errorf("15m m2: %+v", m)
	}
	if len(snap.Series) != SeriesSeconds || snap.Series[SeriesSeconds-1].T != now.Unix() || snap.Series[SeriesSeconds-31].Routed != 1 {
		t.Errorf("series: %d points, last at %d, point 30 s ago routed %d", len(snap.Series), snap.Series[SeriesSeconds-1].T, snap.Series[SeriesSeconds-31].Routed)
	}
	wa := ts.worker("a", false, now)
	if wa.Routed != 3 || wa.PromptTokens != 1300 || wa.Errors != 1 || wa.Window5m.Routed != 1 || wa.Series != nil {
		t.Errorf("worker a: %+v", wa)
	}
	if none := ts.worker("zz", true, now); none.Routed != 0 || none.HitRate != nil || len(none.Series) != SeriesSeconds {
		t.Errorf("unknown worker: %+v", none)
	}
	// 900 s after the 30 s-old request its bucket is reused by a new second.
	later := now.Add(870 * time.Second)
	ts.routed("a", "m1", 5, 5, later)
	if g := ts.snapshot(later).Windows[2].Global; g.Routed != 1 || g.PromptTokens != 5 {
		t.Errorf("15m after the ring wrapped: %+v, want only the new request", g)
	}
}

// A window shorter than the uptime divides rates by the uptime.
func TestTrafficElapsed(t *testing.T) {
	start := time.Unix(2_000_000, 0)
	ts := newTrafficStats(start)
	now := start.Add(10 * time.Second)
	for range 20 {
		ts.finished("a", "m", 200, now)
	}
	if g := ts.snapshot(now).Windows[0]; g.Elapsed != 10 || g.Global.RequestsPerSecond != 2 {
		t.Errorf("1m window 10 s after start: elapsed %v, %v req/s; want 10 and 2", g.Elapsed, g.Global.RequestsPerSecond)
	}
}

// Percentiles from the 1.4x histogram are within one bin of the exact value.
func TestTTFTPercentiles(t *testing.T) {
	for _, c := range []struct {
		name    string
		samples []float64 // ms
	}{
		{"uniform 1..1000", seq(1, 1000)},
		{"constant 50", repeat(50, 200)},
		{"sub-millisecond", repeat(0.3, 10)},
		{"bimodal", append(repeat(5, 90), repeat(2000, 10)...)},
	} {
		ts := newTrafficStats(time.Unix(0, 0))
		now := time.Unix(100, 0)
		for _, ms := range c.samples {
			ts.ttft("a", "m", time.Duration(ms*float64(time.Millisecond)), now)
		}
		f := ts.snapshot(now).Windows[0].Global.TTFT
		for _, q := range []struct {
			q   float64
			got *float64
		}{{0.5, f.P50}, {0.9, f.P90}, {0.99, f.P99}} {
			exact := exactQuantile(c.samples, q.q)
			if q.got == nil {
				t.Errorf("%s: p%v nil", c.name, q.q*100)
				continue
			}
			if exact < 1 {
				if *q.got > 1 {
					t.Errorf("%s: p%v = %v ms, want under 1 ms", c.name, q.q*100, *q.got)
				}
				continue
			}
			if r := *q.got / exact; r < 1/1.4 || r > 1.4 {
				t.Errorf("%s: p%v = %.2f ms, exact %.2f ms: off by more than one bin", c.name, q.q*100, *q.got, exact)
			}
		}
	}
	if p := percentile(new([ttftBins]uint64), 0, 0.5); p != nil {
		t.Errorf("percentile of nothing = %v, want nil", *p)
	}
}

func seq(a, b int) []float64 {
	var out []float64
	for i := a; i <= b; i++ {
		out = append(out, float64(i))
	}
	return out
}

func repeat(v float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = v
	}
	return out
}

// exactQuantile is the sample at rank ceil(q*n) of the sorted samples.
func exactQuantile(xs []float64, q float64) float64 {
	s := append([]float64(nil), xs...)
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	k := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(k, 0)]
}

func TestExplain(t *testing.T) {
	inf := math.Inf(1)
	for _, c := range []struct {
		name string
		d    Decision
		want []string
	}{
		{"cheapest", Decision{Chosen: "a", Blocks: 10, Exact: true, Policy: "cache_aware", Candidates: []DecisionCandidate{
			{Worker: "a", OverlapBlocks: 8, PrefillCost: 2, DecodeCost: 10, TotalCost: 12},
			{Worker: "b", OverlapBlocks: 0, PrefillCost: 40, DecodeCost: 5, TotalCost: 45},
			{Worker: "c", TotalCost: inf},
		}}, []string{"a holds 8 of 10 prompt blocks", "cost 12.0 blocks (prefill 2.0, decode 10.0, queue 0.0) vs 45.0 for b", "1 over the load guard"}},
		{"only", Decision{Chosen: "a", Blocks: 4, Candidates: []DecisionCandidate{{Worker: "a", OverlapBlocks: 0}}},
			[]string{"a holds 0 of 4 prompt blocks (approx hashes); the only candidate"}},
		{"no costs", Decision{Chosen: "b", Blocks: 3, Exact: true, Policy: "round_robin", Attempt: 1, Candidates: []DecisionCandidate{{Worker: "a"}, {Worker: "b"}}},
			[]string{"picked by round_robin among 2 candidates; retry 1"}},
		{"sticky", Decision{Chosen: "a", Blocks: 3, Exact: true, Candidates: []DecisionCandidate{{Worker: "a", TotalCost: 9}, {Worker: "b", TotalCost: 4}}},
			[]string{"session stickiness or temperature"}},
		{"unknown chosen", Decision{Chosen: "z", Policy: "random"}, []string{"random chose z"}},
	} {
		got := Explain(&c.d)
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: Explain = %q, want it to contain %q", c.name, got, w)
			}
		}
	}
}

func TestOwnedByAdmin(t *testing.T) {
	cfg := configs.Default()
	cfg.Admin.PathPrefix = "/admin"
	s := &Server{cfg: &cfg}
	for path, want := range map[string]bool{
		"/admin": true, "/admin/": true, "/admin/api/workers": true,
		"/administrator": false, "/adm": false, "/": false, "/v1/admin": false,
	} {
		if got := s.ownedByAdmin([]byte(path)); got != want {
			t.Errorf("ownedByAdmin(%q) = %v, want %v", path, got, want)
		}
	}
	cfg.Admin.PathPrefix = ""
	if s.ownedByAdmin([]byte("/admin")) {
		t.Error("nothing is the admin's without a prefix")
	}
}

// BenchmarkTrafficRecord is what the request path pays for the admin statistics per
// request: one decision, one routed, one TTFT and one finished record, from parallel
// goroutines. Compare two runs with:
//
//	go test -run XXX -bench TrafficRecord -count 10 ./router/ > new.txt && benchstat old.txt new.txt
func BenchmarkTrafficRecord(b *testing.B) {
	ts := newTrafficStats(time.Now())
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		now := time.Now()
		for pb.Next() {
			ts.decision(now)
			ts.routed("worker-1", "model", 1000, 800, now)
			ts.ttft("worker-1", "model", 20*time.Millisecond, now)
			ts.finished("worker-1", "model", 200, now)
		}
	})
}
