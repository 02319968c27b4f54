package kvcache

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestOffloadLRU checks the tier against a plain slice kept in LRU order, over random
// stores and lookups.
func TestOffloadLRU(t *testing.T) {
	const capacity = 8
	o := NewOffload(capacity)
	var model []uint64 // least recently used first
	touch := func(h uint64) {
		i := slices.Index(model, h)
		model = append(slices.Delete(model, i, i+1), h)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for step := range 5000 {
		h := uint64(rng.IntN(20))
		if rng.IntN(3) == 0 {
			hs := []uint64{h, h + 1, h + 2}
			want := 0
			for _, x := range hs {
				if !slices.Contains(model, x) {
					break
				}
				want++
			}
			if got := o.Match(hs); got != want {
				t.Fatalf("step %d: Match(%v) = %d, want %d", step, hs, got, want)
			}
			for _, x := range hs[:want] {
				touch(x)
			}
		} else {
			var wantEv []uint64
			wantAdded := !slices.Contains(model, h)
			if wantAdded {
				if len(model) == capacity {
					wantEv, model = []uint64{model[0]}, model[1:]
				}
				model = append(model, h)
			} else {
				touch(h)
			}
			added, ev := o.Store(h, nil)
			if added != wantAdded || !slices.Equal(ev, wantEv) {
				t.Fatalf("step %d: Store(%d) = %v, %v; want %v, %v", step, h, added, ev, wantAdded, wantEv)
			}
		}
		if got := o.Hashes(nil); !slices.Equal(got, model) || o.Len() != len(model) {
			t.Fatalf("step %d: tier %v (len %d), want %v", step, got, o.Len(), model)
		}
	}
}
