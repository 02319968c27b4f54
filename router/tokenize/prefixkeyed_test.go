package tokenize

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

// TestEncodeKeyedConversation encodes growing conversations turn by turn, each turn
// hinted with the previous one's key, checks every result against a cold Encode, and
// that later turns reuse the earlier ones.
func TestEncodeKeyedConversation(t *testing.T) {
	corpus := tokenizetest.ReadJSONL[string](t, "testdata/corpus.jsonl")
	for _, m := range goldenModels {
		t.Run(m, func(t *testing.T) {
			tok := loadModel(t, m)
			pc := NewPrefixCache(tok, 8<<20)
			mk := turnMarkers[m]
			rng := rand.New(rand.NewPCG(5, 6))
			for conv := uint64(0); conv < 20; conv++ {
				var b strings.Builder
				turns := uint64(6)
				if conv == 0 { // longer than maxIDParts: its ids are copied into one part now and then
					turns = 3 * maxIDParts / 2
				}
				for turn := uint64(0); turn < turns; turn++ {
					b.WriteString(mk[0] + corpus[rng.IntN(len(corpus)-10)] + mk[1])
					prompt := b.String()
					key := conv<<8 | turn
					got, reused := pc.EncodeKeyed(prompt, true, []uint64{key - 1}, key)
					if want := tok.Encode(prompt, true); !slices.Equal(got, want) {
						t.Fatalf("conversation %d turn %d: cache gives %v, Encode %v", conv, turn, head(got), head(want))
					}
					if turn > 1 && reused == 0 && tok.prefixSafe {
						t.Errorf("conversation %d turn %d reused nothing", conv, turn)
					}
					b.WriteString(corpus[rng.IntN(len(corpus)-10)] + mk[2])
				}
				// Without a hint, the checkpoints filed by the keyed turns (their hashes
				// chained from where each turn resumed) are found by their hashes from
				// the text's start.
				next := b.String() + mk[0] + corpus[rng.IntN(len(corpus)-10)]
				got, reused := pc.EncodeReuse(next, true)
				if want := tok.Encode(next, true); !slices.Equal(got, want) {
					t.Fatalf("conversation %d unhinted: cache gives %v, Encode %v", conv, head(got), head(want))
				}
				if tok.prefixSafe && reused < len(b.String())/2 {
					t.Errorf("conversation %d unhinted: reused %d of %d bytes", conv, reused, len(b.String()))
				}
			}
		})
	}
}

// TestEncodeKeyedEdits hints texts with cached texts they share a prefix of any
// length with, ending anywhere (inside a special token, inside a run of newlines
// that Gemma-3 has added tokens for, at the very end of the cached text), and with
// hints that share nothing, and checks each against a cold Encode.
func TestEncodeKeyedEdits(t *testing.T) {
	corpus := tokenizetest.ReadJSONL[string](t, "testdata/corpus.jsonl")
	pieces := map[string][]string{
		"qwen3":       {"<|im_start|>", "<|im_end|>", "<|im_sta", "<|endoftext|>", "\n", " ", "<think>", "</think>", "<tool_call>"},
		"gemma3":      {"<start_of_turn>", "<end_of_turn>", "\n", "\n\n", "\n\n\n", " ", "<start_of", "<bos>"},
		"deepseek_v3": {"<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>", "<｜tool▁call▁begin｜>", "<｜tool▁calls▁begin｜>", "\n", " "},
		"llama3":      {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "\n\n", " ", "<|reserved_special_token_1|>", "<|reserved_special_token_10|>"},
	}
	for m, specials := range pieces {
		t.Run(m, func(t *testing.T) {
			tok := loadModel(t, m)
			pc := NewPrefixCache(tok, 1<<20)
			rng := rand.New(rand.NewPCG(7, 8))
			for i := uint64(0); i < 300; i++ {
				a := mixedText(rng, specials, corpus)
				cut := len(a)
				if rng.IntN(3) > 0 {
					cut = rng.IntN(len(a) + 1)
				}
				c := a[:cut] + specials[rng.IntN(len(specials))] + corpus[rng.IntN(200)]
				if rng.IntN(4) == 0 {
					c = a[:cut] // a prefix of the cached text
				}
				add := rng.IntN(2) == 0
				ka, kc := 2*i+1000, 2*i+1001
				for _, x := range []struct {
					s     string
					hints []uint64
					key   uint64
				}{{a, []uint64{ka - 2, 7}, ka}, {c, []uint64{999, ka}, kc}, {a, []uint64{kc}, ka}} {
					got, _ := pc.EncodeKeyed(x.s, add, x.hints, x.key)
					if want := tok.Encode(x.s, add); !slices.Equal(got, want) {
						t.Fatalf("text %q: cache gives %v, Encode %v", x.s, head(got), head(want))
					}
				}
			}
		})
	}
}
