package valkeyindex_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/indexer/valkeyindex"
	"github.com/kvroute/kvroute/indexer/valkeyindex/valkeytest"
	"github.com/kvroute/kvroute/proto"
)

// benchFleet is the case: 64 workers, a 256-block system prompt every worker
// holds, and per worker conversations of 256 blocks continuing it, about 1M blocks in
// all; a request is the system prompt and one conversation (512 blocks), so every
// worker holds its first half and one worker all of it.
type benchFleet struct {
	batches []benchBatch
	reqs    [][]proto.BlockHash
	blocks  int
}

type benchBatch struct {
	w proto.WorkerKey
	b *proto.Batch
}

const (
	benchWorkers = 64
	benchHalf    = 256
	benchBS      = 16
)

func newBenchFleet(total int) *benchFleet {
	rng := rand.New(rand.NewPCG(1, 2))
	tokens := func(n int) []uint32 {
		t := make([]uint32, n*benchBS)
		for i := range t {
			t[i] = rng.Uint32N(100_000)
		}
		return t
	}
	engs := func(n int) []proto.EngineHash {
		e := make([]proto.EngineHash, n)
		for i := range e {
			e[i] = proto.EngineHash(rng.Uint64())
		}
		return e
	}
	f := &benchFleet{}
	sysTok, sysEng := tokens(benchHalf), engs(benchHalf)
	sysOwn := proto.HashBlocks(nil, proto.Seed(model, "", ""), sysTok, benchBS)
	for w := range benchWorkers {
		wk := proto.WorkerKey{ID: fmt.Sprintf("w%02d", w)}
		f.batches = append(f.batches, benchBatch{wk, &proto.Batch{DPRank: -1, Events: []proto.Event{{
			Kind: proto.BlockStored, BlockHashes: sysEng, TokenIDs: sysTok, BlockSize: benchBS}}}})
		f.blocks += benchHalf
	}
	convs := (total - benchHalf) / benchHalf / benchWorkers
	for c := range convs {
		for w := range benchWorkers {
			wk := proto.WorkerKey{ID: fmt.Sprintf("w%02d", w)}
			tok := tokens(benchHalf)
			f.batches = append(f.batches, benchBatch{wk, &proto.Batch{DPRank: -1, Events: []proto.Event{{
				Kind: proto.BlockStored, BlockHashes: engs(benchHalf), TokenIDs: tok, BlockSize: benchBS,
				HasParent: true, ParentHash: sysEng[benchHalf-1]}}}})
			f.blocks += benchHalf
			if c < 4 {
				own := proto.HashBlocks(nil, sysOwn[benchHalf-1], tok, benchBS)
				f.reqs = append(f.reqs, append(slices.Clone(sysOwn), own...))
			}
		}
	}
	return f
}

// BenchmarkBackends compares the in-memory index and the Valkey backend (a real
// redis-server on loopback) side by side in one run, on the case (64 workers,
// 1M blocks, 512-block requests): ingest block ops per second (for Valkey, until the
// server holds every change) and Match p50/p99 (one Match is one round trip for Valkey).
// Run it as
//
//	go test -run '^$' -bench '^BenchmarkBackends$' -benchtime 2000x ./indexer/valkeyindex
//
// and compare two runs with benchstat (go run golang.org/x/perf/cmd/benchstat old new).
func BenchmarkBackends(b *testing.B) {
	srv := valkeytest.Start(b)
	f := newBenchFleet(1 << 20)
	opts := indexer.Options{MaxBlocks: 4 << 20}
	mem, err := indexer.New(opts)
	if err != nil {
		b.Fatal(err)
	}
	v, err := valkeyindex.New(valkeyindex.Options{URL: srv.URL(), Local: opts, Timeout: 10 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	ctx := context.Background()
	if err := v.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	ingest := func(name string, apply func(w proto.WorkerKey, bt *proto.Batch), done func()) float64 {
		start := time.Now()
		for i, bt := range f.batches {
			apply(bt.w, bt.b)
			if i%64 == 63 {
				done()
			}
		}
		done()
		d := time.Since(start)
		rate := float64(f.blocks) / d.Seconds()
		b.Logf("%s: ingest %d blocks in %v: %.0f block ops/s", name, f.blocks, d.Round(time.Millisecond), rate)
		return rate
	}
	memRate := ingest("memory", func(w proto.WorkerKey, bt *proto.Batch) { mem.Apply(w, model, bt) }, func() {})
	vRate := ingest("valkey", func(w proto.WorkerKey, bt *proto.Batch) { v.Apply(w, model, bt) }, func() {
		if err := v.Flush(ctx); err != nil {
			b.Fatal(err)
		}
	})
	for _, c := range []struct {
		name string
		ix   indexer.Backend
		rate float64
	}{{"memory", mem, memRate}, {"valkey", v, vRate}} {
		b.Run("backend="+c.name, func(b *testing.B) {
			b.ReportAllocs()
			lat := make([]time.Duration, 0, b.N)
			var dst []indexer.WorkerMatch
			b.ResetTimer()
			for i := range b.N {
				req := f.reqs[i%len(f.reqs)]
				t0 := time.Now()
				dst = c.ix.Match(req, dst)
				lat = append(lat, time.Since(t0))
				if len(dst) != benchWorkers {
					b.Fatalf("match: %d workers, want %d", len(dst), benchWorkers)
				}
			}
			b.StopTimer()
			if v.Down() {
				b.Fatal("valkey backend went down during the run")
			}
			if c.name == "valkey" {
				logServerCost(b, srv.URL())
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
			b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
			b.ReportMetric(c.rate, "ingest-blocks/s")
		})
	}
}

// logServerCost logs the server's own time per call of the commands a Match and the
// writes use (INFO commandstats).
func logServerCost(b *testing.B, url string) {
	co, err := valkey.ParseURL(url)
	if err != nil {
		b.Fatal(err)
	}
	c, err := valkey.NewClient(co)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	info, err := c.Do(context.Background(), c.B().Info().Section("commandstats").Build()).ToString()
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(info, "\n") {
		if strings.HasPrefix(l, "cmdstat_mget:") || strings.HasPrefix(l, "cmdstat_evalsha:") || strings.HasPrefix(l, "cmdstat_evalsha_ro:") {
			b.Logf("server: %s", strings.TrimSpace(l))
		}
	}
}
