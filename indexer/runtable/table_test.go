package runtable

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// key returns the key of block b of chain c (distinct for distinct (c, b), never 0).
func key(c, b int) uint64 { return uint64(c)<<20 | uint64(b) + 1 }

// TestAgainstMap drives the table and a Go map with the same random stream of inserts
// (chains stored in order, out of order and with unknown parents), value changes,
// deletions and evictions, and compares every key's value, Span and the invariants.
func TestAgainstMap(t *testing.T) {
	for seed := range 4 {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runAgainstMap(t, uint64(seed)) })
	}
}

func runAgainstMap(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	tb := New(seed * 0x9e3779b97f4a7c15)
	m := map[uint64]uint32{}
	const chains, chainLen = 24, 300
	check := func(step int, desc string) {
		t.Helper()
		if err := tb.Check(); err != nil {
			t.Fatalf("step %d (%s): %v", step, desc, err)
		}
		if tb.Len() != len(m) {
			t.Fatalf("step %d (%s): Len %d, want %d", step, desc, tb.Len(), len(m))
		}
		for c := range chains {
			ch := make([]uint64, chainLen)
			for b := range ch {
				ch[b] = key(c, b)
			}
			for b := 0; b < chainLen; b++ {
				v, _, ok := tb.Get(ch[b])
				if want, wok := m[ch[b]]; ok != wok || v != want {
					t.Fatalf("step %d (%s): Get(%d,%d) = %d %v, want %d %v", step, desc, c, b, v, ok, want, wok)
				}
				sv, touch, n, sok := Span(tb, ch[b], ch[b+1:])
				if sok != ok || sv != v || (ok && touch == nil) {
					t.Fatalf("step %d (%s): Span(%d,%d) = %d %v, Get %d %v", step, desc, c, b, sv, sok, v, ok)
				}
				for k := 1; k <= n; k++ {
					if mv, ok := m[ch[b+k]]; !ok || mv != v {
						t.Fatalf("step %d (%s): Span(%d,%d) covers %d blocks, but block %d has %d %v, want %d", step, desc, c, b, n, b+k, mv, ok, v)
					}
				}
			}
		}
	}
	for step := range 3000 {
		c := rng.IntN(chains)
		b := rng.IntN(chainLen)
		val := uint32(1 + rng.IntN(3))
		var desc string
		switch r := rng.IntN(100); {
		case r < 40:
			// Store a stretch of the chain in order, parent linked (0 for the root, or an
			// unknown parent now and then).
			n := 1 + rng.IntN(64)
			viaRef := rng.IntN(2) == 0 // LookupHashed then InsertAt, as the index does
			desc = fmt.Sprintf("insert chain %d blocks %d+%d val %d (via ref %v)", c, b, n, val, viaRef)
			tb.SetCapHint(n)
			for i := b; i < min(b+n, chainLen); i++ {
				k := key(c, i)
				if _, ok := m[k]; ok {
					tb.Set(k, val, uint32(step+1))
				} else {
					parent := uint64(0)
					if i > 0 && rng.IntN(10) != 0 {
						parent = key(c, i-1)
					}
					if viaRef {
						ref, _, found := tb.LookupHashed(k, tb.Hash(k))
						if found {
							t.Fatalf("step %d: Lookup found absent key (%d,%d)", step, c, i)
						}
						tb.InsertAt(ref, k, parent, val, uint32(step+1))
					} else {
						tb.Insert(k, parent, val, uint32(step+1))
					}
				}
				m[k] = val
			}
		case r < 60:
			n := 1 + rng.IntN(64)
			desc = fmt.Sprintf("set chain %d blocks %d+%d val %d", c, b, n, val)
			viaRef := rng.IntN(2) == 0 // Lookup then SetAt, as the index does
			for i := b; i < min(b+n, chainLen); i++ {
				k := key(c, i)
				old, ok := m[k]
				ref, got, found := tb.Lookup(k)
				if found != ok || got != old {
					t.Fatalf("step %d: Lookup(%d,%d) = %d %v, want %d %v", step, c, i, got, found, old, ok)
				}
				if !ok {
					continue
				}
				if viaRef {
					tb.SetAt(ref, k, val, 0)
				} else {
					tb.Set(k, val, 0)
				}
				m[k] = val
			}
		case r < 85:
			n := 1 + rng.IntN(16)
			desc = fmt.Sprintf("delete chain %d blocks %d+%d", c, b, n)
			viaRef := rng.IntN(2) == 0 // Lookup then DeleteAt, as the index does
			for i := b; i < min(b+n, chainLen); i++ {
				_, want := m[key(c, i)]
				if viaRef {
					if ref, _, ok := tb.Lookup(key(c, i)); ok != want {
						t.Fatalf("step %d: Lookup(%d,%d) found %v, want %v", step, c, i, ok, want)
					} else if ok {
						tb.DeleteAt(ref, key(c, i))
					}
				} else if got := tb.Delete(key(c, i)); got != want {
					t.Fatalf("step %d: Delete(%d,%d) = %v, want %v", step, c, i, got, want)
				}
				delete(m, key(c, i))
			}
		default:
			desc = "evict"
			for _, k := range tb.Oldest(rng.Uint64(), 4, 16, nil) {
				if _, ok := m[k]; !ok {
					t.Fatalf("step %d: Oldest returned absent key %x", step, k)
				}
				tb.Delete(k)
				delete(m, k)
			}
		}
		if step%100 == 0 || step == 2999 {
			check(step, desc)
		}
	}
}

// TestRuns checks that the table forms the runs that make Match cheap: a chain stored in
// order is one run, a second holder's copy stored block by block moves the whole chain to
// one new run, and a run longer than MaxRun is cut.
func TestRuns(t *testing.T) {
	tb := New(1)
	const n = 300
	tb.SetCapHint(n)
	for b := range n {
		tb.Insert(key(1, b), key(1, b-1)*uint64(min(b, 1)), 1, 1)
	}
	if tb.Runs() != 1 {
		t.Fatalf("chain stored in order: %d runs, want 1", tb.Runs())
	}
	ch := make([]uint64, n)
	for b := range ch {
		ch[b] = key(1, b)
	}
	if _, _, got, _ := Span(tb, ch[0], ch[1:]); got != n-1 {
		t.Fatalf("Span over the run: %d, want %d", got, n-1)
	}
	for b := range n {
		tb.Set(key(1, b), 2, 2)
	}
	if err := tb.Check(); err != nil {
		t.Fatal(err)
	}
	if tb.Runs() != 1 {
		t.Fatalf("value changed block by block from the head: %d runs, want 1", tb.Runs())
	}
	// A value change in the middle splits the run in three, and Span stops there.
	tb.Set(key(1, 100), 3, 0)
	if tb.Runs() != 3 {
		t.Fatalf("after a change in the middle: %d runs, want 3", tb.Runs())
	}
	if _, _, got, _ := Span(tb, ch[0], ch[1:]); got != 99 {
		t.Fatalf("Span up to the changed block: %d, want 99", got)
	}
	tb.Delete(key(1, 200))
	if tb.Runs() != 4 {
		t.Fatalf("after a delete in the middle: %d runs, want 4", tb.Runs())
	}
	if err := tb.Check(); err != nil {
		t.Fatal(err)
	}
	// Value changes in any order coalesce: random order, then from the end.
	fresh := New(4)
	for b := range n {
		fresh.Insert(key(3, b), key(3, b-1)*uint64(min(b, 1)), 1, 1)
	}
	for _, b := range rand.New(rand.NewPCG(1, 2)).Perm(n) {
		fresh.Set(key(3, b), 2, 0)
	}
	if err := fresh.Check(); err != nil {
		t.Fatal(err)
	}
	if fresh.Runs() != 1 {
		t.Fatalf("values changed in random order: %d runs, want 1", fresh.Runs())
	}
	for b := n - 1; b >= 0; b-- {
		fresh.Set(key(3, b), 3, 0)
	}
	if err := fresh.Check(); err != nil {
		t.Fatal(err)
	}
	if fresh.Runs() != 1 {
		t.Fatalf("values changed from the end: %d runs, want 1", fresh.Runs())
	}
	long := New(2)
	for b := range 3 * MaxRun {
		long.Insert(key(2, b), key(2, b-1)*uint64(min(b, 1)), 1, 1)
	}
	if long.Runs() != 3 {
		t.Fatalf("chain of 3*MaxRun blocks: %d runs, want 3", long.Runs())
	}
	if err := long.Check(); err != nil {
		t.Fatal(err)
	}
	// Eviction takes the end of the oldest run first.
	got := long.Oldest(0, 8, 4, nil)
	if len(got) != 4 || got[0] != key(2, MaxRun-1) && got[0] != key(2, 2*MaxRun-1) && got[0] != key(2, 3*MaxRun-1) {
		t.Fatalf("Oldest = %x, want the last 4 keys of a run", got)
	}
}

// BenchmarkSpan512 walks a 512-block chain held as two runs in a table of 4M keys: the
// cost Match pays per request for its lookups.
//
// Compare two runs:
//
//	go test -run x -bench Span512 -count 6 ./indexer/runtable > new.txt; benchstat old.txt new.txt
func BenchmarkSpan512(b *testing.B) {
	tb := New(3)
	const chains = 4 << 20 / 512
	for c := range chains {
		for i := range 512 {
			tb.SetCapHint(512)
			val := uint32(1)
			if i >= 256 {
				val = 2
			}
			tb.Insert(key(c, i), key(c, i-1)*uint64(min(i, 1)), val, 1)
		}
	}
	reqs := make([][]uint64, 256)
	for r := range reqs {
		c := r * 61 % chains
		for i := range 512 {
			reqs[r] = append(reqs[r], key(c, i))
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		req := reqs[i%len(reqs)]
		for j := 0; j < len(req); {
			_, _, n, ok := Span(tb, req[j], req[j+1:])
			if !ok {
				b.Fatal("missing key")
			}
			j += 1 + n
		}
		i++
	}
}

// TestReserve: after Reserve(n), inserting n keys resizes no shard, and deleting them
// all leaves every shard at the reserved size (the floor); a smaller Reserve is a no-op.
func TestReserve(t *testing.T) {
	const n = 50_000
	tb := New(3)
	tb.Reserve(n)
	tb.Reserve(10)
	sizes := make([]int, numShards)
	for i := range tb.shards {
		sizes[i] = len(tb.shards[i].slots)
	}
	keys := make([]uint64, n)
	for i := range keys {
		keys[i] = uint64(i)*0x9E3779B97F4A7C15 | 1
		tb.Insert(keys[i], 0, 1, 1)
	}
	for i := range tb.shards {
		if len(tb.shards[i].slots) != sizes[i] {
			t.Fatalf("shard %d resized from %d to %d slots with %d keys reserved", i, sizes[i], len(tb.shards[i].slots), n)
		}
	}
	if err := tb.Check(); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !tb.Delete(k) {
			t.Fatalf("Delete(%x) found nothing", k)
		}
	}
	for i := range tb.shards {
		if len(tb.shards[i].slots) != sizes[i] {
			t.Fatalf("empty shard %d shrank from %d to %d slots below its floor", i, sizes[i], len(tb.shards[i].slots))
		}
	}
	if err := tb.Check(); err != nil {
		t.Fatal(err)
	}
}
