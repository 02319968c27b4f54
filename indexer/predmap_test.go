package indexer

import (
	"maps"
	"math/rand/v2"
	"testing"

	"github.com/kvroute/kvroute/proto"
)

// TestPredMap checks predMap against a plain map through random sets, refreshes by
// ref and deletions, including emptying it, on keys that collide in the table (a few
// hundred blocks, and blocks equal modulo 2^32, whose Fibonacci homes are close).
func TestPredMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var p predMap
	want := map[proto.BlockHash]int64{}
	for i := range 20000 {
		h := proto.BlockHash(rng.IntN(150))
		if rng.IntN(2) == 0 {
			h = proto.BlockHash(uint64(rng.IntN(150)) << 32)
		}
		switch rng.IntN(4) {
		case 0:
			if p.del(h) != (want[h] != 0) {
				t.Fatalf("step %d: del(%d) disagrees", i, h)
			}
			delete(want, h)
		case 1:
			if r := p.ref(h); r != nil {
				*r = int64(i + 1)
				want[h] = int64(i + 1)
			} else if want[h] != 0 {
				t.Fatalf("step %d: ref(%d) nil", i, h)
			}
		default:
			p.set(h, int64(i+1))
			want[h] = int64(i + 1)
		}
		if i%1000 == 999 && i < 19000 { // empty it now and then
			for h := range want {
				p.del(h)
			}
			clear(want)
		}
		if p.len() != len(want) {
			t.Fatalf("step %d: len %d, want %d", i, p.len(), len(want))
		}
	}
	got := maps.Collect(p.all())
	if !maps.Equal(got, want) {
		t.Fatalf("all() %v, want %v", got, want)
	}
	for h, e := range want {
		if x, ok := p.get(h); !ok || x != e {
			t.Fatalf("get(%d) = %d %v, want %d", h, x, ok, e)
		}
	}
	if len(p.slots) > 4*300 || p.bytes() <= 0 {
		t.Fatalf("table of %d slots for at most 300 blocks; bytes %d", len(p.slots), p.bytes())
	}
}

// TestPredMapShrinks fills a table past minPredShrink and empties it: it shrinks as it
// thins out, down to minPredShrink slots, keeps every remaining entry, and is kept,
// empty and usable, when the last one goes.
func TestPredMapShrinks(t *testing.T) {
	var p predMap
	const n = 5000
	for i := range n {
		p.set(proto.BlockHash(uint64(i)*0x9e3779b97f4a7c15), int64(i+1))
	}
	full := len(p.slots)
	for i := 100; i < n; i++ {
		if !p.del(proto.BlockHash(uint64(i) * 0x9e3779b97f4a7c15)) {
			t.Fatalf("del %d: not there", i)
		}
	}
	if len(p.slots) >= full/4 || len(p.slots) > minPredShrink {
		t.Fatalf("%d slots for %d entries (%d when full)", len(p.slots), p.len(), full)
	}
	for i := range 100 {
		if e, ok := p.get(proto.BlockHash(uint64(i) * 0x9e3779b97f4a7c15)); !ok || e != int64(i+1) {
			t.Fatalf("entry %d after the shrink: %d %v", i, e, ok)
		}
	}
	for i := range 100 {
		p.del(proto.BlockHash(uint64(i) * 0x9e3779b97f4a7c15))
	}
	if p.len() != 0 || len(p.slots) == 0 || p.bytes() > 16*minPredShrink {
		t.Fatalf("emptied: %d entries, %d slots", p.len(), len(p.slots))
	}
	p.set(1, 1)
	if e, ok := p.get(1); !ok || e != 1 {
		t.Fatalf("reused table: %d %v", e, ok)
	}
}
