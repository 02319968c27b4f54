package indexer

import (
	"math/rand/v2"
	"testing"

	"github.com/kvroute/kvroute/proto"
)

func TestEngTableAgainstMap(t *testing.T) {
	for _, space := range []uint64{40, 3000, 1 << 50} {
		rng := rand.New(rand.NewPCG(space, 1))
		tb := newEngTable()
		ref := map[proto.EngineHash]proto.BlockHash{}
		for step := range 40000 {
			k := proto.EngineHash(rng.Uint64N(space))
			if rng.IntN(3) < 2 {
				e, ins := tb.upsert(k)
				if _, had := ref[k]; had == ins {
					t.Fatalf("step %d: upsert(%d) inserted=%v, map had it %v", step, k, ins, had)
				}
				e.own = proto.BlockHash(rng.Uint64())
				ref[k] = e.own
			} else {
				tb.del(k)
				delete(ref, k)
			}
			if tb.len() != len(ref) {
				t.Fatalf("step %d: len %d, want %d", step, tb.len(), len(ref))
			}
			if step%499 == 0 {
				for k, v := range ref {
					if e := tb.get(k); e == nil || e.own != v {
						t.Fatalf("step %d: get(%d) = %v, want own %d", step, k, e, v)
					}
				}
				n := 0
				tb.each(func(k proto.EngineHash, e engEntry) {
					if ref[k] != e.own {
						t.Fatalf("each yields %d=%d, map has %d", k, e.own, ref[k])
					}
					n++
				})
				if n != len(ref) {
					t.Fatalf("each visited %d, want %d", n, len(ref))
				}
				var buf [8]engSlot
				for _, s := range tb.sample(rng.Uint64(), buf[:0]) {
					if ref[s.eh] != s.own {
						t.Fatalf("sample yields %d=%d, map has %d", s.eh, s.own, ref[s.eh])
					}
				}
			}
		}
		for k := range ref {
			tb.del(k)
		}
		if tb.len() != 0 || len(tb.slots) != engMinCap {
			t.Errorf("drained table: len %d, %d slots", tb.len(), len(tb.slots))
		}
	}
}
