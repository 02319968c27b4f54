package tokenize

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestIDs checks IDs' operations against the flat slice they stand for, on random
// parts (some empty), heads and joins of heads, as PrefixCache builds them.
func TestIDs(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	next := uint32(0)
	part := func() []uint32 {
		p := make([]uint32, rng.IntN(6))
		for i := range p {
			next++
			p[i] = next
		}
		return p
	}
	var s IDs
	var flat []uint32
	for step := range 2000 {
		switch rng.IntN(4) {
		case 0: // a head of it
			n := rng.IntN(s.Len() + 1)
			s, flat = s.head(n), flat[:n:n]
		case 1: // start over from one part
			p := part()
			s, flat = MakeIDs(p), slices.Clone(p)
		default: // join: pre, s, last
			pre, last := part(), part()
			s = join(pre, s, last)
			flat = slices.Concat(pre, flat, last)
		}
		if len(s.parts) > 3*maxIDParts { // as encodeRest copies long heads
			s, flat = MakeIDs(s.Slice()), slices.Clone(flat)
		}
		if s.Len() != len(flat) || !slices.Equal(s.Slice(), flat) || !slices.Equal(s.AppendTo([]uint32{7}), append([]uint32{7}, flat...)) {
			t.Fatalf("step %d: %v (len %d), want %v", step, s.Slice(), s.Len(), flat)
		}
		for _, p := range s.parts {
			if len(p) == 0 {
				t.Fatalf("step %d: an empty part among %d", step, len(s.parts))
			}
		}
		for i := 0; i <= len(flat)+1; i++ {
			got := s.Tail(i, nil)
			if want := flat[min(i, len(flat)):]; !slices.Equal(got, want) {
				t.Fatalf("step %d: Tail(%d) = %v, want %v", step, i, got, want)
			}
		}
	}
}
