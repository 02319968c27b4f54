package indexer

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvroute/kvroute/proto"
)

// BenchmarkMatchPacedIngest is issue 21's lookup case: Match latency for 512-block
// requests, 64 workers, with one goroutine ingesting at a fixed 1M block ops/s (64-block
// stores, and removes of the stores 16 batches back) while one goroutine matches (with
// GOMAXPROCS=2, each has a core). Unlike BenchmarkMatchDuringIngest, whose ingest runs
// flat out next to b.RunParallel, the ingest rate is the offered one, so the figure is
// Match's latency next to a realistic event feed.
// It reports p50/p99 Match latency (wall) and the ingest rate achieved, with ingest at
// 1M block ops/s ("ingest=1M") and, on the same index just before, without ingest
// ("ingest=0"), which separates the lookup's own tail from waiting for writers. Sizes: 1M
// and 10M indexed blocks (the 10M index takes about 1 GB and a minute to build).
//
// Compare two runs:
//
//	go test -run '^$' -bench '^BenchmarkMatchPacedIngest$' -count 10 ./indexer > new.txt; benchstat old.txt new.txt
func BenchmarkMatchPacedIngest(b *testing.B) {
	for _, total := range []int{1_000_000, 10_000_000} {
		b.Run(fmt.Sprintf("blocks=%dM", total/1_000_000), func(b *testing.B) {
			f := buildFleet(b, 64, 256, 256, total)
			// Without ingest first, on the same index: the lookup's own tail (cache
			// misses of a large index, the scheduler) apart from waiting for writers.
			b.Run("ingest=0", func(b *testing.B) { benchMatchPaced(b, f, 0) })
			b.Run("ingest=1M", func(b *testing.B) { benchMatchPaced(b, f, 1e6) })
		})
	}
}

func benchMatchPaced(b *testing.B, f *benchFleet, rate float64) {
	var stop atomic.Bool
	var ops atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	wg.Go(func() {
		if rate <= 0 {
			return
		}
		toks := make([]uint32, 64*benchBlockSize)
		hs := make([]proto.EngineHash, 64)
		w := proto.WorkerKey{ID: "churn"}
		var done int64
		for c := 0; !stop.Load(); c++ {
			// Pace: wait while ahead of the schedule by more than a millisecond.
			if ahead := time.Duration(float64(done)/rate*1e9) - time.Since(start); ahead > time.Millisecond {
				time.Sleep(ahead)
			}
			for bi := range 64 {
				fillTokens(toks[bi*benchBlockSize:(bi+1)*benchBlockSize], 1<<22+c, bi)
				hs[bi] = proto.EngineHash(uint64(c)<<8 | uint64(bi))
			}
			f.ix.Apply(w, "m", &proto.Batch{DPRank: -1, Events: []proto.Event{{Kind: proto.BlockStored, BlockHashes: hs, TokenIDs: toks, BlockSize: benchBlockSize}}})
			done += 64
			if c >= 16 {
				for bi := range 64 {
					hs[bi] = proto.EngineHash(uint64(c-16)<<8 | uint64(bi))
				}
				f.ix.Apply(w, "m", &proto.Batch{DPRank: -1, Events: []proto.Event{{Kind: proto.BlockRemoved, BlockHashes: hs}}})
				done += 64
			}
			ops.Store(done)
		}
	})
	// One matching goroutine: with GOMAXPROCS=2 the ingest has the other core.
	lat := make([]int64, 0, 1<<20)
	dst := make([]WorkerMatch, 0, 128)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s := time.Now()
		dst = f.ix.Match(f.requests[i%len(f.requests)], dst)
		if len(lat) < cap(lat) {
			lat = append(lat, int64(time.Since(s)))
		}
		i++
	}
	stop.Store(true)
	wg.Wait()
	b.ReportMetric(float64(ops.Load())/time.Since(start).Seconds(), "ingest-block-ops/s")
	reportPercentiles(b, lat)
}
