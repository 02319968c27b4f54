package indexer

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvroute/kvroute/proto"
)

// TestConcurrentIngestAndMatch runs one event stream per worker in its own goroutine
// (stores, removes, clears, predictions) while other goroutines Match, read Stats and
// scrape metrics; under -race this checks the locking. Workers' streams do not interact,
// so the final index must equal the reference model fed the same streams one after the
// other.
func TestConcurrentIngestAndMatch(t *testing.T) {
	reg := prometheus.NewRegistry()
	ix, clk := newIndex(t, Options{Registerer: reg, SampleEvery: 3})
	m := &refModel{workers: map[proto.WorkerKey]*refWorker{}, weights: [NumTiers]float64{TierGPU: 1}, predW: 1, now: clk.Now()}
	prefix := doc(1, 3)
	docs := [][]uint32{cat(prefix, doc(2, 40)), cat(prefix, doc(3, 40)), doc(4, 43)}
	var reqs [][]proto.BlockHash
	for _, d := range docs {
		reqs = append(reqs, chain("", d))
	}
	type op struct {
		b    *proto.Batch
		pred []proto.BlockHash
		clr  bool
	}
	keys := []proto.WorkerKey{{ID: "w0"}, {ID: "w1"}, {ID: "w2"}, {ID: "w2", DPRank: 1}, {ID: "w3"}, {ID: "w4"}}
	streams := make([][]op, len(keys))
	for i := range keys {
		rng := rand.New(rand.NewPCG(uint64(i), 9))
		for range 300 {
			d := docs[rng.IntN(len(docs))]
			from := rng.IntN(43)
			to := from + 1 + rng.IntN(min(43-from, 16))
			switch r := rng.IntN(20); {
			case r < 11:
				streams[i] = append(streams[i], op{b: batch(stored(uint64(i), d, from, to, "GPU", ""))})
			case r < 17:
				streams[i] = append(streams[i], op{b: batch(removed(uint64(i), d, from, to, "GPU"))})
			case r < 19:
				streams[i] = append(streams[i], op{pred: chain("", d)[:to]})
			default:
				streams[i] = append(streams[i], op{clr: true})
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var readers sync.WaitGroup
	var matches atomic.Int64
	for r := range 3 {
		readers.Go(func() {
			var buf []WorkerMatch
			for i := r; ctx.Err() == nil; i++ {
				buf = ix.Match(reqs[i%len(reqs)], buf)
				for _, wm := range buf {
					if wm.Blocks < wm.Confirmed || wm.Blocks > len(reqs[i%len(reqs)]) {
						t.Errorf("inconsistent match %+v", wm)
					}
				}
				matches.Add(1)
			}
		})
	}
	readers.Go(func() {
		for ctx.Err() == nil {
			_ = ix.Stats()
			if _, err := reg.Gather(); err != nil {
				t.Errorf("gather: %v", err)
			}
			time.Sleep(time.Millisecond) // pacing a scraper, not synchronization
		}
	})
	readers.Go(func() { ix.Run(ctx, time.Millisecond) })
	var writers sync.WaitGroup
	for i, k := range keys {
		writers.Go(func() {
			for _, o := range streams[i] {
				switch {
				case o.clr:
					ix.ClearWorker(k)
				case o.pred != nil:
					ix.Predict(k, o.pred, time.Hour)
				default:
					ix.Apply(k, "m", o.b)
				}
			}
		})
	}
	writers.Wait()
	// Let the readers overlap a little with the final state too.
	for start := matches.Load(); matches.Load() < start+100; {
		time.Sleep(time.Millisecond)
	}
	cancel()
	readers.Wait()
	for i, k := range keys {
		for _, o := range streams[i] {
			switch {
			case o.clr:
				if m.workers[k] != nil {
					m.workers[k] = nil
					m.w(k)
				}
			case o.pred != nil:
				m.predict(k, o.pred, time.Hour)
			default:
				m.apply(k, "m", o.b)
			}
		}
	}
	for ri, req := range reqs {
		want := m.match(req)
		got := ix.Match(req, nil)
		if len(got) != len(want) {
			t.Fatalf("request %d: Match = %+v, model %+v", ri, got, want)
		}
		for _, g := range got {
			if w := want[g.Worker]; g.Blocks != w.Blocks || g.Confirmed != w.Confirmed {
				t.Errorf("request %d worker %v: got %d/%d, model %d/%d", ri, g.Worker, g.Blocks, g.Confirmed, w.Blocks, w.Confirmed)
			}
		}
	}
	checkInvariants(t, ix)
	if n := testutil.CollectAndCount(reg, "kvroute_indexer_match_duration_seconds"); n != 1 {
		t.Errorf("match histogram: %d series", n)
	}
}

func TestMetricsExposeState(t *testing.T) {
	reg := prometheus.NewRegistry()
	ix, _ := newIndex(t, Options{Registerer: reg})
	qa := doc(1, 5)
	ix.Apply(wA, "m", batch(stored(1, qa, 0, 5, "GPU", ""), stored(1, qa, 0, 2, "CPU", ""), removed(1, doc(7, 10), 9, 10, "GPU")))
	ix.Apply(wA1, "m", batch(stored(2, qa, 0, 3, "GPU", "")))
	checks := map[string]float64{
		`kvroute_indexer_worker_blocks{dp_rank="0",tier="gpu",worker="a"}`:   5,
		`kvroute_indexer_worker_blocks{dp_rank="0",tier="cpu",worker="a"}`:   2,
		`kvroute_indexer_worker_blocks{dp_rank="1",tier="gpu",worker="a"}`:   3,
		`kvroute_indexer_events_total{kind="BlockStored"}`:                   3,
		`kvroute_indexer_dropped_blocks_total{reason="unknown_block"}`:       1,
		`kvroute_indexer_block_ops_total{op="store"}`:                        10,
		`kvroute_indexer_blocks`:                                             5,
		`kvroute_indexer_apply_duration_seconds_count`:                       2,
		`kvroute_indexer_evictions_total{reason="capacity"}`:                 0,
		`kvroute_indexer_dropped_blocks_total{reason="block_size_mismatch"}`: 0,
		`kvroute_indexer_worker_engine_entries{dp_rank="1",worker="a"}`:      3,
		`kvroute_indexer_worker_predicted_blocks{dp_rank="0",worker="a"}`:    0,
		`kvroute_indexer_predicted_inserted_total`:                           0,
		`kvroute_indexer_worker_clears_total`:                                0,
		`kvroute_indexer_holder_sets`:                                        3,
		`kvroute_indexer_runs`:                                               3, // blocks 0-1, 2, 3-4
		`kvroute_indexer_dropped_blocks_total{reason="unknown_parent"}`:      0,
		`kvroute_indexer_events_total{kind="BlockRemoved"}`:                  1,
		`kvroute_indexer_predicted_expired_total`:                            0,
		`kvroute_indexer_evictions_total{reason="worker_capacity"}`:          0,
		`kvroute_indexer_evictions_total{reason="predicted_capacity"}`:       0,
		`kvroute_indexer_block_ops_total{op="remove"}`:                       0,
		`kvroute_indexer_worker_blocks{dp_rank="0",tier="disk",worker="a"}`:  0,
		`kvroute_indexer_dropped_blocks_total{reason="missing_tokens"}`:      0,
		`kvroute_indexer_dropped_blocks_total{reason="bad_token_count"}`:     0,
		`kvroute_indexer_dropped_blocks_total{reason="unknown_kind"}`:        0,
		`kvroute_indexer_events_total{kind="AllBlocksCleared"}`:              0,
		`kvroute_indexer_worker_blocks{dp_rank="0",tier="other",worker="a"}`: 0,
		`kvroute_indexer_worker_predicted_blocks{dp_rank="1",worker="a"}`:    0,
		`kvroute_indexer_worker_engine_entries{dp_rank="0",worker="a"}`:      5,
		`kvroute_indexer_events_total{kind="unknown"}`:                       0,
		`kvroute_indexer_worker_blocks{dp_rank="1",tier="cpu",worker="a"}`:   0,
		`kvroute_indexer_worker_blocks{dp_rank="1",tier="disk",worker="a"}`:  0,
		`kvroute_indexer_worker_blocks{dp_rank="1",tier="other",worker="a"}`: 0,
		`kvroute_indexer_match_duration_seconds_count`:                       0,
	}
	got := gatherValues(t, reg)
	for k, v := range checks {
		if gv, ok := got[k]; !ok || gv != v {
			t.Errorf("%s = %v (present %v), want %v", k, gv, ok, v)
		}
	}
	if got["kvroute_indexer_memory_bytes"] <= 0 {
		t.Error("memory gauge not positive")
	}
	if _, err := New(Options{Registerer: reg}); err == nil {
		t.Error("registering a second index on the same registry must fail")
	}
}

// gatherValues flattens a registry into "name{labels}" -> value (histograms: _count).
func gatherValues(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			name := mf.GetName()
			if len(mt.GetLabel()) > 0 {
				name += "{"
				for i, l := range mt.GetLabel() {
					if i > 0 {
						name += ","
					}
					name += l.GetName() + `="` + l.GetValue() + `"`
				}
				name += "}"
			}
			switch {
			case mt.Counter != nil:
				out[name] = mt.GetCounter().GetValue()
			case mt.Gauge != nil:
				out[name] = mt.GetGauge().GetValue()
			case mt.Histogram != nil:
				out[name+"_count"] = float64(mt.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// TestRemoveWorkerDuringPredict removes and re-adds a worker while the router keeps
// predicting for it and another worker's events flow: no flag of a freed worker id may
// survive (checkInvariants), whatever the interleaving.
func TestRemoveWorkerDuringPredict(t *testing.T) {
	ix, _ := newIndex(t, Options{})
	long := doc(1, 700) // > chunkOps blocks: Predict and Apply yield the lock mid-way
	req := chain("", long)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				ix.Predict(wA, req, time.Minute)
			}
		}
	})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				ix.Apply(wB, "m", batch(stored(2, long, 0, 700, "GPU", "")))
				ix.Apply(wB, "m", batch(removed(2, long, 0, 700, "GPU")))
			}
		}
	})
	for range 20 {
		ix.Apply(wA, "m", batch(stored(1, long, 0, 700, "GPU", "")))
		ix.RemoveWorker(wA)
	}
	close(stop)
	wg.Wait()
	checkInvariants(t, ix)
	ix.RemoveWorker(wA)
	ix.RemoveWorker(wB)
	if s := ix.Stats(); s.Blocks != 0 || len(s.Workers) != 0 || s.PredictedEntries != 0 {
		t.Errorf("after removing every worker: %d blocks, %d workers, %d predictions", s.Blocks, len(s.Workers), s.PredictedEntries)
	}
}

// TestStatsDuringRemoveWorker: Stats (the metrics collector, the admin API) runs while
// RemoveWorker clears a worker in chunks, yielding the lock between them: the worker
// being cleared must be skipped, not read (a nil engine table panicked here, found by the
// fleet churn benchmark).
func TestStatsDuringRemoveWorker(t *testing.T) {
	ix, _ := newIndex(t, Options{SampleEvery: 1})
	long := doc(1, 700) // > chunkOps blocks: the clear yields the lock mid-way
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				s := ix.Stats()
				for _, w := range s.Workers {
					if w.Worker == (proto.WorkerKey{}) {
						t.Error("Stats listed a freed worker")
					}
				}
				ix.Match(chain("", long), nil)
			}
		}
	})
	for range 200 {
		ix.Apply(wA, "m", batch(stored(1, long, 0, 700, "GPU", "")))
		ix.RemoveWorker(wA)
	}
	close(stop)
	wg.Wait()
	checkInvariants(t, ix)
}

// TestStatsDuringMatch: Stats (the metrics collector, the dashboard) reads the runs'
// touch stamps while concurrent Match calls update them, both under the read lock.
func TestStatsDuringMatch(t *testing.T) {
	ix, clk := newIndex(t, Options{SampleEvery: 1})
	toks := doc(1, 64)
	req := chain("", toks)
	ix.Apply(wA, "m", batch(stored(1, toks, 0, 64, "GPU", "")))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				ix.Match(req, nil)
			}
		})
	}
	for range 200 {
		clk.Advance(time.Second) // a new stamp, so every Match stores it
		ix.Sweep()               // publishes the stamp
		if s := ix.Stats(); s.Blocks != 64 {
			t.Fatalf("Stats: %d blocks, want 64", s.Blocks)
		}
	}
	close(stop)
	wg.Wait()
}
