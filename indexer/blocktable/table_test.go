package blocktable

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
)

// TestAgainstMap runs random inserts, overwrites and deletes (with a small key space so
// that probe runs collide and wrap) and compares every key with a Go map after each step.
func TestAgainstMap(t *testing.T) {
	for _, keySpace := range []uint64{64, 5000, 1 << 40} {
		rng := rand.New(rand.NewPCG(1, keySpace))
		tb := New(rng.Uint64())
		ref := map[uint64]uint32{}
		for step := 0; step < 60000; step++ {
			k := rng.Uint64N(keySpace)
			switch rng.IntN(3) {
			case 0, 1:
				v := rng.Uint32() | 1
				sl := tb.Insert(k, v, uint32(step))
				if sl.Key != k || sl.Val != v {
					t.Fatalf("Insert returned slot %+v for key %d val %d", *sl, k, v)
				}
				ref[k] = v
			case 2:
				_, want := ref[k]
				if got := tb.Delete(k); got != want {
					t.Fatalf("step %d: Delete(%d) = %v, want %v", step, k, got, want)
				}
				delete(ref, k)
			}
			if tb.Len() != len(ref) {
				t.Fatalf("step %d: Len = %d, want %d", step, tb.Len(), len(ref))
			}
			if step%997 == 0 {
				for rk, rv := range ref {
					if v, ok := tb.Get(rk); !ok || v != rv {
						t.Fatalf("step %d: Get(%d) = %d,%v want %d", step, rk, v, ok, rv)
					}
				}
				n := 0
				tb.Range(func(s *Slot) bool {
					if ref[s.Key] != s.Val {
						t.Fatalf("Range yields %d=%d, map has %d", s.Key, s.Val, ref[s.Key])
					}
					n++
					return true
				})
				if n != len(ref) {
					t.Fatalf("Range visited %d entries, want %d", n, len(ref))
				}
			}
		}
		// Drain: deleting everything must shrink back to the initial size.
		for k := range ref {
			tb.Delete(k)
		}
		if tb.Len() != 0 || tb.Bytes() != numShards*minShardCap*SlotBytes {
			t.Errorf("after draining: Len %d Bytes %d, want 0 and %d", tb.Len(), tb.Bytes(), numShards*minShardCap*SlotBytes)
		}
		if tb.Sample(12345) != nil {
			t.Error("Sample on empty table returned a slot")
		}
	}
}

func TestSampleFindsOccupied(t *testing.T) {
	tb := New(7)
	tb.Insert(42, 9, 0)
	for r := uint64(0); r < 1000; r++ {
		s := tb.Sample(r * 0x9e3779b97f4a7c15)
		if s == nil || s.Key != 42 {
			t.Fatalf("Sample(%d) = %v, want the only entry", r, s)
		}
	}
}

func TestInsertZeroPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Insert with value 0 did not panic")
		}
	}()
	New(0).Insert(1, 0, 0)
}

const benchKeys = 10_000_000

var sink uint32

// BenchmarkLookup compares random hits in a 10-million-entry Table and Go map
// (map[uint64]uint64 carrying the same 12 bytes of payload). Memory per entry is
// reported as bytes/entry.
// Compare two runs:
//
//	go test -run x -bench Lookup -count 6 ./indexer/blocktable > new.txt; benchstat old.txt new.txt
func BenchmarkLookup(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	keys := make([]uint64, benchKeys)
	for i := range keys {
		keys[i] = rng.Uint64()
	}
	b.Run("blocktable", func(b *testing.B) {
		before := heapInUse()
		tb := New(99)
		for i, k := range keys {
			tb.Insert(k, uint32(i)|1, 0)
		}
		mem := heapInUse() - before
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			v, _ := tb.Get(keys[i])
			sink += v
			i = (i + 7919) % benchKeys
		}
		b.ReportMetric(float64(mem)/benchKeys, "bytes/entry")
		runtime.KeepAlive(tb)
	})
	b.Run("gomap", func(b *testing.B) {
		before := heapInUse()
		m := make(map[uint64]uint64)
		for i, k := range keys {
			m[k] = uint64(i)
		}
		mem := heapInUse() - before
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			sink += uint32(m[keys[i]])
			i = (i + 7919) % benchKeys
		}
		b.ReportMetric(float64(mem)/benchKeys, "bytes/entry")
		runtime.KeepAlive(m)
	})
}

func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}

// BenchmarkWalk512 looks up 512 random present keys of a 10-million-entry table in a row,
// as Match does for a 512-block request, plainly and with a Warm pass over each batch of
// 32 keys first (memory-level parallelism).
// Compare two runs:
//
//	go test -run x -bench Walk512 -count 6 ./indexer/blocktable > new.txt; benchstat old.txt new.txt
func BenchmarkWalk512(b *testing.B) {
	rng := rand.New(rand.NewPCG(5, 6))
	keys := make([]uint64, benchKeys)
	tb := New(3)
	for i := range keys {
		keys[i] = rng.Uint64()
		tb.Insert(keys[i], uint32(i)|1, 0)
	}
	reqs := make([][]uint64, 256)
	for i := range reqs {
		for range 512 {
			reqs[i] = append(reqs[i], keys[rng.IntN(benchKeys)])
		}
	}
	for _, warm := range []int{0, 8, 32} {
		b.Run(fmt.Sprintf("warm=%d", warm), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			var hint uint64
			for b.Loop() {
				req := reqs[i%len(reqs)]
				for j := 0; j < len(req); j++ {
					if warm > 0 && j%warm == 0 {
						for _, k := range req[j:min(j+warm, len(req))] {
							hint += tb.Warm(k)
						}
					}
					sink += tb.Find(req[j]).Val
				}
				i++
			}
			sink += uint32(hint)
		})
	}
}

func TestOldest(t *testing.T) {
	tb := New(11)
	if got := tb.Oldest(1, 8, 1, nil); len(got) != 0 {
		t.Fatal("Oldest on an empty table returned keys")
	}
	rng := rand.New(rand.NewPCG(8, 9))
	touch := map[uint64]uint32{}
	for i := range 5000 {
		k := rng.Uint64()
		touch[k] = uint32(1 + rng.IntN(1000))
		tb.Insert(k, uint32(i)|1, touch[k])
	}
	for range 2000 {
		r := rng.Uint64()
		one, many := tb.Oldest(r, 1, 1, nil), tb.Oldest(r, 64, 8, nil)
		if len(one) != 1 || len(many) != 8 {
			t.Fatalf("Oldest(%x) returned %d and %d keys, want 1 and 8", r, len(one), len(many))
		}
		for i, k := range many {
			if _, ok := tb.Get(k); !ok {
				t.Fatalf("Oldest returned absent key %d", k)
			}
			if i > 0 && touch[many[i-1]] > touch[k] {
				t.Fatalf("Oldest not sorted by touch: %v", many)
			}
		}
		if touch[many[0]] > touch[one[0]] {
			t.Fatalf("Oldest over 64 (touch %d) is younger than over 1 (touch %d)", touch[many[0]], touch[one[0]])
		}
	}
	// A sample as large as the table sees every entry: the unique oldest ones win.
	tb.Insert(42, 7, 0)
	tb.Insert(43, 7, 0)
	for range 20 {
		got := tb.Oldest(rng.Uint64(), tb.Len(), 2, nil)
		if len(got) != 2 || got[0]+got[1] != 85 || got[0]*got[1] != 42*43 {
			t.Fatalf("Oldest over the whole table = %v, want 42 and 43", got)
		}
	}
}
