package indexer

import (
	"testing"

	"github.com/kvroute/kvroute/proto"
)

// TestMatchPerTier: Match reports, per worker, how many of its leading blocks sit on
// each tier, for workers holding a prefix on GPU, on GPU and CPU (the CPU copy stored
// token-less, as an offloading connector announces it), on CPU only, and as a
// prediction; with the default weights CPU blocks do not count at all.
func TestMatchPerTier(t *testing.T) {
	qa := doc(1, 8)
	req := chain("", qa)
	wC, wD := proto.WorkerKey{ID: "c"}, proto.WorkerKey{ID: "d"}
	cpuOffload := proto.Event{Kind: proto.BlockStored, BlockHashes: engineHashes(1, qa, 0, 8), Medium: "CPU"}
	feed := func(ix *Index) {
		// a: blocks 0-3 on GPU, all 8 offloaded to CPU (token-less store).
		ix.Apply(wA, "m", batch(stored(1, qa, 0, 8, "GPU", ""), cpuOffload, removed(1, qa, 4, 8, "GPU")))
		// b: all 8 on CPU only.
		ix.Apply(wB, "m", batch(stored(2, qa, 0, 8, "CPU", "")))
		// c: blocks 0-1 on GPU.
		ix.Apply(wC, "m", batch(stored(3, qa, 0, 2, "GPU", "")))
		// d: blocks 0-1 on GPU, the rest predicted.
		ix.Apply(wD, "m", batch(stored(4, qa, 0, 2, "GPU", "")))
		ix.Predict(wD, req, 0)
	}
	type want struct {
		blocks, confirmed int
		score             float64
		tiers             [NumTiers]int32
	}
	for _, tc := range []struct {
		name    string
		weights *[NumTiers]float64
		want    map[string]want
	}{
		{"gpu only (default)", nil, map[string]want{
			"a": {4, 4, 4, [NumTiers]int32{TierGPU: 4}},
			"c": {2, 2, 2, [NumTiers]int32{TierGPU: 2}},
			"d": {8, 2, 8, [NumTiers]int32{TierGPU: 2}},
		}},
		{"cpu 0.5", &[NumTiers]float64{TierGPU: 1, TierCPU: 0.5}, map[string]want{
			"a": {8, 8, 4 + 4*0.5, [NumTiers]int32{TierGPU: 4, TierCPU: 8}},
			"b": {8, 8, 8 * 0.5, [NumTiers]int32{TierCPU: 8}},
			"c": {2, 2, 2, [NumTiers]int32{TierGPU: 2}},
			"d": {8, 2, 8, [NumTiers]int32{TierGPU: 2}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ix, _ := newIndex(t, Options{TierWeights: tc.weights})
			feed(ix)
			got := map[string]want{}
			for _, m := range ix.MatchTiers(req, nil) {
				got[m.Worker.ID] = want{m.Blocks, m.Confirmed, m.Score, m.Tiers}
			}
			for _, m := range ix.Match(req, nil) {
				if m.Tiers != ([NumTiers]int32{}) || got[m.Worker.ID].score != m.Score || got[m.Worker.ID].blocks != m.Blocks {
					t.Errorf("Match %+v differs from MatchTiers %+v beyond leaving Tiers zero", m, got[m.Worker.ID])
				}
			}
			if len(got) != len(tc.want) {
				t.Fatalf("Match = %+v, want %+v", got, tc.want)
			}
			for id, w := range tc.want {
				if got[id] != w {
					t.Errorf("worker %s: got %+v, want %+v", id, got[id], w)
				}
			}
		})
	}
}

func TestTierWeightsOf(t *testing.T) {
	for _, tier := range []Tier{TierGPU, TierCPU, TierDisk, TierOther} {
		if got, ok := TierByName(tier.String()); !ok || got != tier {
			t.Errorf("TierByName(%q) = %v, %v", tier.String(), got, ok)
		}
	}
	if _, ok := TierByName("GPU"); ok {
		t.Error("TierByName accepted an upper-case name (config names are lower case)")
	}
	if got, want := *TierWeightsOf(map[string]float64{"cpu": 0.5, "disk": 0.2, "hbm": 3}), ([NumTiers]float64{1, 0.5, 0.2, 0}); got != want {
		t.Errorf("TierWeightsOf = %v, want %v", got, want)
	}
	if got, want := *TierWeightsOf(nil), ([NumTiers]float64{TierGPU: 1}); got != want {
		t.Errorf("TierWeightsOf(nil) = %v, want %v", got, want)
	}
}

// BenchmarkMatchTiers compares Match with MatchTiers (per-tier counts) on the
// BenchmarkMatch fleet: 64 workers, 512-block requests, 1M blocks; both report process
// CPU time per call (cpu-ns/op), the figure to compare on a shared machine.
//
// Compare two runs:
//
//	go test -run x -bench '^BenchmarkMatchTiers$' -count 6 ./indexer > new.txt; benchstat old.txt new.txt
func BenchmarkMatchTiers(b *testing.B) {
	f := buildFleet(b, 64, 256, 256, 1_000_000)
	for _, bc := range []struct {
		name  string
		match func([]proto.BlockHash, []WorkerMatch) []WorkerMatch
	}{{"match", f.ix.Match}, {"tiers", f.ix.MatchTiers}} {
		b.Run(bc.name, func(b *testing.B) {
			dst := make([]WorkerMatch, 0, 1024)
			b.ReportAllocs()
			i := 0
			cpu0 := cpuTime()
			for b.Loop() {
				dst = bc.match(f.requests[i%len(f.requests)], dst)
				i++
			}
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}
