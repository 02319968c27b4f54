package sim

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
)

type chunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Model   string `json:"model"`
	Choices []struct {
		Index int `json:"index"`
		Delta *struct {
			Role    *string `json:"role"`
			Content *string `json:"content"`
		} `json:"delta"`
		Text         *string `json:"text"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *Usage `json:"usage"`
}

func streamChunks(t *testing.T, url string, body map[string]any) []chunk {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post(url, "application/json", strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		out, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), out)
	}
	evs := sseEvents(t, resp.Body)
	if len(evs) == 0 || evs[len(evs)-1] != "[DONE]" {
		t.Fatalf("stream does not end with [DONE]: %q", evs)
	}
	var out []chunk
	for _, e := range evs[:len(evs)-1] {
		var c chunk
		if err := json.Unmarshal([]byte(e), &c); err != nil {
			t.Fatalf("chunk %q: %v", e, err)
		}
		out = append(out, c)
	}
	return out
}

func TestChatStreamShape(t *testing.T) {
	f := startFleet(t, 1, func(c *Config) { c.StreamChunkTokens = 3 })
	w := f.Workers()[0]
	chunks := streamChunks(t, w.URL()+"/v1/chat/completions", map[string]any{
		"model":      "kvsim",
		"messages":   []map[string]any{{"role": "system", "content": "be brief"}, {"role": "user", "content": []map[string]any{{"type": "text", "text": "hello there"}}}},
		"max_tokens": 10, "ignore_eos": true, "stream": true, "stream_options": map[string]any{"include_usage": true},
	})
	// role, then the first token alone, then 3+3+3 tokens, then usage.
	if len(chunks) != 6 {
		t.Fatalf("%d chunks: %+v", len(chunks), chunks)
	}
	first := chunks[0]
	if first.Object != "chat.completion.chunk" || first.Model != "kvsim" || !strings.HasPrefix(first.ID, "chatcmpl-") ||
		first.Choices[0].Delta.Role == nil || *first.Choices[0].Delta.Role != "assistant" || first.Choices[0].FinishReason != nil {
		t.Fatalf("role chunk %+v", first)
	}
	text := ""
	wordsPer := []int{1, 3, 3, 3}
	for i, c := range chunks[1:5] {
		if c.ID != first.ID || len(c.Choices) != 1 || c.Choices[0].Delta.Content == nil || c.Usage != nil {
			t.Fatalf("content chunk %d %+v", i, c)
		}
		content := *c.Choices[0].Delta.Content
		if n := len(strings.Fields(content)); n != wordsPer[i] {
			t.Fatalf("chunk %d carries %d tokens (%q), want %d", i, n, content, wordsPer[i])
		}
		text += content
		last := i == 3
		if (c.Choices[0].FinishReason != nil) != last || (last && *c.Choices[0].FinishReason != "length") {
			t.Fatalf("chunk %d finish_reason %v", i, c.Choices[0].FinishReason)
		}
	}
	u := chunks[5]
	if len(u.Choices) != 0 || u.Usage == nil || u.Usage.CompletionTokens != 10 || u.Usage.PromptTokens == 0 ||
		u.Usage.TotalTokens != u.Usage.PromptTokens+10 {
		t.Fatalf("usage chunk %+v", u)
	}
	// The reply retokenizes to exactly its 10 tokens.
	if n := len(tokenize(t, w, text)); n != 10 {
		t.Fatalf("reply %q is %d tokens", text, n)
	}
	// Prompt token count equals /tokenize of the same messages.
	resp, out := post(t, w.URL()+"/tokenize", map[string]any{"messages": []map[string]any{
		{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}}})
	var tk struct{ Count int }
	if resp.StatusCode != 200 || json.Unmarshal(out, &tk) != nil || tk.Count != u.Usage.PromptTokens {
		t.Fatalf("tokenize messages %d %s vs prompt_tokens %d", resp.StatusCode, out, u.Usage.PromptTokens)
	}
}

func TestCompletionStreamWithoutUsage(t *testing.T) {
	f := startFleet(t, 1, nil)
	w := f.Workers()[0]
	chunks := streamChunks(t, w.URL()+"/v1/completions", map[string]any{
		"prompt": "once upon a time", "max_tokens": 4, "ignore_eos": true, "stream": true})
	if len(chunks) != 4 {
		t.Fatalf("%d chunks", len(chunks))
	}
	for i, c := range chunks {
		if c.Object != "text_completion" || c.Choices[0].Text == nil || c.Usage != nil {
			t.Fatalf("chunk %d %+v", i, c)
		}
	}
	if fr := chunks[3].Choices[0].FinishReason; fr == nil || *fr != "length" {
		t.Fatalf("last finish_reason %v", fr)
	}
}

func TestOutputLengthControls(t *testing.T) {
	f := startFleet(t, 1, func(c *Config) { c.MeanOutputTokens = 8 })
	w := f.Workers()[0]
	p := words(0, 30)
	natural := complete(t, w, map[string]any{"prompt": p})
	n := natural.Usage.CompletionTokens
	if n < 1 || n > 16 || natural.Choices[0].FinishReason != "stop" {
		t.Fatalf("natural length %d %q", n, natural.Choices[0].FinishReason)
	}
	if again := complete(t, w, map[string]any{"prompt": p}); again.Choices[0].Text != natural.Choices[0].Text {
		t.Fatal("output is not deterministic")
	}
	tests := []struct {
		body   map[string]any
		want   int
		finish string
	}{
		{map[string]any{"max_tokens": 40, "ignore_eos": true}, 40, "length"},
		{map[string]any{"max_tokens": 40, "min_tokens": 30}, 30, "stop"},
		{map[string]any{"max_tokens": 1}, 1, "length"},
		{map[string]any{"min_tokens": 20, "max_tokens": 20}, 20, "length"},
	}
	for _, tt := range tests {
		tt.body["prompt"] = p
		c := complete(t, w, tt.body)
		if c.Usage.CompletionTokens != tt.want || c.Choices[0].FinishReason != tt.finish ||
			len(strings.Fields(c.Choices[0].Text)) != tt.want {
			t.Errorf("%v: got %d tokens %q, want %d %q", tt.body, c.Usage.CompletionTokens, c.Choices[0].FinishReason, tt.want, tt.finish)
		}
	}
	// Chat honours max_completion_tokens over max_tokens.
	resp, out := post(t, w.URL()+"/v1/chat/completions", map[string]any{
		"messages": []map[string]any{{"role": "user", "content": "hi"}}, "max_tokens": 3, "max_completion_tokens": 5, "ignore_eos": true})
	var c completion
	if resp.StatusCode != 200 || json.Unmarshal(out, &c) != nil || c.Usage.CompletionTokens != 5 ||
		c.Choices[0].Message.Role != "assistant" || len(strings.Fields(c.Choices[0].Message.Content)) != 5 {
		t.Fatalf("chat: %d %s", resp.StatusCode, out)
	}
}

func TestBadRequests(t *testing.T) {
	f := startFleet(t, 1, func(c *Config) { c.MaxModelLen = 100 })
	w := f.Workers()[0]
	tests := []struct {
		path   string
		body   string
		status int
	}{
		{"/v1/completions", `{"prompt": "x", "max_tokens": 0}`, 400},
		{"/v1/completions", `{"prompt": "x", "min_tokens": 5, "max_tokens": 2}`, 400},
		{"/v1/completions", `{"prompt": ""}`, 400},
		{"/v1/completions", `{"prompt": [1, -2]}`, 400},
		{"/v1/completions", `{"prompt": ["a", "b"]}`, 400},
		{"/v1/completions", `{"prompt": [[[1]]]}`, 400},
		{"/v1/completions", `{"prompt": [1.5]}`, 400},
		{"/v1/completions", `{"prompt": "x", "model": "other"}`, 404},
		{"/v1/completions", `{"prompt": "` + words(0, 100) + `"}`, 400},
		{"/v1/completions", `{"prompt": "x", "max_tokens": 200}`, 400},
		{"/v1/completions", `{"prompt": "x", "stream_options": {"include_usage": true}}`, 400},
		{"/v1/completions", `{`, 400},
		{"/v1/chat/completions", `{"messages": []}`, 400},
		{"/v1/chat/completions", `{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}`, 400},
		{"/tokenize", `{}`, 400},
	}
	for _, tt := range tests {
		resp, err := http.Post(w.URL()+tt.path, "application/json", strings.NewReader(tt.body))
		if err != nil {
			t.Fatal(err)
		}
		var e struct {
			Error struct {
				Message string `json:"message"`
				Type    string `json:"type"`
				Code    int    `json:"code"`
			} `json:"error"`
		}
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != tt.status || err != nil || e.Error.Code != tt.status || e.Error.Message == "" || e.Error.Type == "" {
			t.Errorf("%s %s: status %d, error %+v (%v)", tt.path, tt.body, resp.StatusCode, e, err)
		}
	}
	// Token-id prompts inside a one-element list work.
	c := complete(t, w, map[string]any{"prompt": [][]int{{5, 6, 7}}, "max_tokens": 2})
	if c.Usage.PromptTokens != 3 {
		t.Fatalf("usage %+v", c.Usage)
	}
}

func TestMetricsAndModels(t *testing.T) {
	f := startFleet(t, 1, func(c *Config) { c.KVBlocks = 321 })
	w := f.Workers()[0]
	complete(t, w, map[string]any{"prompt": words(0, 40), "max_tokens": 2})
	complete(t, w, map[string]any{"prompt": words(0, 40), "max_tokens": 2})
	resp, err := http.Get(w.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	for _, re := range []string{
		`(?m)^vllm:num_requests_running\{engine="0",model_name="kvsim"\} 0$`,
		`(?m)^vllm:num_requests_waiting\{engine="0",model_name="kvsim"\} 0$`,
		`(?m)^vllm:kv_cache_usage_perc\{engine="0",model_name="kvsim"\} 0$`,
		`(?m)^vllm:cache_config_info\{block_size="16",cache_dtype="auto",enable_prefix_caching="True",engine="0",num_gpu_blocks="321"\} 1$`,
		`(?m)^vllm:prefix_cache_queries_total\{engine="0",model_name="kvsim"\} 80$`,
		`(?m)^vllm:prefix_cache_hits_total\{engine="0",model_name="kvsim"\} 32$`,
		`(?m)^vllm:time_to_first_token_seconds_count\{engine="0",model_name="kvsim"\} 2$`,
		`(?m)^vllm:e2e_request_latency_seconds_count\{engine="0",model_name="kvsim"\} 2$`,
		`(?m)^vllm:inter_token_latency_seconds_bucket`,
		`(?m)^vllm:request_success_total\{engine="0",finished_reason="length",model_name="kvsim"\} 2$`,
		`(?m)^vllm:prompt_tokens_total\{engine="0",model_name="kvsim"\} 80$`,
		`(?m)^vllm:generation_tokens_total\{engine="0",model_name="kvsim"\} 4$`,
	} {
		if !regexp.MustCompile(re).MatchString(text) {
			t.Errorf("metrics lack %s", re)
		}
	}
	if t.Failed() {
		t.Log(text)
	}
	resp, err = http.Get(w.URL() + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || len(m.Data) != 1 || m.Data[0].ID != "kvsim" {
		t.Fatalf("models %+v %v", m, err)
	}
	resp.Body.Close()
}

func TestSGLangMetrics(t *testing.T) {
	f := startFleet(t, 1, func(c *Config) { c.Engine = "sglang"; c.KVBlocks = 50 })
	resp, err := http.Get(f.Workers()[0].URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage",
		`sglang:cache_config_info{num_pages="50",page_size="16"} 1`} {
		if !strings.Contains(string(body), name) {
			t.Errorf("metrics lack %s", name)
		}
	}
}

func TestPluggedTokenizerAndKVBoundLength(t *testing.T) {
	// One token per byte, to check the hook is used everywhere a prompt is tokenized.
	bytesTok := TokenizerFunc(func(s string) []uint32 {
		out := make([]uint32, len(s))
		for i := range len(s) {
			out[i] = uint32(s[i])
		}
		return out
	})
	f := startFleet(t, 1, func(c *Config) { c.Tokenizer = bytesTok; c.KVBlocks = 4 })
	w := f.Workers()[0]
	if got := tokenize(t, w, "hello"); len(got) != 5 || got[0] != 'h' {
		t.Fatalf("tokenize %v", got)
	}
	c := complete(t, w, map[string]any{"prompt": "abcdefghij", "max_tokens": 3})
	if c.Usage.PromptTokens != 10 {
		t.Fatalf("usage %+v", c.Usage)
	}
	// 4 blocks of 16 tokens hold 64 tokens: a longer request is refused, not queued forever.
	resp, out := post(t, w.URL()+"/v1/completions", map[string]any{"prompt": strings.Repeat("x", 60), "max_tokens": 10})
	if resp.StatusCode != 400 || !strings.Contains(string(out), "maximum context length is 64") {
		t.Fatalf("long request: %d %s", resp.StatusCode, out)
	}
}

func TestMultiTurnChatHitsHistory(t *testing.T) {
	f := startFleet(t, 1, nil)
	w := f.Workers()[0]
	msgs := []map[string]any{{"role": "system", "content": words(0, 100)}, {"role": "user", "content": "first question"}}
	chat := func(msgs []map[string]any) completion {
		resp, out := post(t, w.URL()+"/v1/chat/completions", map[string]any{"messages": msgs, "max_tokens": 40, "ignore_eos": true})
		var c completion
		if resp.StatusCode != 200 || json.Unmarshal(out, &c) != nil {
			t.Fatalf("chat: %d %s", resp.StatusCode, out)
		}
		return c
	}
	c1 := chat(msgs)
	msgs = append(msgs, map[string]any{"role": "assistant", "content": c1.Choices[0].Message.Content},
		map[string]any{"role": "user", "content": "second question"})
	c2 := chat(msgs)
	// The second prompt starts with the first prompt and the reply (generated tokens
	// are cached when their block fills); only the reply's last partial block and what
	// follows are new. Turn 1 computed prompt+39 tokens (the 40th was never fed back);
	// every full block of those is a hit.
	p1 := c1.Usage.PromptTokens
	computed := (p1 + 39) / 16 * 16
	got := c2.Usage.PromptTokensDetails.CachedTokens
	if got != computed {
		t.Fatalf("turn 2 cached %d tokens; turn 1 computed %d full-block tokens (prompt %d)", got, computed, p1)
	}
}

func TestContinuousUsageStats(t *testing.T) {
	f := startFleet(t, 1, nil)
	chunks := streamChunks(t, f.Workers()[0].URL()+"/v1/completions", map[string]any{
		"prompt": words(0, 10), "max_tokens": 3, "ignore_eos": true, "stream": true,
		"stream_options": map[string]any{"include_usage": true, "continuous_usage_stats": true}})
	if len(chunks) != 4 {
		t.Fatalf("%d chunks", len(chunks))
	}
	for i, c := range chunks[:3] {
		if c.Usage == nil || c.Usage.CompletionTokens != i+1 || c.Usage.PromptTokens != 10 {
			t.Fatalf("chunk %d usage %+v", i, c.Usage)
		}
	}
}

// fakeBodyTokenizer records what it is asked and answers predictable ids.
type fakeBodyTokenizer struct {
	mu     sync.Mutex
	bodies []string
}

func (f *fakeBodyTokenizer) EncodeChat(body []byte) ([]uint32, error) {
	f.mu.Lock()
	f.bodies = append(f.bodies, string(body))
	f.mu.Unlock()
	if strings.Contains(string(body), "unrenderable") {
		return nil, errors.New("cannot render")
	}
	ids := make([]uint32, 20)
	for i := range ids {
		ids[i] = uint32(100 + i)
	}
	return ids, nil
}

func (f *fakeBodyTokenizer) Encode(text string, addSpecial bool) []uint32 {
	var ids []uint32
	if addSpecial {
		ids = append(ids, 1) // BOS
	}
	for i := range len(text) {
		ids = append(ids, uint32(text[i]))
	}
	return ids
}

func TestBodyTokenizerHook(t *testing.T) {
	fake := &fakeBodyTokenizer{}
	f := startFleet(t, 1, func(c *Config) { c.BodyTokenizer = fake })
	w := f.Workers()[0]
	chatBody := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}`
	resp, err := http.Post(w.URL()+"/v1/chat/completions", "application/json", strings.NewReader(chatBody))
	if err != nil {
		t.Fatal(err)
	}
	var c completion
	err = json.NewDecoder(resp.Body).Decode(&c)
	resp.Body.Close()
	if err != nil || c.Usage.PromptTokens != 20 || len(fake.bodies) != 1 || fake.bodies[0] != chatBody {
		t.Fatalf("chat usage %+v, bodies %q (%v)", c.Usage, fake.bodies, err)
	}
	if c := complete(t, w, map[string]any{"prompt": "abc", "max_tokens": 1}); c.Usage.PromptTokens != 4 {
		t.Fatalf("completions with BOS: %+v", c.Usage)
	}
	if c := complete(t, w, map[string]any{"prompt": "abc", "max_tokens": 1, "add_special_tokens": false}); c.Usage.PromptTokens != 3 {
		t.Fatalf("completions without special tokens: %+v", c.Usage)
	}
	if got := tokenize(t, w, "abc"); len(got) != 4 || got[0] != 1 {
		t.Fatalf("tokenize prompt %v", got)
	}
	resp, out := post(t, w.URL()+"/tokenize", map[string]any{"messages": []map[string]any{{"role": "user", "content": "hi"}}})
	if resp.StatusCode != 200 || !strings.Contains(string(out), `"count":20`) {
		t.Fatalf("tokenize messages: %d %s", resp.StatusCode, out)
	}
	resp, out = post(t, w.URL()+"/v1/chat/completions", map[string]any{"messages": []map[string]any{{"role": "user", "content": "unrenderable"}}})
	if resp.StatusCode != 400 || !strings.Contains(string(out), "cannot render") {
		t.Fatalf("render error: %d %s", resp.StatusCode, out)
	}
}
