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
		tb := newEngTable()
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
