package workload

import (
	"bytes"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestGeneratorsAreDeterministic(t *testing.T) {
	mt := MultiTurnConfig{Users: 5, Rounds: 3, Groups: 2, System: 40, Question: 8, Output: 4, Think: time.Second, Rate: 2, Seed: 7}
	a, err := MultiTurn(mt)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := MultiTurn(mt)
	if !slices.EqualFunc(a.Requests, b.Requests, func(x, y Request) bool {
		return x.At == y.At && x.Prev == y.Prev && x.MaxTokens == y.MaxTokens && slices.Equal(x.Prompt, y.Prompt)
	}) {
		t.Fatal("same config gave different multi-turn workloads")
	}
	mt.Seed = 8
	c, _ := MultiTurn(mt)
	if slices.Equal(a.Requests[0].Prompt, c.Requests[0].Prompt) {
		t.Fatal("another seed gave the same prompt")
	}
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(a.Requests) != 15 {
		t.Fatalf("got %d requests, want 15", len(a.Requests))
	}
}

func TestMultiTurnHistoryGrows(t *testing.T) {
	w, err := MultiTurn(MultiTurnConfig{Users: 3, Rounds: 4, Groups: 1, System: 32, Question: 8, Output: 4, Think: time.Second, Rate: 100, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	turns := 0
	for i, r := range w.Requests {
		if r.Prev < 0 {
			continue
		}
		turns++
		p := w.Requests[r.Prev]
		if !bytes.Equal(u32bytes(r.Prompt[:len(p.Prompt)]), u32bytes(p.Prompt)) {
			t.Fatalf("request %d does not extend its previous turn %d", i, r.Prev)
		}
		if len(r.Prompt) != len(p.Prompt)+4+8 {
			t.Fatalf("request %d: %d tokens after %d, want +12", i, len(r.Prompt), len(p.Prompt))
		}
		if r.At < p.At {
			t.Fatalf("request %d is due before its previous turn", i)
		}
	}
	if turns != 9 {
		t.Fatalf("%d follow-up turns, want 9", turns)
	}
}

func u32bytes(v []uint32) []byte {
	b := make([]byte, 0, 4*len(v))
	for _, x := range v {
		b = append(b, byte(x), byte(x>>8), byte(x>>16), byte(x>>24))
	}
	return b
}

func TestSharedPrefixGroupsSharePrompt(t *testing.T) {
	w, err := SharedPrefix(SharedPrefixConfig{Groups: 3, Prompts: 4, System: 64, Question: 16, Output: 5, Rate: 10, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	heads := map[string]int{}
	for _, r := range w.Requests {
		heads[string(u32bytes(r.Prompt[:64]))]++
	}
	if len(heads) != 3 {
		t.Fatalf("%d distinct system prompts, want 3", len(heads))
	}
	for _, n := range heads {
		if n != 4 {
			t.Fatalf("a system prompt is shared by %d prompts, want 4", n)
		}
	}
	// 12 prompts of 80 tokens; the 3 first of each group miss, the other 9 hit 64 tokens.
	b := ComputeBounds(w, 16, 0)
	if want := 9.0 * 64 / (12 * 80); b.Infinite != want {
		t.Fatalf("infinite bound %v, want %v", b.Infinite, want)
	}
}

func TestBounds(t *testing.T) {
	p := func(n int, key uint64) []uint32 { return fillTokens(nil, "t", key, n) }
	a, b2, c := p(64, 1), p(64, 2), p(64, 3)
	tests := []struct {
		name          string
		prompts       [][]uint32
		pool          int
		infinite, lru float64
		infCached     []int // per request
		lruCached     []int
	}{
		{"repeat", [][]uint32{a, a}, 8, 63.0 / 128, 63.0 / 128, []int{0, 63}, []int{0, 63}},
		{"distinct", [][]uint32{a, b2}, 8, 0, 0, []int{0, 0}, []int{0, 0}},
		// A pool of 4 blocks holds one prompt: a, b, a evicts a before it returns.
		{"evicted", [][]uint32{a, b2, a}, 4, 63.0 / 192, 0, []int{0, 0, 63}, []int{0, 0, 0}},
		{"kept", [][]uint32{a, b2, c, a}, 16, 63.0 / 256, 63.0 / 256, []int{0, 0, 0, 63}, []int{0, 0, 0, 63}},
		{"partial", [][]uint32{a[:40], a}, 8, 32.0 / 104, 32.0 / 104, []int{0, 32}, []int{0, 32}},
		{"no pool", [][]uint32{a, a}, 0, 63.0 / 128, 0, []int{0, 63}, nil},
	}
	for _, tt := range tests {
		w := &Workload{}
		for _, pr := range tt.prompts {
			w.Requests = append(w.Requests, Request{Prompt: pr, MaxTokens: 1, Prev: -1})
		}
		got := ComputeBounds(w, 16, tt.pool)
		if got.Infinite != tt.infinite || got.PooledLRU != tt.lru {
			t.Errorf("%s: infinite %v pooled %v, want %v %v", tt.name, got.Infinite, got.PooledLRU, tt.infinite, tt.lru)
		}
		if !slices.Equal(got.InfiniteCached, tt.infCached) || !slices.Equal(got.PooledCached, tt.lruCached) {
			t.Errorf("%s: cached per request %v / %v, want %v / %v", tt.name, got.InfiniteCached, got.PooledCached, tt.infCached, tt.lruCached)
		}
	}
}

func TestParseMooncakeSample(t *testing.T) {
	f, err := os.Open("testdata/mooncake_head.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	w, err := ParseMooncake(f, MooncakeConfig{MaxOutput: 200})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Requests) != 300 {
		t.Fatalf("%d requests, want 300", len(w.Requests))
	}
	// Lines 1 and 2 share hash id 0: their first 512 tokens are equal, the next differ.
	r0, r1 := w.Requests[0], w.Requests[1]
	if len(r0.Prompt) != 6758 || r0.MaxTokens != 200 {
		t.Fatalf("first request: %d tokens, max_tokens %d", len(r0.Prompt), r0.MaxTokens)
	}
	if !slices.Equal(r0.Prompt[:512], r1.Prompt[:512]) || slices.Equal(r0.Prompt[512:1024], r1.Prompt[512:1024]) {
		t.Fatal("hash ids are not expanded to equal tokens for equal ids only")
	}
	if err := w.Validate(); err != nil {
		t.Fatal(err)
	}
	b := ComputeBounds(w, 16, 0)
	if b.Infinite <= 0 || b.Infinite >= 1 {
		t.Fatalf("infinite bound %v out of (0,1)", b.Infinite)
	}
}

func TestParseMooncakeErrors(t *testing.T) {
	for _, in := range []string{
		`{"timestamp": 0, "input_length": 1000, "output_length": 5, "hash_ids": [1]}`,
		`{"timestamp": 0, "input_length": 100, "output_length": 5, "hash_ids": [1, 2]}`,
		`{"timestamp": -1, "input_length": 10, "output_length": 5, "hash_ids": [1]}`,
		`{"timestamp": 5, "input_length": 10, "output_length": 5, "hash_ids": [1]}` + "\n" + `{"timestamp": 4, "input_length": 10, "output_length": 5, "hash_ids": [1]}`,
		`{"timestamp": 0,`,
		``,
	} {
		if _, err := ParseMooncake(strings.NewReader(in), MooncakeConfig{}); err == nil {
			t.Errorf("ParseMooncake(%q) accepted", in)
		}
	}
}

// FuzzParseMooncake checks that no input panics and that every accepted workload is valid.
func FuzzParseMooncake(f *testing.F) {
	b, err := os.ReadFile("testdata/mooncake_head.jsonl")
	if err != nil {
		f.Fatal(err)
	}
	lines := strings.SplitAfter(string(b), "\n")
	f.Add(strings.Join(lines[:3], ""))
	f.Add(lines[10])
	f.Add(`{"timestamp": 0, "input_length": 1, "output_length": 0, "hash_ids": [18446744073709551615]}`)
	f.Fuzz(func(t *testing.T, in string) {
		w, err := ParseMooncake(strings.NewReader(in), MooncakeConfig{Limit: 20})
		if err != nil {
			return
		}
		if err := w.Validate(); err != nil {
			t.Fatalf("accepted an invalid workload: %v", err)
		}
	})
}

func TestParseMooncakeSkip(t *testing.T) {
	in := `{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [1]}
{"timestamp": 1000, "input_length": 20, "output_length": 5, "hash_ids": [2]}
{"timestamp": 3000, "input_length": 30, "output_length": 5, "hash_ids": [3]}
{"timestamp": 3500, "input_length": 40, "output_length": 5, "hash_ids": [4]}`
	w, err := ParseMooncake(strings.NewReader(in), MooncakeConfig{Skip: 1, Limit: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.Requests) != 2 || len(w.Requests[0].Prompt) != 20 || len(w.Requests[1].Prompt) != 30 {
		t.Fatalf("got %d requests, want records 2 and 3", len(w.Requests))
	}
	if w.Requests[0].At != 0 || w.Requests[1].At != 2*time.Second {
		t.Fatalf("arrivals %v, %v: want 0 and 2s (counted from the first kept record)", w.Requests[0].At, w.Requests[1].At)
	}
	if _, err := ParseMooncake(strings.NewReader(in), MooncakeConfig{Skip: 4}); err == nil {
		t.Fatal("skipping every record: no error")
	}
}
