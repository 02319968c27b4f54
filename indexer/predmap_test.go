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
