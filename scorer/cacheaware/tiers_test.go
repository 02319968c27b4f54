package cacheaware

import (
	"math/rand/v2"
	"testing"

	"github.com/kvroute/kvroute/scorer"
)

// TestTierWeightedOverlap: at equal load a worker holding the prompt's prefix on GPU is
// preferred to one holding it only in CPU memory (CachedBlocks at the CPU weight), which
// is preferred to one holding nothing, in every order of the candidates; the cost counts
// a CPU block at its weight.
func TestTierWeightedOverlap(t *testing.T) {
	o := Defaults()
	o.Rand = rand.New(rand.NewPCG(1, 2))
	s := New(o)
	gpu := scorer.Candidate{ID: "gpu", OverlapBlocks: 32, CachedBlocks: 32, InFlight: 2, ActiveBlocks: 100}
	cpu := scorer.Candidate{ID: "cpu", OverlapBlocks: 32, CachedBlocks: 32 * 0.5, InFlight: 2, ActiveBlocks: 100}
	none := scorer.Candidate{ID: "none", InFlight: 2, ActiveBlocks: 100}
	for _, tc := range []struct {
		cands []scorer.Candidate
		want  string
	}{
		{[]scorer.Candidate{gpu, cpu, none}, "gpu"},
		{[]scorer.Candidate{none, cpu, gpu}, "gpu"},
		{[]scorer.Candidate{cpu, gpu}, "gpu"},
		{[]scorer.Candidate{cpu, none}, "cpu"},
		{[]scorer.Candidate{none, cpu}, "cpu"},
	} {
		for range 20 {
			if got := tc.cands[s.Select(req(1024), tc.cands)]; got.ID != tc.want {
				t.Fatalf("candidates %v: picked %s, want %s", ids(tc.cands), got.ID, tc.want)
			}
		}
	}
	// The cost: 1024 prompt tokens, 32 blocks held on CPU at 0.5 count as 16 cached
	// blocks: uncached 1024-256 = 768 tokens, 48 blocks of prefill at weight 8.
	costs := make([]scorer.Cost, 3)
	s.SelectExplained(req(1024), []scorer.Candidate{gpu, cpu, none}, costs)
	if got, want := costs[1].Prefill, 8*768.0/16; got != want {
		t.Errorf("cpu holder's prefill cost = %v, want %v", got, want)
	}
	if !(costs[0].Total < costs[1].Total && costs[1].Total < costs[2].Total) {
		t.Errorf("costs %+v: want gpu < cpu < none", costs)
	}
	// Without tier information (CachedBlocks 0) the overlap counts as it is.
	plain := cpu
	plain.CachedBlocks = 0
	s.SelectExplained(req(1024), []scorer.Candidate{gpu, plain}, costs[:2])
	if costs[0] != costs[1] {
		t.Errorf("CachedBlocks 0: costs %+v and %+v differ, want OverlapBlocks taken as it is", costs[0], costs[1])
	}
}

func ids(cs []scorer.Candidate) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.ID
	}
	return out
}
