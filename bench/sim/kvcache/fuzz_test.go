package kvcache

import (
	"testing"
)

// FuzzPool drives a small pool with a random sequence of requests (admit with prefix
// hits, commit, free) and checks its invariants after every operation against a
// reference count kept by the test: every block is either referenced or in the free
// queue, the free queue has NumFree blocks, each cached copy is findable, and evicted
// hashes were cached.
func FuzzPool(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte{3, 3, 3, 3, 200, 200, 17, 17, 90})
	f.Fuzz(func(t *testing.T, ops []byte) {
		const capacity = 8
		p := New(capacity)
		var live []held
		copies := map[uint64]int{} // the test's own count of cached copies
		for _, op := range ops {
			switch {
			case op < 160 || len(live) == 0: // a request of up to 4 blocks from a chain of 4 families
				n := int(op%4) + 1
				family := uint64(op/4%4) * 100
				hashes := make([]uint64, n)
				for i := range hashes {
					hashes[i] = family + uint64(i)
				}
				hit := p.Match(hashes)
				ids := p.Touch(nil, hashes[:hit])
				ids, ev, err := p.Allocate(ids, n-hit, nil)
				if err != nil {
					p.Free(ids)
					continue
				}
				for _, h := range ev {
					if copies[h] == 0 {
						t.Fatalf("evicted %d that was not cached", h)
					}
					copies[h]--
				}
				for i := hit; i < n; i++ {
					p.Commit(ids[i], hashes[i])
					copies[hashes[i]]++
				}
				live = append(live, held{ids})
			default: // finish a request
				i := int(op) % len(live)
				p.Free(live[i].ids)
				live = append(live[:i], live[i+1:]...)
			}
			check(t, p, live, copies)
		}
	})
}

// held is one running request's blocks.
type held struct{ ids []BlockID }

func check(t *testing.T, p *Pool, live []held, copies map[uint64]int) {
	t.Helper()
	refs := make([]int32, p.Capacity())
	for _, l := range live {
		for _, id := range l.ids {
			refs[id]++
		}
	}
	free := 0
	for id := range p.blocks {
		b := &p.blocks[id]
		if b.ref != refs[id] {
			t.Fatalf("block %d ref %d, want %d", id, b.ref, refs[id])
		}
		if (b.ref == 0) != b.inFree {
			t.Fatalf("block %d ref %d inFree %v", id, b.ref, b.inFree)
		}
		if b.inFree {
			free++
		}
	}
	n := 0
	for id := p.head; id != none; id = p.blocks[id].next {
		n++
	}
	if free != p.NumFree() || n != free {
		t.Fatalf("free %d, NumFree %d, queue length %d", free, p.NumFree(), n)
	}
	total := 0
	for h, c := range copies {
		total += c
		if (c > 0) != p.Has(h) {
			t.Fatalf("hash %d: %d copies, Has %v", h, c, p.Has(h))
		}
	}
	if got := len(p.Hashes(nil)); got != total {
		t.Fatalf("%d cached copies, want %d", got, total)
	}
}
