package cacheaware

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/kvroute/kvroute/scorer"
)

func req(prompt int) *scorer.Request {
	return &scorer.Request{Model: "m", PromptTokens: prompt, Blocks: prompt / 16, BlockSize: 16}
}

func TestCostBreakdown(t *testing.T) {
	o := Defaults()
	o.OverlapWeight = 1
	s := New(o)
	cands := []scorer.Candidate{
		{ID: "a", OverlapBlocks: 60, PendingPrefillTokens: 0, ActiveBlocks: 100},
		{ID: "b", OverlapBlocks: 0, PendingPrefillTokens: 160, ActiveBlocks: 10, HasMetrics: true, Waiting: 3},
	}
	costs := make([]scorer.Cost, 2)
	got := s.SelectExplained(req(1024), cands, costs)
	// a: uncached 1024-960=64 -> prefill 4; decode 100+64=164 -> 168.
	// b: prefill (0.25*160+1024)/16=66.5 (pending weight 0.25); decode 10+64=74 -> 140.5
	// (waiting weight 0).
	want := []scorer.Cost{{Prefill: 4, Decode: 164, Total: 168}, {Prefill: 66.5, Decode: 74, Total: 140.5}}
	for i := range want {
		if costs[i] != want[i] {
			t.Errorf("cost[%d] = %+v, want %+v", i, costs[i], want[i])
		}
	}
	if got != 1 {
		t.Errorf("picked %d, want the cheaper b", got)
	}
}

func TestLoadGuardSkipsOverloadedHolder(t *testing.T) {
	s := New(Defaults())
	// a holds the whole prompt. Its in-flight count after taking the request must stay
	// within 1.5 * ((total+1)/3 + 1).
	cases := []struct {
		a, b, c int64
		holder  bool // whether a may be picked
	}{
		{10, 0, 0, false}, // 11 > 1.5*(11/3+1) = 7
		{4, 1, 1, true},   // 5 <= 1.5*(7/3+1) = 5
		{5, 1, 1, false},  // 6 > 1.5*(8/3+1) = 5.5
		{3, 1, 1, true},   // 4 <= 1.5*(6/3+1) = 4.5
		{1, 0, 0, true},   // low load: 2 <= 1.5*(2/3+1) = 2.5, affinity kept
		{0, 0, 0, true},
	}
	for _, c := range cases {
		cands := []scorer.Candidate{{ID: "a", OverlapBlocks: 64, InFlight: c.a}, {ID: "b", InFlight: c.b}, {ID: "c", InFlight: c.c}}
		got := s.Select(req(1024), cands)
		if (got == 0) != c.holder {
			t.Errorf("in flight %d/%d/%d: picked %d, want holder=%v", c.a, c.b, c.c, got, c.holder)
		}
	}
	o := Defaults()
	o.MaxImbalance = 0
	cands := []scorer.Candidate{{ID: "a", OverlapBlocks: 64, InFlight: 10}, {ID: "b"}, {ID: "c"}}
	if got := New(o).Select(req(1024), cands); got != 0 {
		t.Errorf("guard disabled: picked %d, want the holder", got)
	}
}

func TestPrefersOverlapAtEqualLoad(t *testing.T) {
	s := New(Defaults())
	cands := []scorer.Candidate{{ID: "a"}, {ID: "b", OverlapBlocks: 32}, {ID: "c", OverlapBlocks: 8}}
	for i := 0; i < 20; i++ {
		if got := s.Select(req(1024), cands); got != 1 {
			t.Fatalf("picked %d, want b with the longest overlap", got)
		}
	}
}

// A burst of requests sharing a prefix held by one worker: as the router's own
// bookkeeping loads that worker, later requests go elsewhere rather than piling on.
func TestBurstSpreadsOnceHolderIsLoaded(t *testing.T) {
	s := New(Defaults())
	cands := make([]scorer.Candidate, 4)
	for i := range cands {
		cands[i].ID = fmt.Sprint("w", i)
	}
	const prompt = 2048 // 128 blocks, the first 120 shared
	counts := map[int]int{}
	for n := 0; n < 40; n++ {
		i := s.Select(req(prompt), cands)
		counts[i]++
		// What the router does after a decision: the chosen worker now holds the prefix
		// (predicted) and carries the request's prefill and blocks until it finishes.
		cands[i].OverlapBlocks = 120
		cands[i].PendingPrefillTokens += int64(prompt - 120*16)
		cands[i].ActiveBlocks += prompt / 16
	}
	for i := range cands {
		if counts[i] == 0 || counts[i] > 20 {
			t.Errorf("distribution %v: every worker should share the burst, none above 2x the mean", counts)
			break
		}
	}
}

func TestSessionStickinessWithoutOverlap(t *testing.T) {
	s := New(Defaults())
	cands := []scorer.Candidate{{ID: "a"}, {ID: "b"}, {ID: "c"}, {ID: "d"}}
	seen := map[int]bool{}
	for u := 0; u < 40; u++ {
		r := req(256)
		r.SessionKey = fmt.Sprint("user-", u)
		first := s.Select(r, cands)
		for k := 0; k < 5; k++ {
			if got := s.Select(r, cands); got != first {
				t.Fatalf("session %s moved from %d to %d", r.SessionKey, first, got)
			}
		}
		seen[first] = true
	}
	if len(seen) < 3 {
		t.Errorf("40 sessions landed on only %d workers", len(seen))
	}
	// A loaded sticky worker is left when it costs more than the slack.
	r := req(256)
	r.SessionKey = "user-0"
	sticky := s.Select(r, cands)
	cands[sticky].ActiveBlocks = 1000
	if got := s.Select(r, cands); got == sticky {
		t.Error("stayed on a sticky worker 1000 blocks more expensive")
	}
}

func TestTemperatureSamplesByCost(t *testing.T) {
	o := Defaults()
	o.Temperature = 4
	o.Rand = rand.New(rand.NewPCG(1, 1))
	s := New(o)
	cands := []scorer.Candidate{{ID: "a", ActiveBlocks: 0}, {ID: "b", ActiveBlocks: 4}, {ID: "c", ActiveBlocks: 40}}
	counts := make([]int, 3)
	for i := 0; i < 3000; i++ {
		counts[s.Select(req(160), cands)]++
	}
	// exp(0)=1, exp(-1)=0.37, exp(-10)~0: about 73%, 27%, 0%.
	if counts[0] < 1900 || counts[1] < 600 || counts[2] > 10 {
		t.Errorf("counts %v, want about 2190/810/0", counts)
	}
}

func TestTiesBreakAtRandom(t *testing.T) {
	o := Defaults()
	o.Rand = rand.New(rand.NewPCG(2, 2))
	s := New(o)
	cands := []scorer.Candidate{{ID: "a"}, {ID: "b"}, {ID: "c"}}
	seen := map[int]int{}
	for i := 0; i < 300; i++ {
		seen[s.Select(req(64), cands)]++
	}
	if seen[0] < 60 || seen[1] < 60 || seen[2] < 60 {
		t.Errorf("ties %v", seen)
	}
}

// BenchmarkSelect is one decision over 64 candidates.
// Compare two runs with benchstat:
//
//	go test -run x -bench . -count 10 ./scorer/cacheaware > new.txt && benchstat old.txt new.txt
func BenchmarkSelect(b *testing.B) {
	s := New(Defaults())
	cands := make([]scorer.Candidate, 64)
	for i := range cands {
		cands[i] = scorer.Candidate{ID: fmt.Sprint(i), OverlapBlocks: i % 9, PendingPrefillTokens: int64(i * 100), ActiveBlocks: int64(i * 7)}
	}
	r := req(4096)
	costs := make([]scorer.Cost, len(cands))
	b.ReportAllocs()
	for b.Loop() {
		s.SelectExplained(r, cands, costs)
	}
}

func TestAffinityCountsHistoryAtItsWeight(t *testing.T) {
	o := Defaults()
	o.OverlapWeight, o.AffinityWeight = 1, 0.5
	s := New(o)
	// a was sent the first 48 blocks and still holds 16 of them; b holds 16, no history.
	cands := []scorer.Candidate{
		{ID: "a", OverlapBlocks: 16, AffinityBlocks: 48, ActiveBlocks: 20},
		{ID: "b", OverlapBlocks: 16},
	}
	costs := make([]scorer.Cost, 2)
	got := s.SelectExplained(req(1024), cands, costs)
	// a: held 16 + 0.5*32 = 32 blocks -> prefill (1024-512)/16 = 32; decode 20+64 -> 116.
	// b: prefill (1024-256)/16 = 48; decode 64 -> 112.
	want := []scorer.Cost{{Prefill: 32, Decode: 84, Total: 116}, {Prefill: 48, Decode: 64, Total: 112}}
	for i := range want {
		if costs[i] != want[i] {
			t.Errorf("cost[%d] = %+v, want %+v", i, costs[i], want[i])
		}
	}
	if got != 1 {
		t.Errorf("picked %d, want b (a's history is worth less than its extra load)", got)
	}
	cands[0].ActiveBlocks = 10 // a: 106 < b: 112
	if got := s.Select(req(1024), cands); got != 0 {
		t.Errorf("picked %d, want a, the worker the conversation was routed to", got)
	}
	o.AffinityWeight = 0
	if got := New(o).Select(req(1024), cands); got != 1 {
		t.Errorf("affinity off: picked %d, want the less loaded b", got)
	}
	// History shorter than the overlap (or absent) changes nothing.
	cands = []scorer.Candidate{{ID: "a", OverlapBlocks: 32, AffinityBlocks: 0}, {ID: "b", OverlapBlocks: 16, AffinityBlocks: 16}}
	s.SelectExplained(req(1024), cands, costs)
	if costs[0].Prefill != 32 || costs[1].Prefill != 48 {
		t.Errorf("costs %+v: history at or below the overlap must not count", costs)
	}
}

func TestPendingWeightKeepsPrefixHome(t *testing.T) {
	o := Defaults()
	o.OverlapWeight, o.MaxImbalance, o.PendingWeight = 1, 0, 1
	// a holds 48 of the prompt's 64 blocks but has 1024 tokens of prefill queued; b is
	// idle and holds nothing.
	cands := []scorer.Candidate{
		{ID: "a", OverlapBlocks: 48, PendingPrefillTokens: 1024},
		{ID: "b"},
	}
	costs := make([]scorer.Cost, 2)
	// Weight 1: a costs (1024+256)/16 = 80 + 64 decode = 144; b 64 + 64 = 128.
	if got := New(o).SelectExplained(req(1024), cands, costs); got != 1 || costs[0].Prefill != 80 {
		t.Errorf("pending weight 1: picked %d with costs %+v, want b and a's prefill 80", got, costs)
	}
	// Weight 0.25: a costs (256+256)/16 = 32 + 64 = 96 < 128.
	o.PendingWeight = 0.25
	if got := New(o).SelectExplained(req(1024), cands, costs); got != 0 || costs[0].Prefill != 32 {
		t.Errorf("pending weight 0.25: picked %d with costs %+v, want a and its prefill 32", got, costs)
	}
}
