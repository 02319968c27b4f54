package policies

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/kvroute/kvroute/scorer"
)

func seeded() scorer.Rand { return rand.New(rand.NewPCG(1, 2)) }

func TestSGLang(t *testing.T) {
	p := NewSGLang()
	p.Rand = seeded()
	req := &scorer.Request{Blocks: 10, BlockSize: 16, PromptTokens: 160}
	tests := []struct {
		name  string
		cands []scorer.Candidate
		want  int
	}{
		{"best match above threshold", []scorer.Candidate{{InFlight: 1}, {InFlight: 5, OverlapBlocks: 8}, {InFlight: 0, OverlapBlocks: 2}}, 1},
		{"match below threshold goes to least loaded", []scorer.Candidate{{InFlight: 3, OverlapBlocks: 5}, {InFlight: 1}, {InFlight: 2}}, 1},
		{"imbalance overrides the match", []scorer.Candidate{{InFlight: 40, OverlapBlocks: 10}, {InFlight: 2}, {InFlight: 5}}, 1},
		{"small absolute spread keeps the match", []scorer.Candidate{{InFlight: 30, OverlapBlocks: 10}, {InFlight: 2}}, 0},
	}
	for _, tt := range tests {
		if got := p.Select(req, tt.cands); got != tt.want {
			t.Errorf("%s: picked %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestLLMD(t *testing.T) {
	p := NewLLMD()
	p.Rand = seeded()
	req := &scorer.Request{Blocks: 10, BlockSize: 16, PromptTokens: 160}
	tests := []struct {
		name  string
		cands []scorer.Candidate
		want  int
	}{
		// scores: 3 + 0 + 2*0.9 = 4.8 vs 0 + 2 + 2 = 4.
		{"full match wins over an emptier worker", []scorer.Candidate{
			{OverlapBlocks: 10, Waiting: 2, KVUsage: 0.1, HasMetrics: true},
			{Waiting: 0, KVUsage: 0, HasMetrics: true}}, 0},
		{"half match loses to a long queue difference", []scorer.Candidate{
			{OverlapBlocks: 5, Waiting: 10, KVUsage: 0.9, HasMetrics: true},
			{Waiting: 0, KVUsage: 0, HasMetrics: true}}, 1},
		{"no metrics: prefix only", []scorer.Candidate{{}, {OverlapBlocks: 1}}, 1},
	}
	for _, tt := range tests {
		if got := p.Select(req, tt.cands); got != tt.want {
			t.Errorf("%s: picked %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestDynamo(t *testing.T) {
	p := NewDynamo()
	p.Rand = seeded()
	req := &scorer.Request{Blocks: 10, BlockSize: 16, PromptTokens: 160}
	tests := []struct {
		name  string
		cands []scorer.Candidate
		want  int
	}{
		// costs: 0 + 20 + 10 = 30 vs 10 + 0 + 10 = 20.
		{"cached prefix beats idle", []scorer.Candidate{{ActiveBlocks: 20, OverlapBlocks: 10}, {}}, 1},
		// costs: 0 + 5 + 10 = 15 vs 10 + 0 + 10 = 20.
		{"cached prefix on a lightly loaded worker", []scorer.Candidate{{ActiveBlocks: 5, OverlapBlocks: 10}, {}}, 0},
		{"pending prefill counts", []scorer.Candidate{{PendingPrefillTokens: 1600}, {ActiveBlocks: 50}}, 1},
	}
	for _, tt := range tests {
		if got := p.Select(req, tt.cands); got != tt.want {
			t.Errorf("%s: picked %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestTiesSpread(t *testing.T) {
	cands := make([]scorer.Candidate, 4)
	req := &scorer.Request{PromptTokens: 32, BlockSize: 16, Blocks: 2}
	for _, s := range []scorer.Selector{&SGLang{BalanceAbs: 32, BalanceRel: 1.1, CacheThreshold: 0.5, Rand: seeded()}, &LLMD{PrefixWeight: 3, QueueWeight: 2, KVWeight: 2, Rand: seeded()}, &Dynamo{OverlapWeight: 1, Rand: seeded()}} {
		seen := map[int]bool{}
		for range 200 {
			seen[s.Select(req, cands)] = true
		}
		if len(seen) != 4 {
			t.Errorf("%T: ties went to %d of 4 workers", s, len(seen))
		}
	}
}

// BenchmarkSelect measures one decision of each peer policy over 8 candidates. Compare two
// runs with: go test -run '^$' -bench Select -count 10 ./bench/policies > old.txt (then
// new.txt) and benchstat old.txt new.txt.
func BenchmarkSelect(b *testing.B) {
	cands := make([]scorer.Candidate, 8)
	for i := range cands {
		cands[i] = scorer.Candidate{InFlight: int64(i % 3), OverlapBlocks: i, ActiveBlocks: int64(10 * i), Waiting: float64(i % 2), KVUsage: 0.1 * float64(i), HasMetrics: true}
	}
	req := &scorer.Request{Blocks: 8, BlockSize: 16, PromptTokens: 130}
	for _, s := range []scorer.Selector{NewSGLang(), NewLLMD(), NewDynamo()} {
		b.Run(fmt.Sprintf("%T", s), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = s.Select(req, cands)
			}
		})
	}
}
