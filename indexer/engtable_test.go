package indexer

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/kvroute/kvroute/proto"
)

func TestEngTableAgainstMap(t *testing.T) {
	for _, space := range []uint64{40, 3000, 1 << 50} {
		rng := rand.New(rand.NewPCG(space, 1))
		tb := newEngTable(0)
		ref := map[uint64]proto.BlockHash{}
		for step := range 40000 {
			fp := engFP(proto.EngineHash(rng.Uint64N(space)))
			if rng.IntN(3) < 2 {
				e, ins := tb.upsert(fp)
				if _, had := ref[fp]; had == ins {
					t.Fatalf("step %d: upsert(%x) inserted=%v, map had it %v", step, fp, ins, had)
				}
				if e.fp() != fp {
					t.Fatalf("upsert(%x) returned entry of %x", fp, e.fp())
				}
				e.own = proto.BlockHash(rng.Uint64())
				e.setRef(Tier(rng.IntN(numTiers)), uint8(1+rng.IntN(refMax)))
				ref[fp] = e.own
			} else {
				tb.del(fp)
				delete(ref, fp)
			}
			if tb.len() != len(ref) {
				t.Fatalf("step %d: len %d, want %d", step, tb.len(), len(ref))
			}
			if step%499 == 0 {
				if err := tb.checkRH(); err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
				for fp, v := range ref {
					if e := tb.get(fp); e == nil || e.own != v || e.fp() != fp {
						t.Fatalf("step %d: get(%x) = %v, want own %d", step, fp, e, v)
					}
				}
				var buf [8]engEntry
				for _, e := range tb.sample(rng.Uint64(), buf[:0]) {
					if ref[e.fp()] != e.own {
						t.Fatalf("sample yields %x=%d, map has %d", e.fp(), e.own, ref[e.fp()])
					}
				}
			}
		}
		for fp := range ref {
			tb.del(fp)
		}
		if tb.len() != 0 || len(tb.slots) != engMinCap {
			t.Errorf("drained table: len %d, %d slots", tb.len(), len(tb.slots))
		}
	}
}

func TestEngEntryRefs(t *testing.T) {
	e := engEntry{tag: engFP(7) << 16}
	for tier := Tier(0); tier < numTiers; tier++ {
		e.setRef(tier, uint8(tier)+3)
	}
	for tier := Tier(0); tier < numTiers; tier++ {
		if got := e.ref(tier); got != uint8(tier)+3 {
			t.Errorf("ref(%v) = %d, want %d", tier, got, tier+3)
		}
	}
	if e.fp() != engFP(7) || e.empty() {
		t.Errorf("fingerprint %x (want %x), empty %v", e.fp(), engFP(7), e.empty())
	}
	for tier := Tier(0); tier < numTiers; tier++ {
		e.setRef(tier, 0)
	}
	if !e.empty() || e.fp() != engFP(7) {
		t.Errorf("after clearing refs: empty %v fingerprint %x", e.empty(), e.fp())
	}
}

// checkRH reports a break of Robin Hood order: along a cluster, probe distances grow
// by at most one per slot, and an entry after an empty slot is at its home.
func (t *engTable) checkRH() error {
	for i := range t.slots {
		j := t.inc(uint64(i))
		if t.slots[i].tag != 0 && t.slots[j].tag != 0 && t.dist(j) > t.dist(uint64(i))+1 {
			return fmt.Errorf("rh broken at %d/%d", i, j)
		}
		if t.slots[i].tag == 0 && t.slots[j].tag != 0 && t.dist(j) != 0 {
			return fmt.Errorf("entry at %d after empty has dist %d", j, t.dist(j))
		}
	}
	return nil
}

// TestReserve: Index.Reserve sizes a seen worker's engine table for its share of the
// reported capacity (split over its data-parallel ranks, capped by MaxBlocksPerWorker),
// so filling it never resizes; the size survives a clear and a smaller value never
// shrinks it; unknown workers and non-positive values are ignored.
func TestReserve(t *testing.T) {
	ix, _ := newIndex(t, Options{MaxBlocksPerWorker: 3000})
	ix.Reserve("w", 1000) // not seen yet: ignored
	if len(ix.byKey) != 0 {
		t.Fatalf("Reserve created %d worker states", len(ix.byKey))
	}
	toks := doc(1, 1)
	for _, rank := range []int{0, 1} {
		ix.Apply(proto.WorkerKey{ID: "w", DPRank: rank}, "m", batch(stored(1, toks, 0, 1, "", "")))
	}
	ix.Apply(proto.WorkerKey{ID: "x"}, "m", batch(stored(2, toks, 0, 1, "", "")))
	ix.Reserve("w", 1000)
	ix.Reserve("x", 10_000) // capped at 3000
	ix.Reserve("x", 0)
	ix.Reserve("x", 10) // never shrinks
	want := map[proto.WorkerKey]int{{ID: "w", DPRank: 0}: 500, {ID: "w", DPRank: 1}: 500, {ID: "x"}: 3000}
	for k, n := range want {
		ws := ix.byKey[k]
		if ws.reserved != n {
			t.Fatalf("%v reserved %d, want %d", k, ws.reserved, n)
		}
		size := len(ws.eng.slots)
		if size*engMaxLoadNum < n*engMaxLoadDen {
			t.Fatalf("%v: %d slots cannot hold %d entries at 3/4", k, size, n)
		}
		for i := range n - 1 {
			ws.eng.upsert(engFP(proto.EngineHash(1000 + i)))
		}
		if len(ws.eng.slots) != size {
			t.Fatalf("%v: table resized from %d to %d slots while filling its reservation", k, size, len(ws.eng.slots))
		}
	}
	ix.ClearWorker(proto.WorkerKey{ID: "x"})
	if ws := ix.byKey[proto.WorkerKey{ID: "x"}]; len(ws.eng.slots)*engMaxLoadNum < 3000*engMaxLoadDen || ws.eng.len() != 0 {
		t.Fatalf("after a clear: %d slots, %d entries", len(ws.eng.slots), ws.eng.len())
	}
}
