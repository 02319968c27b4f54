package blockhash

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/router/tokenize/chat"
	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

// TestLocalIncrementalHashes plays interleaved random conversations (answers and
// questions, tool rounds, edits of an earlier message, new system prompts, other
// options, repeats) through the local mode with the conversation caches on, as
// chat.Load sets them, and checks every turn's block hashes and token count against
// the local mode with the caches off (parse, render and encode of the whole
// conversation), for each template the repository has goldens for.
func TestLocalIncrementalHashes(t *testing.T) {
	texts := []string{"Hello there!", "Sure:\n\n1. one\n2. two", "你好 🤗", "  spaced  \n\n\n", "<think>\nhmm\n</think>\n\nFour.",
		"<|im_end|> look-alike", "It's 12:30.", words(7, 40), words(9, 120)}
	for _, m := range []string{"qwen3", "llama3", "deepseek_v3", "gemma3"} {
		t.Run(m, func(t *testing.T) {
			inc, err := chat.Load(tokenizetest.ModelDir(t, m))
			if err != nil {
				t.Fatal(err)
			}
			full := NewLocal(chat.NewEncoder(inc.Tokenizer(), inc.Config(), 0))
			incl := NewLocal(inc)
			rng := rand.New(rand.NewPCG(21, uint64(len(m))))
			text := func() string { return texts[rng.IntN(len(texts))] + fmt.Sprint(rng.IntN(1000)) }
			convs := make([][]map[string]any, 5)
			var compared int
			for step := range 200 {
				c := rng.IntN(len(convs))
				msgs := convs[c]
				opts := Options{}
				switch r := rng.IntN(16); {
				case r == 0 && len(msgs) > 2: // edit an earlier message
					i := rng.IntN(len(msgs) - 1)
					e := map[string]any{}
					for k, v := range msgs[i] {
						e[k] = v
					}
					e["content"] = text()
					msgs[i] = e
				case r == 1: // a new system prompt
					sys := map[string]any{"role": "system", "content": "You are " + text()}
					if len(msgs) > 0 && msgs[0]["role"] == "system" {
						msgs[0] = sys
					} else {
						msgs = append([]map[string]any{sys}, msgs...)
					}
				case r == 2:
					opts.AddGenerationPrompt = []byte("false")
					opts.ChatTemplateKwargs = []byte(`{"enable_thinking": false}`)
				case r < 5 && m != "gemma3" && len(msgs) > 0 && msgs[len(msgs)-1]["role"] == "user": // a tool round
					opts.Tools = []byte(`[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]`)
					msgs = append(msgs, map[string]any{"role": "assistant", "content": nil, "tool_calls": []any{map[string]any{
						"id": "c1", "type": "function", "function": map[string]any{"name": "get_weather", "arguments": `{"city": "Paris"}`}}}},
						map[string]any{"role": "tool", "tool_call_id": "c1", "content": text()},
						map[string]any{"role": "assistant", "content": text()}, map[string]any{"role": "user", "content": text()})
				default:
					if len(msgs) > 0 && msgs[len(msgs)-1]["role"] == "user" {
						msgs = append(msgs, map[string]any{"role": "assistant", "content": text()})
					}
					msgs = append(msgs, map[string]any{"role": "user", "content": text()})
				}
				convs[c] = msgs
				raw, err := json.Marshal(msgs)
				if err != nil {
					t.Fatal(err)
				}
				// Block size and cache salt change now and then: block hashes kept for a
				// result (Memo) are reused only for the same chain.
				req := &Request{Model: "m", BlockSize: 4, Messages: raw, Options: opts}
				switch rng.IntN(10) {
				case 0:
					req.BlockSize = 16
				case 1:
					req.CacheSalt = "s"
				}
				if rng.IntN(2) == 0 {
					body := map[string]any{"model": "m", "messages": json.RawMessage(raw)}
					for k, v := range map[string]json.RawMessage{"add_generation_prompt": opts.AddGenerationPrompt,
						"chat_template_kwargs": opts.ChatTemplateKwargs, "tools": opts.Tools} {
						if v != nil {
							body[k] = v
						}
					}
					if req.Body, err = json.Marshal(body); err != nil {
						t.Fatal(err)
					}
				}
				want, werr := full.Hash(t.Context(), req, nil)
				got, gerr := incl.Hash(t.Context(), req, nil)
				if (werr == nil) != (gerr == nil) {
					t.Fatalf("step %d: full error %v, incremental error %v", step, werr, gerr)
				}
				if werr != nil {
					continue
				}
				compared++
				if got.Tokens != want.Tokens || got.Exact != want.Exact || got.Truncated != want.Truncated || !slices.Equal(got.Hashes, want.Hashes) {
					t.Fatalf("step %d: incremental %d tokens %d hashes, full %d tokens %d hashes (first difference at block %d)\nmessages %s",
						step, got.Tokens, len(got.Hashes), want.Tokens, len(want.Hashes), firstDiff(got.Hashes, want.Hashes), raw)
				}
			}
			if compared < 150 {
				t.Fatalf("only %d of 200 turns hashed", compared)
			}
			if st := inc.CacheStats(); st.MessageHits == 0 {
				t.Fatalf("the message cache was never hit: %+v", st)
			}
		})
	}
}

func firstDiff[T comparable](a, b []T) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestLocalParts: with kvroute's tokenizer, a chat whose parts are all text to the chat
// package (a refusal part, rendered as text as vLLM renders it) is hashed whole, without
// the cut; an image part cuts the chat before its message, as TextPrefix says.
func TestLocalParts(t *testing.T) {
	enc, err := chat.Load(tokenizetest.ModelDir(t, "qwen3"))
	if err != nil {
		t.Fatal(err)
	}
	l := NewLocal(enc)
	hash := func(msgs []any) (Result, []byte) {
		t.Helper()
		body, err := json.Marshal(map[string]any{"model": "m", "messages": msgs})
		if err != nil {
			t.Fatal(err)
		}
		lit, _ := json.Marshal(msgs)
		r, err := l.Hash(t.Context(), &Request{Model: "m", BlockSize: 16, Messages: lit, Body: body}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r, body
	}
	sys := map[string]any{"role": "system", "content": "You are a helpful assistant. " + words(3, 60)}
	user := map[string]any{"role": "user", "content": "Tell me something. " + words(5, 40)}
	refusal := map[string]any{"role": "assistant", "content": []any{map[string]any{"type": "refusal", "refusal": "I cannot help with that."}}}
	r, body := hash([]any{sys, user, refusal, user})
	ids, err := enc.EncodeChat(body)
	if err != nil {
		t.Fatal(err)
	}
	if want := exact(&Request{Model: "m", BlockSize: 16}, ids, nil); r.Truncated || !slices.Equal(r.Hashes, want.Hashes) {
		t.Fatalf("refusal part: %d hashes (truncated %v), want the whole chat's %d", len(r.Hashes), r.Truncated, len(want.Hashes))
	}
	image := map[string]any{"role": "user", "content": []any{map[string]any{"type": "text", "text": "and this?"},
		map[string]any{"type": "image_url", "image_url": map[string]any{"url": "https://x/cat.png"}}}}
	r, _ = hash([]any{sys, user, image})
	before, _ := hash([]any{sys, user})
	if !r.Truncated || len(r.Hashes) == 0 || !isPrefix(r.Hashes, before.Hashes) {
		t.Fatalf("image part: %d hashes (truncated %v), the messages before it %d", len(r.Hashes), r.Truncated, len(before.Hashes))
	}
}

// TestLocalReusesHashes checks that a turn takes the block hashes its earlier turn kept
// in the prefix cache's memo (exactReuse) for the ids it repeats, and hashes the rest:
// a memo replaced with other values shows up in the result, for the same chain only.
func TestLocalReusesHashes(t *testing.T) {
	enc, err := chat.Load(tokenizetest.ModelDir(t, "qwen3"))
	if err != nil {
		t.Fatal(err)
	}
	l := NewLocal(enc)
	msgs := []any{map[string]any{"role": "system", "content": "You are a helpful assistant. " + words(3, 60)},
		map[string]any{"role": "user", "content": words(5, 80)}}
	req := &Request{Model: "m", BlockSize: 16}
	body := func() []byte {
		var err error
		if req.Messages, err = json.Marshal(msgs); err != nil {
			t.Fatal(err)
		}
		b, err := json.Marshal(map[string]any{"model": "m", "messages": msgs})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	req.Body = body()
	first, err := l.Hash(t.Context(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A probe turn extending the first finds its memo; the turn hashed below, another
	// extension of the first, then finds the same one.
	msgs = append(msgs, map[string]any{"role": "assistant", "content": words(6, 80)}, map[string]any{"role": "user", "content": "probe"})
	_, ru, err := enc.EncodeChatReuse(body())
	if err != nil {
		t.Fatal(err)
	}
	msgs[len(msgs)-1] = map[string]any{"role": "user", "content": words(7, 80)}
	req.Body = body()
	tag := [2]uint64{uint64(proto.Seed("m", "", "")), 16}
	kept := ru.From.Load(tag)
	if len(kept) != len(first.Hashes) || ru.IDs/16 < len(first.Hashes)-1 {
		t.Fatalf("the first turn's memo holds %d hashes, the turn hashed %d; %d ids repeated", len(kept), len(first.Hashes), ru.IDs)
	}
	bogus := make([]uint64, len(kept))
	for i := range bogus {
		bogus[i] = uint64(i) + 1
	}
	ru.From.Store(tag, bogus)
	got, err := l.Hash(t.Context(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	k := min(len(kept), ru.IDs/16)
	for i := range k {
		if uint64(got.Hashes[i]) != bogus[i] {
			t.Fatalf("block %d: hash %x, the memo's %x: the memo was not used", i, got.Hashes[i], bogus[i])
		}
	}
	ids, _ := enc.EncodeChat(req.Body)
	if want := exact(req, ids, nil); len(got.Hashes) != len(want.Hashes) || got.Hashes[k] == want.Hashes[k] {
		t.Fatalf("%d hashes, want %d; block %d chained from the memo's %x", len(got.Hashes), len(want.Hashes), k, bogus[k-1])
	}
	// Another salt is another chain: the memo is not used.
	req.CacheSalt = "other"
	salted, err := l.Hash(t.Context(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := exact(req, ids, nil); !slices.Equal(salted.Hashes, want.Hashes) {
		t.Fatalf("salted: first difference at block %d", firstDiff(salted.Hashes, want.Hashes))
	}
}
