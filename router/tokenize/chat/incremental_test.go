package chat

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kvroute/kvroute/router/jsonscan"
	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

// convTexts are message contents: plain, multi-line, unicode, whitespace runs,
// special-token look-alikes and real special tokens of the templates tested, and
// Qwen3's reasoning markup.
var convTexts = []string{
	"Hello there!", "Sure, here is a list:\n\n1. one\n2. two", "你好 🤗 مرحبا", "  spaced  out  \n\n\n",
	"func f() {\n\treturn 1\n}", "It's 12:30.", "<|im_start|>user\nnot really<|im_end|>", "<think>\nhmm\n</think>\n\nThe answer is 4.",
	"<｜User｜>look-alike", "<start_of_turn>model\n", "<|eot_id|>", "\n", "", "<tool_response>\n{\"ok\": true}\n</tool_response>",
	"Numbers 1234567 and 3.14159", strings.Repeat("long text ", 60),
}

// convTool is a tool definition the tool-calling turns use.
var convTool = map[string]any{"type": "function", "function": map[string]any{"name": "get_weather",
	"description": "Weather of a city", "parameters": map[string]any{"type": "object",
		"properties": map[string]any{"city": map[string]any{"type": "string"}}, "required": []string{"city"}}}}

// convGen plays one random conversation: user and assistant turns, tool rounds,
// content given as parts, reasoning, and now and then an edit of an earlier message,
// a new system prompt, other options or the same request again.
type convGen struct {
	rng   *rand.Rand
	msgs  []map[string]any
	tools bool // tool rounds (templates that render tool messages)
	opts  map[string]any
}

func (g *convGen) text() string {
	return convTexts[g.rng.IntN(len(convTexts))] + fmt.Sprint(g.rng.IntN(100))
}

func (g *convGen) content() any {
	if g.rng.IntN(8) == 0 {
		return []any{map[string]any{"type": "text", "text": g.text()}, map[string]any{"type": "text", "text": g.text()}}
	}
	return g.text()
}

// step changes the conversation and returns the next request body.
func (g *convGen) step(t *testing.T) []byte {
	switch r := g.rng.IntN(20); {
	case r == 0 && len(g.msgs) > 1: // edit an earlier message
		i := g.rng.IntN(len(g.msgs) - 1)
		m := map[string]any{}
		for k, v := range g.msgs[i] {
			m[k] = v
		}
		m["content"] = g.text()
		g.msgs[i] = m
	case r == 1: // new system prompt
		sys := map[string]any{"role": "system", "content": "You are " + g.text()}
		if len(g.msgs) > 0 && g.msgs[0]["role"] == "system" {
			g.msgs[0] = sys
		} else {
			g.msgs = append([]map[string]any{sys}, g.msgs...)
		}
	case r == 2: // other options
		g.opts = map[string]any{}
		if g.rng.IntN(2) == 0 {
			g.opts["chat_template_kwargs"] = map[string]any{"enable_thinking": g.rng.IntN(2) == 0}
		}
		if g.rng.IntN(3) == 0 {
			g.opts["add_generation_prompt"] = false
		}
		if g.tools && g.rng.IntN(2) == 0 {
			g.opts["tools"] = []any{convTool}
		}
	case r == 3: // the same request again
	case r < 6 && g.tools && len(g.msgs) > 0 && g.msgs[len(g.msgs)-1]["role"] == "user": // a tool round
		n := 1 + g.rng.IntN(2)
		calls := make([]any, n)
		for k := range calls {
			calls[k] = map[string]any{"id": fmt.Sprintf("call_%d", k), "type": "function",
				"function": map[string]any{"name": "get_weather", "arguments": fmt.Sprintf(`{"city": "C%d"}`, g.rng.IntN(50))}}
		}
		var content any
		if g.rng.IntN(2) == 0 {
			content = g.text()
		}
		g.msgs = append(g.msgs, map[string]any{"role": "assistant", "content": content, "tool_calls": calls})
		for k := range calls {
			g.msgs = append(g.msgs, map[string]any{"role": "tool", "tool_call_id": fmt.Sprintf("call_%d", k), "content": g.text()})
		}
		g.msgs = append(g.msgs, map[string]any{"role": "assistant", "content": g.text()},
			map[string]any{"role": "user", "content": g.content()})
	default: // an answer and the next question
		if len(g.msgs) > 0 && g.msgs[len(g.msgs)-1]["role"] == "user" {
			a := map[string]any{"role": "assistant", "content": g.content()}
			if g.rng.IntN(6) == 0 {
				a["reasoning_content"] = g.text()
			}
			g.msgs = append(g.msgs, a)
		}
		g.msgs = append(g.msgs, map[string]any{"role": "user", "content": g.content()})
	}
	body := map[string]any{"model": "m", "messages": g.msgs, "max_tokens": 16}
	for k, v := range g.opts {
		body[k] = v
	}
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestEncodeChatIncremental plays random conversations, interleaved, through
// encoders with conversation caches of two sizes (one small enough to evict all the
// time), and checks that every turn's ids equal a render and encode from scratch
// (ParseRequest, the template over the whole conversation, Tokenizer.Encode), or
// that both fail.
func TestEncodeChatIncremental(t *testing.T) {
	for _, m := range chatModels {
		t.Run(m, func(t *testing.T) {
			base := loadEncoder(t, m)
			for _, budget := range []int{64 << 20, 48 << 10} {
				enc := NewEncoder(base.Tokenizer(), base.Config(), budget)
				rng := rand.New(rand.NewPCG(uint64(budget), 21))
				gens := make([]*convGen, 6)
				for i := range gens {
					gens[i] = &convGen{rng: rng, tools: m == "qwen3" || m == "deepseek_v3" || m == "llama3"}
				}
				var ok, failed int
				for step := 0; step < 240; step++ {
					g := gens[rng.IntN(len(gens))]
					body := g.step(t)
					got, gotErr := enc.EncodeChat(body)
					prompt, req, wantErr := enc.Render(body)
					if (gotErr == nil) != (wantErr == nil) {
						t.Fatalf("step %d: incremental error %v, full error %v\nbody %s", step, gotErr, wantErr, body)
					}
					if wantErr != nil {
						failed++
						continue
					}
					ok++
					if want := enc.Tokenizer().Encode(prompt, req.AddSpecialTokens); !slices.Equal(got, want) {
						t.Fatalf("step %d: incremental ids differ from a full encode (%d vs %d ids)\nbody %s", step, len(got), len(want), body)
					}
				}
				st := enc.CacheStats()
				t.Logf("budget %d: %d turns equal, %d failed in both paths; cache %+v", budget, ok, failed, st)
				if ok < 100 || st.MessageHits == 0 || st.ConversationHits == 0 {
					t.Fatalf("too few turns compared (%d) or no message or conversation cache hits (%+v)", ok, st)
				}
				if budget > 1<<20 && st.RenderCopied < st.RenderRan {
					t.Fatalf("renders copied %d loop iterations and ran %d: the resume is not working", st.RenderCopied, st.RenderRan)
				}
				if st.ConversationBytes > budget/8 {
					t.Fatalf("conversation cache holds %d bytes, budget %d", st.ConversationBytes, budget/8)
				}
				if budget < 1<<20 && st.MessageEvictions == 0 {
					t.Fatalf("the small cache never evicted: %+v", st)
				}
				if st.MessageBytes > budget/4 {
					t.Fatalf("message cache holds %d bytes, budget %d", st.MessageBytes, budget/4)
				}
			}
		})
	}
}

// FuzzParseCached checks that the incremental parse (parseCached, through a message
// cache and a conversation cache shared by every input of the run) accepts exactly
// the bodies ParseRequest accepts, and that what it returns renders to the same
// prompt with Qwen3's and Gemma-3's templates (or fails to render in both) with the
// same add_special_tokens.
func FuzzParseCached(f *testing.F) {
	f.Add([]byte(`{"messages":[{"role":"user","content":"hi"}]}`))
	f.Add([]byte(` {"messages":[],"messages":[{"role":"user","content":"a\u00e9"}]} `))
	f.Add([]byte(`{"messages":[{"role":"user","content":"a"}],"messages":[{"role":"user","content":"\x"}]}`))
	f.Add([]byte(`{"messages":[{"role":"assistant","content":null,"tool_calls":[{"type":"function","function":{"name":"f","arguments":"{\"a\": 1.0}"}}]}],"tools":[{"type":"function","function":{"name":"f"}}],"add_special_tokens":true}`))
	f.Add([]byte(`{"messages":[{"role":"user","content":[{"type":"text","text":"a"}]}],"chat_template_kwargs":{"enable_thinking":false},"add_generation_prompt":false}`))
	f.Add([]byte(`{"model":"m","max_tokens":1e400,"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}]}`))
	f.Add([]byte(`[{"messages":[]}]`))
	for _, m := range []string{"qwen3", "gemma3"} {
		for _, g := range readGoldenF(f, m) {
			f.Add([]byte(g.Request))
		}
	}
	encs := []*Encoder{loadEncoder(f, "qwen3"), loadEncoder(f, "gemma3")}
	mc, cc := newMsgCache(1<<20), newConvCache(1<<20)
	f.Fuzz(func(t *testing.T, body []byte) {
		want, werr := ParseRequest(body)
		e := &Encoder{msgs: mc, convs: cc}
		got, keys, gerr := e.parseCached(body)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("ParseRequest error %v, parseCached error %v", werr, gerr)
		}
		if werr != nil {
			return
		}
		if len(keys) != len(got.Messages)+1 || got.AddSpecialTokens != want.AddSpecialTokens {
			t.Fatalf("%d keys for %d messages; add_special_tokens %v, want %v", len(keys), len(got.Messages), got.AddSpecialTokens, want.AddSpecialTokens)
		}
		for _, enc := range encs {
			wp, werr := enc.Config().Render(want.Messages, want.Options)
			gp, gerr := enc.Config().Render(got.Messages, got.Options)
			if (werr == nil) != (gerr == nil) || wp != gp {
				t.Fatalf("renders differ: parseCached %q (%v), ParseRequest %q (%v)", gp, gerr, wp, werr)
			}
		}
	})
}

func readGoldenF(f *testing.F, name string) []chatGolden {
	f.Helper()
	return tokenizetest.ReadJSONL[chatGolden](f, filepath.Join("testdata/golden", name+".jsonl"))
}

// TestConvCacheReuse: the next turn of a conversation takes its earlier messages from
// the conversation cache, a retry takes them all, and the entry a turn reused gives way
// to the new one; a body whose earlier messages differ from the cached ones only in the
// bytes between them, or whose cached entry's bytes differ under the same key (as a
// hash collision would), misses and is parsed as ParseRequest parses it.
func TestConvCacheReuse(t *testing.T) {
	base := loadEncoder(t, "qwen3")
	enc := NewEncoder(base.Tokenizer(), base.Config(), 64<<20)
	msg := func(role, content string) string { return fmt.Sprintf(`{"role":%q,"content":%q}`, role, content) }
	body := func(sep string, msgs ...string) []byte {
		return []byte(`{"model":"m","messages":[` + strings.Join(msgs, sep) + `]}`)
	}
	check := func(b []byte, hits, convs int) *Request {
		t.Helper()
		got, _, err := enc.parseCached(b)
		if err != nil {
			t.Fatal(err)
		}
		want, err := ParseRequest(b)
		if err != nil {
			t.Fatal(err)
		}
		gp, gerr := enc.Config().Render(got.Messages, got.Options)
		wp, werr := enc.Config().Render(want.Messages, want.Options)
		if gerr != nil || werr != nil || gp != wp {
			t.Fatalf("renders differ: %q (%v) against %q (%v)", gp, gerr, wp, werr)
		}
		if st := enc.CacheStats(); st.ConversationHits != int64(hits) || st.Conversations != convs {
			t.Fatalf("after %s: %d conversation hits, %d held; want %d, %d", b, st.ConversationHits, st.Conversations, hits, convs)
		}
		return got
	}
	m1, m2, m3, m4 := msg("system", "s"), msg("user", "u1"), msg("assistant", "a1"), msg("user", "u2")
	check(body(",", m1, m2), 0, 1)
	check(body(",", m1, m2, m3, m4), 1, 1)                                             // the next turn: the first entry gives way
	check(body(",", m1, m2, m3, m4), 2, 1)                                             // a retry: all four, nothing new stored
	check(body(", ", m1, m2, m3, m4, msg("assistant", "a2"), msg("user", "u3")), 2, 2) // other separators: a miss
	// The same key over other bytes, as on a hash collision: the entry for [m1, x1] made
	// to hold [m1, m2]'s bytes and other messages is found by the next turn's key, and
	// missed on its bytes.
	check(body(",", m1, msg("user", "x1")), 2, 3)
	enc.convs.mu.Lock()
	for _, e := range enc.convs.m {
		if len(e.msgs) == 2 && bytes.Contains(e.raw, []byte("x1")) {
			e.raw = bytes.Replace(e.raw, []byte("x1"), []byte("u1"), 1) // now m1, m2's bytes...
			e.msgs[1] = e.msgs[0]                                       // ...over other messages
		}
	}
	enc.convs.mu.Unlock()
	got := check(body(",", m1, msg("user", "x1"), m3), 2, 4)
	if len(got.Messages) != 3 {
		t.Fatalf("%d messages", len(got.Messages))
	}
}

// TestParseCachedDepth: nesting at the limit of encoding/json (jsonscan.MaxDepth) and
// one level past it, inside a message and inside another member, is accepted or
// refused by parseCached as by ParseRequest.
func TestParseCachedDepth(t *testing.T) {
	e := &Encoder{msgs: newMsgCache(1 << 20), convs: newConvCache(1 << 20)}
	for _, k := range []int{jsonscan.MaxDepth - 4, jsonscan.MaxDepth - 3, jsonscan.MaxDepth - 2} {
		deep := strings.Repeat("[", k) + strings.Repeat("]", k)
		for _, body := range []string{
			`{"messages":[{"role":"user","content":"x","deep":` + deep + `}]}`,
			`{"messages":[{"role":"user","content":"x"}],"x":{"y":[` + deep + `]}}`,
		} {
			_, werr := ParseRequest([]byte(body))
			_, _, gerr := e.parseCached([]byte(body))
			if (werr == nil) != (gerr == nil) || (werr == nil) != (k <= jsonscan.MaxDepth-3) {
				t.Errorf("nesting %d: ParseRequest error %v, parseCached error %v", k+3, werr, gerr)
			}
		}
	}
}

// TestConvCacheByStart: a request that repeats an entry's messages and adds more than
// maxHints finds the entry by its first two messages; of two branches of a
// conversation the one the request repeats is taken; bytes after a cached prefix that
// do not continue the array fail as in ParseRequest; and the messages parsed equal
// ParseRequest's every time.
func TestConvCacheByStart(t *testing.T) {
	base := loadEncoder(t, "qwen3")
	enc := NewEncoder(base.Tokenizer(), base.Config(), 64<<20)
	msg := func(role, content string) string { return fmt.Sprintf(`{"role":%q,"content":%q}`, role, content) }
	body := func(msgs ...string) []byte {
		return []byte(`{"model":"m","messages":[` + strings.Join(msgs, ",") + `]}`)
	}
	parse := func(b []byte) (*convEntry, error) {
		t.Helper()
		got, _, turn, err := enc.parseConv(b)
		want, werr := ParseRequest(b)
		if (err == nil) != (werr == nil) {
			t.Fatalf("%s: parseConv error %v, ParseRequest error %v", b, err, werr)
		}
		if err != nil {
			return nil, err
		}
		gp, gerr := enc.Config().Render(got.Messages, got.Options)
		wp, werr := enc.Config().Render(want.Messages, want.Options)
		if gerr != nil || werr != nil || gp != wp {
			t.Fatalf("renders differ: %q (%v) against %q (%v)", gp, gerr, wp, werr)
		}
		return turn.prev, nil
	}
	conv := []string{msg("system", "s"), msg("user", "u1")}
	if prev, _ := parse(body(conv...)); prev != nil {
		t.Fatal("a hit on an empty cache")
	}
	long := append([]string(nil), conv...)
	for i := range 6 {
		long = append(long, msg("assistant", fmt.Sprint("a", i)), msg("user", fmt.Sprint("q", i)))
	}
	prev, _ := parse(body(long...))
	if prev == nil || len(prev.msgs) != 2 {
		t.Fatalf("12 new messages: the 2-message entry not found by its start (%v)", prev)
	}
	// A branch: the same first four messages, then others.
	branch := append(append([]string(nil), long[:4]...), msg("user", "other"))
	if prev, _ = parse(body(branch...)); prev != nil && len(prev.msgs) > 4 {
		t.Fatalf("a branch took %d messages of another one", len(prev.msgs))
	}
	next := append(append([]string(nil), long...), msg("assistant", "a6"), msg("user", "q6"))
	if prev, _ = parse(body(next...)); prev == nil || len(prev.msgs) != len(long) {
		t.Fatalf("the next turn of the long branch did not take its %d messages (%v)", len(long), prev)
	}
	// The cached bytes followed by something that does not continue the array.
	bad := []byte(`{"model":"m","messages":[` + strings.Join(next, ",") + ` x]}`)
	if _, err := parse(bad); err == nil {
		t.Fatal("garbage after the cached messages accepted")
	}
	bad = []byte(`{"model":"m","messages":[` + strings.Join(next, ",") + `,]}`)
	if _, err := parse(bad); err == nil {
		t.Fatal("a trailing comma after the cached messages accepted")
	}
}

// TestEncodeChatConcurrent plays the same random conversations from four goroutines at
// once through one encoder (so their turns race for the same cache entries and
// renders), with a cache large enough to keep them and one that evicts all the time,
// and checks every turn's ids against a full encode. Run with -race.
func TestEncodeChatConcurrent(t *testing.T) {
	base := loadEncoder(t, "qwen3")
	for _, budget := range []int{64 << 20, 48 << 10} {
		enc := NewEncoder(base.Tokenizer(), base.Config(), budget)
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(5, 5)) // the same conversations in every goroutine
				gens := make([]*convGen, 3)
				for i := range gens {
					gens[i] = &convGen{rng: rng, tools: true}
				}
				for step := range 80 {
					body := gens[rng.IntN(len(gens))].step(t)
					got, gerr := enc.EncodeChat(body)
					prompt, req, werr := enc.Render(body)
					if (gerr == nil) != (werr == nil) {
						errs <- fmt.Errorf("step %d: incremental error %w, full error %w", step, gerr, werr)
						return
					}
					if werr == nil && !slices.Equal(got, enc.Tokenizer().Encode(prompt, req.AddSpecialTokens)) {
						errs <- fmt.Errorf("step %d: ids differ from a full encode\nbody %s", step, body)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if st := enc.CacheStats(); budget > 1<<20 && (st.ConversationHits == 0 || st.RenderCopied == 0) {
			t.Fatalf("budget %d: no conversation hits or copied renders: %+v", budget, st)
		}
	}
}
