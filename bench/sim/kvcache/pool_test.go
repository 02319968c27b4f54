package kvcache

import (
	"errors"
	"slices"
	"testing"
)

func TestPrefixHitAndLRUEviction(t *testing.T) {
	p := New(4)
	// Request A: two full blocks, committed then freed (cached, evictable).
	a, ev, err := p.Allocate(nil, 2, nil)
	if err != nil || len(ev) != 0 {
		t.Fatalf("allocate: %v %v", err, ev)
	}
	p.Commit(a[0], 10)
	p.Commit(a[1], 11)
	p.Free(a)
	if got := p.Match([]uint64{10, 11, 12}); got != 2 {
		t.Fatalf("match = %d, want 2", got)
	}
	if got := p.Match([]uint64{11}); got != 1 {
		t.Fatalf("match of a non-leading hash alone = %d, want 1 (pool is hash-keyed)", got)
	}
	if p.NumFree() != 4 || p.Usage() != 0 {
		t.Fatalf("free=%d usage=%v", p.NumFree(), p.Usage())
	}

	// Request B pins block 10 through a hit, and allocates 3 more: the two never-used
	// blocks go first, then the LRU cached block: 11 (freed before 10, since Free runs in
	// reverse order, 11 went to the queue first).
	pinned := p.Touch(nil, []uint64{10})
	got, ev, err := p.Allocate(nil, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ev, []uint64{11}) {
		t.Fatalf("evicted %v, want [11]", ev)
	}
	if p.Has(11) || !p.Has(10) {
		t.Fatal("11 must be evicted and 10 kept")
	}
	// Pool full and 10 is pinned: nothing left to allocate.
	if _, _, err := p.Allocate(nil, 1, nil); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("allocate on a full pool: %v", err)
	}
	p.Free(got)
	p.Free(pinned)
	if p.NumFree() != 4 {
		t.Fatalf("free = %d", p.NumFree())
	}
	// Now 10 is evictable again and is the most recently freed: three allocations evict
	// nothing cached, the fourth evicts 10.
	_, ev, _ = p.Allocate(nil, 3, nil)
	if len(ev) != 0 {
		t.Fatalf("evicted %v early", ev)
	}
	_, ev, _ = p.Allocate(nil, 1, nil)
	if !slices.Equal(ev, []uint64{10}) {
		t.Fatalf("evicted %v, want [10]", ev)
	}
}

func TestDuplicateCommitsAndReset(t *testing.T) {
	p := New(3)
	ids, _, _ := p.Allocate(nil, 2, nil)
	p.Commit(ids[0], 7)
	p.Commit(ids[1], 7)
	p.Commit(ids[1], 8) // already hashed: no-op
	if got := p.Hashes(nil); !slices.Equal(got, []uint64{7, 7}) {
		t.Fatalf("hashes %v", got)
	}
	p.Free(ids)
	ev := p.Reset(nil)
	if len(ev) != 2 || p.NumCached() != 0 || p.Has(7) {
		t.Fatalf("reset evicted %v, cached %d", ev, p.NumCached())
	}
	// After reset, allocation reports no evictions.
	_, ev, _ = p.Allocate(nil, 3, nil)
	if len(ev) != 0 {
		t.Fatalf("evicted %v after reset", ev)
	}
}

// BenchmarkAdmitFree measures one request's cache work: match a 64-block prompt of which
// half is cached, pin the hits, allocate and commit the rest (evicting), free all.
//
//	go test -run '^$' -bench AdmitFree -count 10 ./bench/sim/kvcache | tee new.txt
//	benchstat old.txt new.txt
func BenchmarkAdmitFree(b *testing.B) {
	b.ReportAllocs()
	p := New(4096)
	hashes := make([]uint64, 64)
	var ids []BlockID
	var ev []uint64
	for i := 0; b.Loop(); i++ {
		for j := range hashes {
			if j < 32 {
				hashes[j] = uint64(j) // shared prefix
			} else {
				hashes[j] = uint64(i)<<8 | uint64(j)
			}
		}
		hit := p.Match(hashes)
		ids = p.Touch(ids[:0], hashes[:hit])
		var err error
		ids, ev, err = p.Allocate(ids, len(hashes)-hit, ev[:0])
		if err != nil {
			b.Fatal(err)
		}
		for j := hit; j < len(hashes); j++ {
			p.Commit(ids[j], hashes[j])
		}
		p.Free(ids)
	}
}

func TestDuplicateEviction(t *testing.T) {
	p := New(3)
	ids, _, _ := p.Allocate(nil, 3, nil)
	p.Commit(ids[0], 5)
	p.Commit(ids[1], 5)
	p.Commit(ids[2], 5)
	p.Free(ids) // free order: ids[2], ids[1], ids[0]
	var all []uint64
	for range 3 {
		var ev []uint64
		_, ev, _ = p.Allocate(nil, 1, nil)
		all = append(all, ev...)
		if got := len(p.Hashes(nil)); got != 3-len(all) {
			t.Fatalf("%d copies cached after %d evictions", got, len(all))
		}
	}
	if !slices.Equal(all, []uint64{5, 5, 5}) || p.Has(5) {
		t.Fatalf("evicted %v, has %v", all, p.Has(5))
	}
}
