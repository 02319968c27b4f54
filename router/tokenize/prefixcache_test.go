package tokenize

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

// turnMarkers are the turn boundaries of each golden model's chat format.
var turnMarkers = map[string][3]string{
	"llama3":           {"<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"},
	"qwen3":            {"<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>\n"},
	"deepseek_v3":      {"<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"},
	"llama2":           {"[INST] ", " [/INST]", "</s>"},
	"llama2_metaspace": {"[INST] ", " [/INST]", "</s>"},
	"llama3_meta":      {"<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"},
	// This Cohere file has no turn tokens; its EOS/EOP stand in.
	"cohere": {"User: ", "<EOS_TOKEN>Chatbot: ", "<EOP_TOKEN>"},
	"gemma3": {"<start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n", "<end_of_turn>\n"},
}

// TestPrefixCacheConversation encodes growing conversations turn by turn and
// checks every result against a cold Encode, and that later turns reuse.
func TestPrefixCacheConversation(t *testing.T) {
	corpus := tokenizetest.ReadJSONL[string](t, "testdata/corpus.jsonl")
	for _, m := range goldenModels {
		t.Run(m, func(t *testing.T) {
			tok := loadModel(t, m)
			pc := NewPrefixCache(tok, 8<<20)
			mk := turnMarkers[m]
			rng := rand.New(rand.NewPCG(1, 2))
			for conv := 0; conv < 20; conv++ {
				var b strings.Builder
				for turn := 0; turn < 6; turn++ {
					b.WriteString(mk[0] + corpus[rng.IntN(len(corpus)-10)] + mk[1])
					prompt := b.String()
					got, reused := pc.EncodeReuse(prompt, true)
					want := tok.Encode(prompt, true)
					if !slices.Equal(got, want) {
						t.Fatalf("conversation %d turn %d: cache gives %v, Encode %v", conv, turn, head(got), head(want))
					}
					// DeepSeek's <｜User｜> and <｜Assistant｜> are normalized tokens,
					// matched inside plain segments, so its first boundary is the
					// first <｜end▁of▁sentence｜>.
					if turn > 1 && reused == 0 {
						t.Errorf("conversation %d turn %d reused nothing", conv, turn)
					}
					b.WriteString(corpus[rng.IntN(len(corpus)-10)] + mk[2])
				}
			}
		})
	}
}

// TestPrefixCacheEdits checks texts that share a prefix ending anywhere, including
// inside a special token, against a cold Encode.
// mixedText joins 8 pieces, each a special token of specials or one of the first 200
// corpus lines, at random.
func mixedText(rng *rand.Rand, specials, corpus []string) string {
	var b strings.Builder
	for k := 0; k < 8; k++ {
		if rng.IntN(2) == 0 {
			b.WriteString(specials[rng.IntN(len(specials))])
		} else {
			b.WriteString(corpus[rng.IntN(200)])
		}
	}
	return b.String()
}

func TestPrefixCacheEdits(t *testing.T) {
	corpus := tokenizetest.ReadJSONL[string](t, "testdata/corpus.jsonl")
	specials := []string{"<|im_start|>", "<|im_end|>", "<|im_sta", "<|endoftext|>", "\n", " ", "<think>", "</think>"}
	tok := loadModel(t, "qwen3")
	pc := NewPrefixCache(tok, 1<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 400; i++ {
		a := mixedText(rng, specials, corpus)
		cut := rng.IntN(len(a) + 1)
		c := a[:cut] + specials[rng.IntN(len(specials))] + corpus[rng.IntN(200)]
		for _, s := range []string{a, c} {
			if got, want := pc.Encode(s, false), tok.Encode(s, false); !slices.Equal(got, want) {
				t.Fatalf("text %q: cache gives %v, Encode %v", s, head(got), head(want))
			}
		}
	}
}

// FuzzPrefixCache checks that encoding b after a through the cache equals a cold
// encode of b.
func FuzzPrefixCache(f *testing.F) {
	f.Add("<|im_start|>user\nhi<|im_end|>\n", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo")
	f.Add("<|im_start|>", "<|im_start|>x")
	f.Add("a<|im_end|>b", "a<|im_end|>")
	tok := loadModel(f, "qwen3")
	f.Fuzz(func(t *testing.T, a, b string) {
		pc := NewPrefixCache(tok, 1<<20)
		pc.Encode(a, false)
		if got, want := pc.Encode(b, true), tok.Encode(b, true); !slices.Equal(got, want) {
			t.Fatalf("after %q, %q: cache gives %v, Encode %v", a, b, got, want)
		}
		// Keyed, as a conversation's turns: b hinted with a, then a+b with both, the
		// ids in shared parts (IDs).
		kc := NewPrefixCache(tok, 1<<20)
		for i, x := range []string{a, b, a + b, b} {
			ids, _ := kc.EncodeKeyedReuse(x, i%2 == 0, []uint64{uint64(i - 1), 0}, uint64(i))
			if want := tok.Encode(x, i%2 == 0); !slices.Equal(ids.Slice(), want) || ids.Len() != len(want) {
				t.Fatalf("keyed %d, %q: cache gives %v, Encode %v", i, x, ids.Slice(), want)
			}
		}
	})
}

// TestConcurrentEncode runs Encode and a shared PrefixCache from several
// goroutines (meaningful under -race) and checks the results against the goldens.
func TestConcurrentEncode(t *testing.T) {
	corpus := tokenizetest.ReadJSONL[string](t, "testdata/corpus.jsonl")
	golden := tokenizetest.ReadJSONL[goldenLine](t, "testdata/golden/qwen3.jsonl")
	tok := loadModel(t, "qwen3")
	pc := NewPrefixCache(tok, 1<<20)
	errs := make(chan string, 4)
	for g := 0; g < 4; g++ {
		go func() {
			for i := g; i < 400; i += 4 {
				if !slices.Equal(tok.Encode(corpus[i], true), golden[i].IDs) {
					errs <- "Encode differs on string " + corpus[i]
					return
				}
				if !slices.Equal(pc.Encode("<|im_start|>"+corpus[i], false), tok.Encode("<|im_start|>"+corpus[i], false)) {
					errs <- "PrefixCache differs on string " + corpus[i]
					return
				}
			}
			errs <- ""
		}()
	}
	for g := 0; g < 4; g++ {
		if e := <-errs; e != "" {
			t.Error(e)
		}
	}
}

// TestPrefixCacheSharedCheckpoints: an entry that extends its chain's newest files only
// its new checkpoints (prefixChain), and the earlier ones stay found after the entries
// that filed them were evicted. Under a budget that holds a few turns, conversations
// interleaved with EncodeReuse and EncodeKeyed keep every result equal to Encode, and
// every checkpoint reference on a live chain whose newest entry has that checkpoint.
// byHash holds no more references than the live entries have checkpoints.
func TestPrefixCacheSharedCheckpoints(t *testing.T) {
	corpus := tokenizetest.ReadJSONL[string](t, "testdata/corpus.jsonl")
	tok := loadModel(t, "qwen3")
	mk := turnMarkers["qwen3"]
	check := func(pc *PrefixCache) {
		t.Helper()
		pc.mu.Lock()
		defer pc.mu.Unlock()
		live := map[*prefixEntry]bool{}
		for _, e := range pc.entries {
			live[e] = true
		}
		cps := 0
		for e := range live {
			cps += len(e.cps)
		}
		for h, ref := range pc.byHash {
			e := ref.c.e
			if e == nil || !live[e] || e.evicted || ref.i >= len(e.cps) || e.cps[ref.i].hash != h {
				t.Fatalf("byHash refers %x to an ended chain or a checkpoint of another hash", h)
			}
		}
		if len(pc.byHash) > cps {
			t.Fatalf("byHash holds %d references for %d checkpoints of live entries", len(pc.byHash), cps)
		}
	}
	rng := rand.New(rand.NewPCG(3, 4))
	pc := NewPrefixCache(tok, 24<<10) // a few turns of the conversations below
	convs := make([]strings.Builder, 3)
	var keys [3]uint64
	reusedAny := false
	for step := range 120 {
		ci := rng.IntN(len(convs))
		b := &convs[ci]
		b.WriteString(mk[0] + corpus[rng.IntN(len(corpus)-10)] + mk[1])
		prompt := b.String()
		var got []uint32
		var reused int
		key := uint64(step + 1)
		if rng.IntN(2) == 0 {
			got, reused = pc.EncodeKeyed(prompt, true, []uint64{keys[ci]}, key)
		} else {
			got, reused = pc.EncodeReuse(prompt, true)
		}
		keys[ci] = key
		if want := tok.Encode(prompt, true); !slices.Equal(got, want) {
			t.Fatalf("step %d: cache gives %v, Encode %v", step, head(got), head(want))
		}
		check(pc)
		b.WriteString(corpus[rng.IntN(len(corpus)-10)] + mk[2])
		if b.Len() > 16<<10 {
			b.Reset()
		}
		if reused > 0 {
			reusedAny = true
		}
	}
	if !reusedAny {
		t.Fatal("no turn reused anything: the budget is too small for the test")
	}

	// One conversation, turn after turn, in a cache of two entries: each turn's store
	// evicts the turn two back, which first filed the early checkpoints; a text that
	// repeats the conversation's first turn must still find them (on the newest entry).
	pc = NewPrefixCache(tok, 1<<20)
	var b strings.Builder
	var first string
	for turn := range 6 {
		b.WriteString(mk[0] + corpus[turn] + mk[1] + corpus[turn+10] + mk[2])
		if turn == 0 {
			first = b.String()
		}
		pc.Encode(b.String(), true)
		pc.mu.Lock()
		for len(pc.entries) > 2 { // down to the two newest, as a tight budget would
			pc.evictOldest()
		}
		pc.mu.Unlock()
		check(pc)
	}
	probe := first + mk[0] + "a new question" + mk[1]
	got, reused := pc.EncodeReuse(probe, true)
	if want := tok.Encode(probe, true); !slices.Equal(got, want) {
		t.Fatalf("probe: cache gives %v, Encode %v", head(got), head(want))
	}
	if reused < len(first)-len(mk[2]) {
		t.Fatalf("probe reused %d bytes, want the first turn's checkpoints (at least %d)", reused, len(first)-len(mk[2]))
	}
}
