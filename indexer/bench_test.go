package indexer

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/bits"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/armon/go-radix"

	"github.com/kvroute/kvroute/proto"
)

// Benchmarks. Compare two runs of any of them with benchstat:
//
//	go test -run x -bench 'Match$' -count 6 ./indexer > new.txt; benchstat old.txt new.txt
//
// The Mooncake-derived ingest benchmark reads ../../shared/traces/mooncake_conversation.jsonl
// (override with KVROUTE_MOONCAKE_TRACE) and is skipped, with a message naming the
// path, when it is missing (CI has no ../shared).

const benchBlockSize = 16

// fillTokens writes the tokens of block b of chain c into dst (benchBlockSize tokens).
func fillTokens(dst []uint32, c, b int) {
	for k := range dst {
		dst[k] = uint32(c*7919 + b*benchBlockSize + k)
	}
}

// benchFleet is an index filled through Apply with W workers: a system prompt of S blocks
// held by every worker, per worker conversations (system prompt + C unique blocks), and
// filler chains until total distinct blocks are indexed.
type benchFleet struct {
	ix       *Index
	requests [][]proto.BlockHash
}

func buildFleet(b testing.TB, workers, shared, unique, total int) *benchFleet {
	b.Helper()
	ix, err := New(Options{MaxBlocks: total * 2, MaxBlocksPerWorker: total})
	if err != nil {
		b.Fatal(err)
	}
	f := &benchFleet{ix: ix}
	keys := make([]proto.WorkerKey, workers)
	for i := range keys {
		keys[i] = proto.WorkerKey{ID: fmt.Sprintf("http://worker-%d:8000", i)}
	}
	seed := proto.Seed("m", "", "")
	chainLen := shared + unique
	toks := make([]uint32, chainLen*benchBlockSize)
	hashes := make([]proto.EngineHash, chainLen)
	store := func(w proto.WorkerKey, c, from, to int, parent proto.EngineHash, salt uint64) {
		for bi := from; bi < to; bi++ {
			fillTokens(toks[bi*benchBlockSize:(bi+1)*benchBlockSize], c, bi)
			hashes[bi] = proto.EngineHash(salt ^ uint64(c)<<20 ^ uint64(bi))
		}
		ev := proto.Event{Kind: proto.BlockStored, BlockHashes: hashes[from:to], TokenIDs: toks[from*benchBlockSize : to*benchBlockSize], BlockSize: benchBlockSize}
		if from > 0 {
			ev.HasParent, ev.ParentHash = true, parent
		}
		ix.Apply(w, "m", &proto.Batch{DPRank: -1, Events: []proto.Event{ev}})
	}
	// System prompt: chain 0, blocks [0, shared), on every worker.
	for _, w := range keys {
		store(w, 0, 0, shared, 0, 1)
	}
	sysParent := proto.EngineHash(1 ^ uint64(shared-1))
	// Conversations: chain c >= 1, blocks [shared, chainLen) after the system prompt.
	c := 1
	for ix.nodes.Len() < total/2 {
		w := keys[c%workers]
		store(w, c, shared, chainLen, sysParent, 1)
		if len(f.requests) < 512 {
			full := make([]uint32, chainLen*benchBlockSize)
			for bi := 0; bi < chainLen; bi++ {
				cc := c
				if bi < shared {
					cc = 0
				}
				fillTokens(full[bi*benchBlockSize:(bi+1)*benchBlockSize], cc, bi)
			}
			f.requests = append(f.requests, proto.HashBlocks(nil, seed, full, benchBlockSize))
		}
		c++
	}
	// Filler: unrelated full chains, spread over the workers.
	for ix.nodes.Len() < total {
		store(keys[c%workers], c, 0, chainLen, 0, 2)
		c++
	}
	_ = seed
	return f
}

// benchMatch runs Match over the fleet's requests, reporting p50/p99 latency.
func benchMatch(b *testing.B, f *benchFleet) {
	lat := make([]int64, 0, 1<<20)
	dst := make([]WorkerMatch, 0, 1024)
	reqs := f.requests
	var blocks int
	b.ReportAllocs()
	i := 0
	cpu0 := cpuTime()
	for b.Loop() {
		req := reqs[i%len(reqs)]
		t0 := time.Now()
		dst = f.ix.Match(req, dst)
		d := time.Since(t0)
		if len(lat) < cap(lat) {
			lat = append(lat, int64(d))
		}
		for _, m := range dst {
			blocks = max(blocks, m.Blocks)
		}
		i++
	}
	// CPU time per call: on a shared machine wall-clock percentiles include the time the
	// thread waited for a CPU; process CPU time does not (Match allocates nothing, so no
	// GC work is mixed in).
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
	if blocks != len(reqs[0]) {
		b.Fatalf("no worker matched the whole request: best %d of %d blocks", blocks, len(reqs[0]))
	}
	reportPercentiles(b, lat)
}

func reportPercentiles(b *testing.B, lat []int64) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2]), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100]), "p99-ns")
}

// BenchmarkMatch measures Match for fleets of 8, 64 and 512 workers and prompts of 64,
// 512 and 2048 blocks, half of each prompt a system prompt every worker holds, the other
// half held by one worker (so every request walks all its blocks), with 1M indexed
// blocks. Each request's answer has W entries.
//
// Compare two runs:
//
//	go test -run x -bench '^BenchmarkMatch$' -count 6 ./indexer > new.txt; benchstat old.txt new.txt
func BenchmarkMatch(b *testing.B) {
	for _, workers := range []int{8, 64, 512} {
		for _, prompt := range []int{64, 512, 2048} {
			b.Run(fmt.Sprintf("workers=%d/blocks=%d", workers, prompt), func(b *testing.B) {
				f := buildFleet(b, workers, prompt/2, prompt/2, 1_000_000)
				benchMatch(b, f)
			})
		}
	}
}

// BenchmarkMatch10M is the headline case: a 512-block request, 64 workers,
// 10 million indexed blocks.
//
// Compare two runs:
//
//	go test -run x -bench '^BenchmarkMatch10M$' -count 6 ./indexer > new.txt; benchstat old.txt new.txt
func BenchmarkMatch10M(b *testing.B) {
	f := buildFleet(b, 64, 256, 256, 10_000_000)
	benchMatch(b, f)
	st := f.ix.Stats()
	b.ReportMetric(float64(st.Blocks), "indexed-blocks")
	b.ReportMetric(float64(st.Runs), "runs")
}

// BenchmarkMatchDuringIngest runs Match on all cores while one goroutine applies a churn
// of stores and removes as fast as it can (64 workers, 512-block requests, 1M blocks).
// It reports Match latency percentiles and the ingest rate achieved meanwhile.
//
// Compare two runs:
//
//	go test -run x -bench '^BenchmarkMatchDuringIngest$' -count 6 ./indexer > new.txt; benchstat old.txt new.txt
func BenchmarkMatchDuringIngest(b *testing.B) {
	f := buildFleet(b, 64, 256, 256, 1_000_000)
	var stop atomic.Bool
	var ops atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		toks := make([]uint32, 64*benchBlockSize)
		hs := make([]proto.EngineHash, 64)
		w := proto.WorkerKey{ID: "churn"}
		for c := 0; !stop.Load(); c++ {
			for bi := range 64 {
				fillTokens(toks[bi*benchBlockSize:(bi+1)*benchBlockSize], 1<<22+c, bi)
				hs[bi] = proto.EngineHash(uint64(c)<<8 | uint64(bi))
			}
			f.ix.Apply(w, "m", &proto.Batch{DPRank: -1, Events: []proto.Event{{Kind: proto.BlockStored, BlockHashes: hs, TokenIDs: toks, BlockSize: benchBlockSize}}})
			if c >= 16 {
				for bi := range 64 {
					hs[bi] = proto.EngineHash(uint64(c-16)<<8 | uint64(bi))
				}
				f.ix.Apply(w, "m", &proto.Batch{DPRank: -1, Events: []proto.Event{{Kind: proto.BlockRemoved, BlockHashes: hs}}})
				ops.Add(64)
			}
			ops.Add(64)
		}
	})
	var mu sync.Mutex
	var all []int64
	start := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		lat := make([]int64, 0, 1<<16)
		dst := make([]WorkerMatch, 0, 128)
		for i := 0; pb.Next(); i++ {
			t0 := time.Now()
			dst = f.ix.Match(f.requests[i%len(f.requests)], dst)
			if len(lat) < cap(lat) {
				lat = append(lat, int64(time.Since(t0)))
			}
		}
		mu.Lock()
		all = append(all, lat...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	stop.Store(true)
	wg.Wait()
	b.ReportMetric(float64(ops.Load())/elapsed.Seconds(), "ingest-block-ops/s")
	reportPercentiles(b, all)
}

// mooncakeStream turns the first n requests of the Mooncake conversation trace into KV
// event batches of an 8-worker fleet: each 512-token hash id becomes 32 blocks of 16
// tokens (deterministic tokens per id), requests go to a worker chosen by their second
// hash id (sticky conversations), each worker keeps an LRU of 4096 hash ids (131,072
// blocks) and publishes BlockStored for the blocks it lacked and BlockRemoved for the
// blocks it evicts.
type mooncakeStream struct {
	workers []proto.WorkerKey
	warm    [][]*proto.Batch // per worker, in order: the first warm requests' batches
	batches [][]*proto.Batch // per worker, in order: the rest
	ops     int              // block operations in batches
}

// loadMooncake reads the first n requests; the batches of the first warm of them go to
// s.warm.
func loadMooncake(b *testing.B, n, warm int) *mooncakeStream {
	b.Helper()
	path := os.Getenv("KVROUTE_MOONCAKE_TRACE")
	if path == "" {
		path = "../../shared/traces/mooncake_conversation.jsonl"
	}
	fh, err := os.Open(path)
	if err != nil {
		// The trace is not in the repository (CI has no ../shared): say so, loudly.
		b.Skipf("SKIP: Mooncake trace not found (%v); run with the trace at %s or set KVROUTE_MOONCAKE_TRACE", err, path)
	}
	defer fh.Close()
	const (
		nWorkers = 8
		perID    = 512 / benchBlockSize
		capIDs   = 4096
	)
	s := &mooncakeStream{warm: make([][]*proto.Batch, nWorkers), batches: make([][]*proto.Batch, nWorkers)}
	for i := range nWorkers {
		s.workers = append(s.workers, proto.WorkerKey{ID: fmt.Sprintf("w%d", i)})
	}
	type lru struct {
		at    map[int]int // hash id -> last use
		clock int
	}
	caches := make([]lru, nWorkers)
	for i := range caches {
		caches[i].at = map[int]int{}
	}
	eh := func(w, id, j int) proto.EngineHash {
		return proto.EngineHash(uint64(w)<<56 | uint64(id)<<8 | uint64(j))
	}
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for req := 0; req < n && sc.Scan(); req++ {
		var r struct {
			HashIDs []int `json:"hash_ids"`
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			b.Fatalf("trace line %d: %v", req+1, err)
		}
		if len(r.HashIDs) == 0 {
			continue
		}
		w := r.HashIDs[min(1, len(r.HashIDs)-1)] % nWorkers
		c := &caches[w]
		batch := &proto.Batch{DPRank: -1}
		var run []int
		flush := func(prev int) {
			if len(run) == 0 {
				return
			}
			ev := proto.Event{Kind: proto.BlockStored, BlockSize: benchBlockSize}
			if prev >= 0 {
				ev.HasParent, ev.ParentHash = true, eh(w, prev, perID-1)
			}
			for _, id := range run {
				for j := range perID {
					ev.BlockHashes = append(ev.BlockHashes, eh(w, id, j))
					for k := range benchBlockSize {
						ev.TokenIDs = append(ev.TokenIDs, uint32(id*512+j*benchBlockSize+k))
					}
				}
			}
			batch.Events = append(batch.Events, ev)
			run = run[:0]
		}
		prev, runPrev := -1, -1
		for _, id := range r.HashIDs {
			c.clock++
			if _, ok := c.at[id]; ok {
				flush(runPrev)
			} else {
				if len(run) == 0 {
					runPrev = prev
				}
				run = append(run, id)
			}
			c.at[id] = c.clock
			prev = id
		}
		flush(runPrev)
		for len(c.at) > capIDs {
			victim, vt := -1, 0
			for id, t := range c.at {
				if victim < 0 || t < vt {
					victim, vt = id, t
				}
			}
			delete(c.at, victim)
			ev := proto.Event{Kind: proto.BlockRemoved}
			for j := range perID {
				ev.BlockHashes = append(ev.BlockHashes, eh(w, victim, j))
			}
			batch.Events = append(batch.Events, ev)
		}
		if req < warm {
			s.warm[w] = append(s.warm[w], batch)
			continue
		}
		for _, ev := range batch.Events {
			s.ops += len(ev.BlockHashes)
		}
		s.batches[w] = append(s.batches[w], batch)
	}
	return s
}

// BenchmarkApplyMooncake applies a Mooncake-derived event stream on one goroutine and
// reports block operations per second (wall and process CPU). "empty": the first 2000
// requests (about 1.45M block operations) applied to a fresh index per iteration, table
// growth from nothing included. "steady": requests 2000-3999 applied to an index that
// already holds requests 0-1999 (applied untimed), where every worker's cache is at its
// capacity, so stores and removes balance and the tables are at their working size: a
// router's ingest after its first minutes. "empty-reserved": the empty case with each
// worker's engine table sized by Index.Reserve for its 131,072-block cache after its
// first batch, as the router does with the capacity a worker's metrics report.
// "MaxBlocks=200k": the empty case against a
// bound of 200,000 indexed blocks, so nearly every new block evicts one (sampled LRU).
// Dropped blocks fail the benchmark: every event of the stream must apply.
//
// Compare two runs:
//
//	go test -run x -bench '^BenchmarkApplyMooncake$' -count 6 ./indexer > new.txt; benchstat old.txt new.txt
func BenchmarkApplyMooncake(b *testing.B) {
	b.Run("empty", func(b *testing.B) { benchApplyMooncake(b, Options{}, 0, 0) })
	b.Run("empty-reserved", func(b *testing.B) { benchApplyMooncake(b, Options{}, 0, 4096*512/benchBlockSize) })
	b.Run("steady", func(b *testing.B) { benchApplyMooncake(b, Options{}, 2000, 0) })
	b.Run("MaxBlocks=200k", func(b *testing.B) { benchApplyMooncake(b, Options{MaxBlocks: 200_000}, 0, 0) })
}

// benchApplyMooncake applies requests [warm, warm+2000) after [0, warm) untimed; with
// reserve > 0, each worker's tables are reserved for that many blocks after its first
// batch.
func benchApplyMooncake(b *testing.B, opts Options, warm, reserve int) {
	s := loadMooncake(b, warm+2000, warm)
	b.ResetTimer() // building the stream is not ingest
	b.ReportAllocs()
	var last *Index
	var cpu time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ix, err := New(opts)
		if err != nil {
			b.Fatal(err)
		}
		for w, bs := range s.warm {
			for _, bt := range bs {
				ix.Apply(s.workers[w], "m", bt)
			}
		}
		runtime.GC()
		b.StartTimer()
		cpu0 := cpuTime()
		// Labelled so that a CPU profile can be focused on the timed part
		// (go tool pprof -tagfocus phase=timed).
		pprof.Do(context.Background(), pprof.Labels("phase", "timed"), func(context.Context) {
			for w, bs := range s.batches {
				for i, bt := range bs {
					ix.Apply(s.workers[w], "m", bt)
					if i == 0 && reserve > 0 {
						ix.Reserve(s.workers[w].ID, reserve)
					}
				}
			}
		})
		cpu += cpuTime() - cpu0
		last = ix
	}
	b.ReportMetric(float64(s.ops)*float64(b.N)/b.Elapsed().Seconds(), "block-ops/s")
	// On a shared machine wall time includes time other processes held the CPU; process
	// CPU time (GC included) gives the per-core rate.
	b.ReportMetric(float64(s.ops)*float64(b.N)/cpu.Seconds(), "block-ops/cpu-s")
	st := last.Stats()
	for r, v := range st.Dropped {
		if v != 0 {
			b.Fatalf("%d blocks dropped (%s)", v, DropReason(r))
		}
	}
	b.ReportMetric(float64(st.Blocks), "final-blocks")
	b.ReportMetric(float64(s.ops), "stream-block-ops")
}

// BenchmarkMemoryPerEntry indexes 1M (block, worker) entries through Apply, once with
// every block held by one worker and once with every block held by 4 workers, and
// reports heap bytes per (block, worker) entry and per distinct block (whole index:
// node table, holder sets, engine-hash maps).
//
// Compare two runs:
//
//	go test -run x -bench '^BenchmarkMemoryPerEntry$' -count 6 ./indexer > new.txt; benchstat old.txt new.txt
func BenchmarkMemoryPerEntry(b *testing.B) {
	for _, c := range []struct{ holders, entries int }{{1, 1 << 20}, {1, 3 << 19}, {4, 1 << 20}} {
		b.Run(fmt.Sprintf("holders=%d/entries=%d", c.holders, c.entries), func(b *testing.B) {
			var perEntry, perBlock, estimate float64
			b.ReportAllocs()
			for b.Loop() {
				runtime.GC()
				before := heapInUse()
				ix, _ := New(Options{})
				toks := make([]uint32, 256*benchBlockSize)
				hs := make([]proto.EngineHash, 256)
				for ch := 0; ch < c.entries/256/c.holders; ch++ {
					for bi := range 256 {
						fillTokens(toks[bi*benchBlockSize:(bi+1)*benchBlockSize], ch, bi)
						hs[bi] = proto.EngineHash(uint64(ch)<<9 | uint64(bi))
					}
					for h := range c.holders {
						ix.Apply(proto.WorkerKey{ID: fmt.Sprint((ch + h) % 16)}, "m", &proto.Batch{DPRank: -1,
							Events: []proto.Event{{Kind: proto.BlockStored, BlockHashes: hs, TokenIDs: toks, BlockSize: benchBlockSize}}})
					}
				}
				used := heapInUse() - before
				st := ix.Stats()
				perEntry = float64(used) / float64(c.entries)
				perBlock = float64(used) / float64(st.Blocks)
				estimate = float64(st.MemoryBytes) / float64(c.entries)
				runtime.KeepAlive(ix)
			}
			b.ReportMetric(perEntry, "bytes/entry")
			b.ReportMetric(perBlock, "bytes/block")
			b.ReportMetric(estimate, "estimated-bytes/entry")
		})
	}
}

// cpuTime returns the user+system CPU time of the process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}

// BenchmarkRadixComparison runs the same Match workload (64 workers, 512-block requests
// half shared, per worker leading blocks) on three structures holding the same blocks:
//   - index: this package;
//   - goradix-flat: github.com/armon/go-radix keyed by each block's 8-byte own hash as a
//     string, value a 64-worker bitmask, walked block by block with Get;
//   - goradix-path: go-radix keyed by the whole chain (concatenated hashes), the literal
//     radix tree, walked with WalkPath over the request's key.
//
// 100k blocks for the first two. The path tree stores the full key in every leaf, so its
// memory grows with the square of chain length; it is built with 20k blocks and its
// bytes/block reported.
//
// Compare two runs:
//
//	go test -run x -bench '^BenchmarkRadixComparison$' -count 6 ./indexer > new.txt; benchstat old.txt new.txt
func BenchmarkRadixComparison(b *testing.B) {
	const workers, half = 64, 256
	f := buildFleet(b, workers, half, half, 100_000)
	b.Run("index", func(b *testing.B) { benchMatch(b, f) })

	// Reconstruct (hash -> holders) from the index for the go-radix variants, and each
	// request's full key.
	holders := map[proto.BlockHash]uint64{}
	f.ix.mu.RLock()
	f.ix.nodes.Range(func(key uint64, val, _ uint32) bool {
		var m uint64
		for _, c := range f.ix.sets.members(setID(val)) {
			m |= 1 << (codeWID(c) % 64)
		}
		holders[proto.BlockHash(key)] = m
		return true
	})
	f.ix.mu.RUnlock()
	key := func(h proto.BlockHash) string {
		var k [8]byte
		binary.BigEndian.PutUint64(k[:], uint64(h))
		return string(k[:])
	}
	b.Run("goradix-flat", func(b *testing.B) {
		t := radix.New()
		for h, m := range holders {
			t.Insert(key(h), m)
		}
		reqKeys := make([][]string, len(f.requests))
		for i, r := range f.requests {
			for _, h := range r {
				reqKeys[i] = append(reqKeys[i], key(h))
			}
		}
		var counts [64]int
		b.ReportAllocs()
		i := 0
		lat := make([]int64, 0, 1<<20)
		cpu0 := cpuTime()
		for b.Loop() {
			t0 := time.Now()
			active := ^uint64(0)
			for d, k := range reqKeys[i%len(reqKeys)] {
				v, ok := t.Get(k)
				if !ok {
					break
				}
				active &= v.(uint64)
				if active == 0 {
					break
				}
				for m := active; m != 0; m &= m - 1 {
					counts[trailing(m)] = d + 1
				}
			}
			if len(lat) < cap(lat) {
				lat = append(lat, int64(time.Since(t0)))
			}
			i++
		}
		b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		reportPercentiles(b, lat)
	})
	b.Run("goradix-path", func(b *testing.B) {
		// Insert whole chains: every prefix of every request chain plus filler chains, up
		// to 20k blocks, each block keyed by its full path.
		t := radix.New()
		runtime.GC()
		before := heapInUse()
		n := 0
		var reqs []string
		for _, r := range f.requests {
			var path []byte
			for _, h := range r {
				var k [8]byte
				binary.BigEndian.PutUint64(k[:], uint64(h))
				path = append(path, k[:]...)
				if _, ok := t.Get(string(path)); !ok {
					t.Insert(string(path), holders[h])
					n++
				}
			}
			reqs = append(reqs, string(path))
			if n >= 20_000 {
				break
			}
		}
		mem := heapInUse() - before
		var counts [64]int
		b.ReportAllocs()
		i := 0
		lat := make([]int64, 0, 1<<20)
		cpu0 := cpuTime()
		for b.Loop() {
			t0 := time.Now()
			active := ^uint64(0)
			d := 0
			t.WalkPath(reqs[i%len(reqs)], func(_ string, v any) bool {
				active &= v.(uint64)
				d++
				for m := active; m != 0; m &= m - 1 {
					counts[trailing(m)] = d
				}
				return active == 0
			})
			if len(lat) < cap(lat) {
				lat = append(lat, int64(time.Since(t0)))
			}
			i++
		}
		b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		reportPercentiles(b, lat)
		b.ReportMetric(float64(mem)/float64(n), "bytes/block")
	})
}

func trailing(m uint64) int {
	return bits.TrailingZeros64(m)
}
