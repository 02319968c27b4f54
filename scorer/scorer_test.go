package scorer_test

import (
	"math/rand/v2"
	"testing"

	"github.com/kvroute/kvroute/scorer"
	"github.com/kvroute/kvroute/scorer/leastinflight"
	"github.com/kvroute/kvroute/scorer/poweroftwo"
	"github.com/kvroute/kvroute/scorer/random"
	"github.com/kvroute/kvroute/scorer/roundrobin"
)

func cands(inflight ...int64) []scorer.Candidate {
	c := make([]scorer.Candidate, len(inflight))
	for i, n := range inflight {
		c[i] = scorer.Candidate{ID: string(rune('a' + i)), InFlight: n}
	}
	return c
}

func picks(s scorer.Selector, c []scorer.Candidate, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = s.Select(&scorer.Request{}, c)
	}
	return out
}

func TestRoundRobinOrder(t *testing.T) {
	s := &roundrobin.Selector{}
	got := picks(s, cands(0, 0, 0), 7)
	want := []int{0, 1, 2, 0, 1, 2, 0}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("picks = %v, want %v", got, want)
		}
	}
	// One candidate left (the others down): always it, and no out-of-range index.
	for _, p := range picks(s, cands(5), 3) {
		if p != 0 {
			t.Fatalf("single candidate: picked %d", p)
		}
	}
}

func TestLeastInflightPicksMinimumAndSpreadsTies(t *testing.T) {
	s := &leastinflight.Selector{Rand: rand.New(rand.NewPCG(1, 2))}
	for _, p := range picks(s, cands(3, 1, 2), 10) {
		if p != 1 {
			t.Fatalf("picked %d, want the least loaded 1", p)
		}
	}
	seen := map[int]int{}
	for _, p := range picks(s, cands(0, 5, 0, 0), 300) {
		seen[p]++
	}
	if seen[1] != 0 || seen[0] < 50 || seen[2] < 50 || seen[3] < 50 {
		t.Errorf("ties not spread evenly over 0, 2, 3: %v", seen)
	}
}

func TestPowerOfTwoNeverPicksTheWorstOfTwo(t *testing.T) {
	s := &poweroftwo.Selector{Rand: rand.New(rand.NewPCG(3, 4))}
	// With 2 candidates both are always drawn, so the less loaded always wins.
	for _, p := range picks(s, cands(9, 1), 20) {
		if p != 1 {
			t.Fatalf("picked %d, want 1", p)
		}
	}
	// The most loaded of 3 can never win: it always loses its pair.
	for _, p := range picks(s, cands(1, 2, 99), 200) {
		if p == 2 {
			t.Fatal("picked the most loaded candidate")
		}
	}
	if p := s.Select(&scorer.Request{}, cands(7)); p != 0 {
		t.Fatalf("single candidate: picked %d", p)
	}
}

func TestRandomCoversAll(t *testing.T) {
	s := &random.Selector{Rand: rand.New(rand.NewPCG(5, 6))}
	seen := map[int]int{}
	for _, p := range picks(s, cands(0, 0, 0, 0), 400) {
		seen[p]++
	}
	for i := 0; i < 4; i++ {
		if seen[i] < 60 {
			t.Errorf("candidate %d picked %d/400 times", i, seen[i])
		}
	}
}

func TestArgMin(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	argMin := func(vals []float64) int { return scorer.ArgMin(len(vals), func(i int) float64 { return vals[i] }, r) }
	if got := argMin([]float64{3, 1, 2}); got != 1 {
		t.Errorf("ArgMin = %d, want 1", got)
	}
	seen := map[int]bool{}
	for i := 0; i < 100; i++ {
		seen[argMin([]float64{1, 5, 1})] = true
	}
	if !seen[0] || !seen[2] || seen[1] {
		t.Errorf("ties: picked %v, want 0 and 2 only", seen)
	}
}

// BenchmarkSelect measures one decision over 64 candidates.
// Compare two runs with benchstat:
//
//	go test -run x -bench Select -count 10 ./scorer > new.txt && benchstat old.txt new.txt
func BenchmarkSelect(b *testing.B) {
	c := make([]scorer.Candidate, 64)
	for i := range c {
		c[i].InFlight = int64(i % 7)
	}
	for _, bc := range []struct {
		name string
		s    scorer.Selector
	}{
		{"round_robin", &roundrobin.Selector{}},
		{"random", &random.Selector{}},
		{"least_inflight", &leastinflight.Selector{}},
		{"power_of_two", &poweroftwo.Selector{}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			req := &scorer.Request{}
			b.ReportAllocs()
			for b.Loop() {
				bc.s.Select(req, c)
			}
		})
	}
}
