package report

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/pprof/profile"
	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/bench/workload"
)

// TestQuickComparison is kvbench's quick mode: a scaled-down multi-turn workload on four
// simulated workers under cache_aware and round_robin. Cache-aware routing must reach a
// higher hit rate and a lower TTFT p50: each turn's history is cached on one worker, and
// round robin sends the next turn elsewhere three times out of four. Modelled time runs
// ten times slower than real (time scale 10: an uncached 1000-token prefill takes about
// 500 ms on the "test" profile, a cached one about 20 ms) so that the gap dwarfs the
// scheduling noise of a loaded CI machine and the race detector's overhead.
func TestQuickComparison(t *testing.T) {
	w, err := workload.MultiTurn(workload.MultiTurnConfig{
		Users: 13, Rounds: 4, Groups: 13, System: 1000, Question: 50, Output: 8,
		Think: 2 * time.Second, Rate: 10, Seed: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	fc := sim.DefaultFleetConfig()
	fc.Workers = 4
	fc.Worker.Model = "m"
	fc.Worker.Profile = "test"
	fc.Worker.KVBlocks = 2048
	fc.Worker.TimeScale = 10
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	res, err := Compare(ctx, w, Config{Fleet: fc, Policies: []string{"round_robin", "cache_aware"}})
	if err != nil {
		t.Fatal(err)
	}
	rr, ca := res[0], res[1]
	for _, r := range res {
		t.Logf("%s: hit %.3f ttft p50 %.1f ms p90 %.1f ms, load %.2f, imbalance %.2f, errors %d",
			r.Policy, r.HitRate, 1000*r.TTFT.P50, 1000*r.TTFT.P90, r.Load, r.Imbalance, r.Errors)
		if r.Errors != 0 {
			t.Errorf("%s: %d errors, first: %s", r.Policy, r.Errors, r.FirstError)
		}
		// Every part did real work during the replay, so each got profile samples; a
		// missing label means a part's goroutines escaped their pprof.Do.
		if sp := r.CPUSplit; sp == nil || sp.Router <= 0 || sp.Fleet <= 0 || sp.Client <= 0 {
			t.Errorf("%s: CPU split %+v: want router, fleet and client each > 0", r.Policy, sp)
		} else if total := sp.Router + sp.Fleet + sp.Client + sp.Other; total > 1.5*r.CPU+0.1 {
			t.Errorf("%s: CPU split sums to %.2fs, process CPU %.2fs", r.Policy, total, r.CPU)
		}
	}
	b := workload.ComputeBounds(w, fc.Worker.BlockSize, fc.Workers*fc.Worker.KVBlocks)
	if ca.HitRate > b.Infinite+1e-9 {
		t.Errorf("cache_aware hit rate %.3f above the infinite bound %.3f", ca.HitRate, b.Infinite)
	}
	if ca.HitRate <= rr.HitRate {
		t.Errorf("cache_aware hit rate %.3f not above round_robin's %.3f", ca.HitRate, rr.HitRate)
	}
	if ca.TTFT.P50 >= rr.TTFT.P50 {
		t.Errorf("cache_aware TTFT p50 %.4fs not below round_robin's %.4fs", ca.TTFT.P50, rr.TTFT.P50)
	}
	// No request gets its first token sooner than alone on an idle worker with every
	// reusable block cached, so no percentile of a run is below the bound's.
	prof, err := sim.LookupProfile(fc.Worker.Profile)
	if err != nil {
		t.Fatal(err)
	}
	tb := IdleTTFT(w, b, prof, fc.Worker.MaxNumBatchedTokens, fc.Worker.TimeScale)
	if tb.Infinite.P50 <= 0 || tb.Infinite.P90 > tb.PooledLRU.P90+1e-12 {
		t.Errorf("idle TTFT bounds %+v: want positive, infinite cache at most pooled LRU", tb)
	}
	for _, r := range res {
		if r.TTFT.P50 < tb.Infinite.P50 || r.TTFT.P90 < tb.Infinite.P90 || r.TTFT.P99 < tb.Infinite.P99 {
			t.Errorf("%s: TTFT %+v below the idle infinite-cache bound %+v", r.Policy, r.TTFT, tb.Infinite)
		}
	}
	dir := t.TempDir()
	s := &Summary{Workload: w.Name, Requests: len(w.Requests), Bounds: b, TTFTBounds: &tb, Results: res}
	if err := WriteDir(dir, s); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"report.md", "report.json", "ttft_cdf.png", "hit_rate.png", "load_cache_aware.png"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s not written: %v", f, err)
		}
	}
	if md, err := os.ReadFile(filepath.Join(dir, "report.md")); err != nil || !strings.Contains(string(md), "alone on an idle worker") {
		t.Errorf("report.md has no TTFT bound line (%v)", err)
	}
}

func TestPercentiles(t *testing.T) {
	v := make([]float64, 100)
	for i := range v {
		v[i] = float64(100 - i)
	}
	p := percentiles(v)
	if p.P50 != 50 || p.P90 != 90 || p.P99 != 99 || p.Mean != 50.5 {
		t.Fatalf("got %+v", p)
	}
	if (percentiles(nil) != Percentiles{}) {
		t.Fatal("empty input must give zeros")
	}
}

// TestPeerPoliciesRoute runs the peers' re-implemented policies through the router on a
// small multi-turn workload: no errors, and each reuses cached history (their prefix
// matching works through the router's index).
func TestPeerPoliciesRoute(t *testing.T) {
	w, err := workload.MultiTurn(workload.MultiTurnConfig{
		Users: 6, Rounds: 3, Groups: 6, System: 400, Question: 20, Output: 4,
		Think: 150 * time.Millisecond, Rate: 30, Seed: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	fc := sim.DefaultFleetConfig()
	fc.Workers = 3
	fc.Worker.Model = "m"
	fc.Worker.KVBlocks = 1024
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := Compare(ctx, w, Config{Fleet: fc, Policies: []string{"sglang", "llmd_approx", "dynamo"}})
	if err != nil {
		t.Fatal(err)
	}
	b := workload.ComputeBounds(w, fc.Worker.BlockSize, 0)
	for _, r := range res {
		t.Logf("%s: hit %.3f (bound %.3f), errors %d", r.Policy, r.HitRate, b.Infinite, r.Errors)
		if r.Errors != 0 {
			t.Errorf("%s: %d errors, first: %s", r.Policy, r.Errors, r.FirstError)
		}
		if r.HitRate < b.Infinite/2 {
			t.Errorf("%s: hit rate %.3f below half the bound %.3f", r.Policy, r.HitRate, b.Infinite)
		}
	}
}

// Three replicas behind a round-robin balancer, sharing state, serve the quick
// workload as one router does: no errors, and a hit rate within 10 points of a single
// router's (each conversation's turns reach different replicas, so its affinity comes
// from the shared decisions and events).
func TestReplicasComparison(t *testing.T) {
	w, err := workload.MultiTurn(workload.MultiTurnConfig{
		Users: 12, Rounds: 3, Groups: 12, System: 600, Question: 50, Output: 8,
		Think: time.Second, Rate: 12, Seed: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	fc := sim.DefaultFleetConfig()
	fc.Workers, fc.Worker.Model, fc.Worker.Profile, fc.Worker.KVBlocks = 4, "m", "test", 2048
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	one, err := Compare(ctx, w, Config{Fleet: fc, Policies: []string{"cache_aware"}})
	if err != nil {
		t.Fatal(err)
	}
	three, err := Compare(ctx, w, Config{Fleet: fc, Policies: []string{"cache_aware"}, Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []Result{one[0], three[0]} {
		t.Logf("replicas %d (sync %v): hit %.3f, imbalance %.2f, errors %d", r.Replicas, r.ReplicaSync, r.HitRate, r.Imbalance, r.Errors)
		if r.Errors != 0 {
			t.Errorf("replicas %d: %d errors, first: %s", r.Replicas, r.Errors, r.FirstError)
		}
	}
	if three[0].Replicas != 3 || !three[0].ReplicaSync {
		t.Errorf("result %+v does not say 3 synced replicas", three[0])
	}
	if three[0].HitRate < one[0].HitRate-0.10 {
		t.Errorf("3 replicas hit %.3f, more than 10 points below one router's %.3f", three[0].HitRate, one[0].HitRate)
	}
}

// The balancer spreads requests evenly over the replicas, whatever host the URL names.
func TestRoundRobinSpreads(t *testing.T) {
	var counts [3]atomic.Int64
	var hosts []string
	for i := range counts {
		srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { counts[i].Add(1) }))
		defer srv.Close()
		hosts = append(hosts, strings.TrimPrefix(srv.URL, "http://"))
	}
	client := &http.Client{Transport: &roundRobin{base: http.DefaultTransport, hosts: hosts}}
	for range 30 {
		resp, err := client.Get("http://" + hosts[0] + "/v1/completions")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	for i := range counts {
		if n := counts[i].Load(); n != 10 {
			t.Errorf("replica %d got %d of 30 requests, want 10", i, n)
		}
	}
}

func TestSplitProfile(t *testing.T) {
	st := []*profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}}
	smp := func(ns int64, part string) *profile.Sample {
		s := &profile.Sample{Value: []int64{1, ns}}
		if part != "" {
			s.Label = map[string][]string{partKey: {part}}
		}
		return s
	}
	p := &profile.Profile{SampleType: st, Sample: []*profile.Sample{
		smp(30e6, partRouter), smp(10e6, partRouter), smp(50e6, partFleet), smp(20e6, partClient),
		smp(5e6, ""), smp(7e6, "unknown"),
	}}
	got, err := splitProfile(p)
	if err != nil {
		t.Fatal(err)
	}
	want := CPUSplit{Router: 0.04, Fleet: 0.05, Client: 0.02, Other: 0.012}
	if math.Abs(got.Router-want.Router)+math.Abs(got.Fleet-want.Fleet)+math.Abs(got.Client-want.Client)+math.Abs(got.Other-want.Other) > 1e-9 {
		t.Errorf("split = %+v, want %+v", got, want)
	}
	if _, err := splitProfile(&profile.Profile{SampleType: st[:1]}); err == nil {
		t.Error("a profile without cpu samples was accepted")
	}
}
