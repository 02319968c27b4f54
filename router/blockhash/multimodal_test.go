package blockhash

import (
	"encoding/json"
	"slices"
	"testing"
)

// TextPrefix keeps the messages before the first one holding a non-text part, whatever
// the part's kind.
func TestTextPrefix(t *testing.T) {
	const sys = `{"role":"system","content":"s"}`
	const text = `{"role":"user","content":[{"type":"text","text":"a"},"b",{"text":"c"},{"type":"input_text","text":"d"}]}`
	for _, tc := range []struct {
		name, msgs, want string
		cut              bool
	}{
		{"text only", `[` + sys + `,` + text + `]`, `[` + sys + `,` + text + `]`, false},
		{"empty", `[]`, `[]`, false},
		{"string content", `[` + sys + `,{"role":"user","content":"x"}]`, `[` + sys + `,{"role":"user","content":"x"}]`, false},
		{"image_url", `[` + sys + `,{"role":"user","content":[{"type":"text","text":"t"},{"type":"image_url","image_url":{"url":"u"}}]},{"role":"user","content":"x"}]`, `[` + sys + `]`, true},
		{"input_audio", `[` + sys + `, ` + text + ` ,{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"AA","format":"wav"}}]}]`, `[` + sys + `, ` + text + `]`, true},
		{"video_url", `[{"role":"user","content":[{"type":"video_url","video_url":{"url":"v"}}]}]`, `[]`, true},
		{"file", `[` + sys + `,{"role":"user","content":[{"type":"file","file":{"file_id":"f"}}]}]`, `[` + sys + `]`, true},
		{"image_embeds", `[` + sys + `,{"role":"user","content":[{"type":"image_embeds","image_embeds":"e"}]}]`, `[` + sys + `]`, true},
		{"untyped image", `[` + sys + `,{"role":"user","content":[{"image_url":{"url":"u"}}]}]`, `[` + sys + `]`, true},
		{"text part without text", `[` + sys + `,{"role":"user","content":[{"type":"text"}]}]`, `[` + sys + `]`, true},
		{"null type", `[` + sys + `,{"role":"user","content":[{"type":null,"text":"x"}]}]`, `[` + sys + `]`, true},
	} {
		got, cut, err := TextPrefix(nil, []byte(tc.msgs))
		if err != nil || cut != tc.cut || string(got) != tc.want {
			t.Errorf("%s: got %s cut %v err %v, want %s cut %v", tc.name, got, cut, err, tc.want, tc.cut)
		}
		if !json.Valid(got) {
			t.Errorf("%s: %s is not JSON", tc.name, got)
		}
	}
	for _, bad := range []string{`{}`, `[1]`, `[{"content":[1,}]`, `[{"content":"x"}`} {
		if _, _, err := TextPrefix(nil, []byte(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// In every mode two chats with the same text and different images get the same hashes,
// those of the text before the image, and are marked truncated; the text-only chat is
// not. The engine mode asks /tokenize for the messages before the image only, without a
// generation prompt, so the image is never fetched by the engine for the router.
func TestMultimodalGuard(t *testing.T) {
	srv := newTokServer(t)
	modes := map[string]Hasher{"approx": Approx{}, "engine": newEngine(t, srv.URL, nil), "local": NewLocal(wordTok{})}
	image := func(url string) []any {
		return []any{
			map[string]any{"role": "system", "content": "You are a helpful assistant. " + words(0, 100)},
			map[string]any{"role": "user", "content": []any{
				map[string]any{"type": "text", "text": "what is in the picture? " + words(500, 30)},
				map[string]any{"type": "image_url", "image_url": map[string]any{"url": url}},
				map[string]any{"type": "text", "text": "and after it " + words(900, 30)},
			}},
		}
	}
	prefixOnly := []any{map[string]any{"role": "system", "content": "You are a helpful assistant. " + words(0, 100)}}
	for name, h := range modes {
		hash := func(msgs []any, addGen bool) Result {
			t.Helper()
			req := &Request{Model: "m", BlockSize: 4, Messages: rawJSON(t, msgs)}
			if !addGen {
				req.Options.AddGenerationPrompt = []byte("false")
			}
			if name == "local" {
				req.Body = rawJSON(t, map[string]any{"model": "m", "messages": msgs, "add_generation_prompt": addGen})
			}
			r, err := h.Hash(t.Context(), req, nil)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return r
		}
		a, b := hash(image("https://x/cat.png"), true), hash(image("https://x/dog.png"), true)
		if !a.Truncated || !b.Truncated || len(a.Hashes) == 0 || !slices.Equal(a.Hashes, b.Hashes) {
			t.Fatalf("%s: cat %d hashes (truncated %v), dog %d (truncated %v): want equal, truncated", name, len(a.Hashes), a.Truncated, len(b.Hashes), b.Truncated)
		}
		full := hash(append(slices.Clone(prefixOnly), map[string]any{"role": "user", "content": "what is in the picture? " + words(500, 30)}), true)
		// Approx keeps the text before the image in its message; the exact modes keep
		// only the messages before it.
		if full.Truncated || !isPrefix(a.Hashes, full.Hashes) || (name != "approx" && len(full.Hashes) <= len(a.Hashes)) {
			t.Fatalf("%s: the image chat's %d hashes are not a prefix of the text chat's %d", name, len(a.Hashes), len(full.Hashes))
		}
		if name != "approx" {
			// Exact modes hash the messages before the image, as rendered without a
			// generation prompt.
			if p := hash(prefixOnly, false); !slices.Equal(a.Hashes, p.Hashes) || !a.Exact {
				t.Fatalf("%s: image chat hashes %d, messages before it %d", name, len(a.Hashes), len(p.Hashes))
			}
		}
		first := hash([]any{map[string]any{"role": "user", "content": []any{map[string]any{"type": "image_url", "image_url": map[string]any{"url": "u"}}}}}, true)
		if !first.Truncated || len(first.Hashes) != 0 {
			t.Fatalf("%s: an image first: %d hashes, truncated %v", name, len(first.Hashes), first.Truncated)
		}
	}
	for _, body := range srv.bodies {
		var got struct {
			Messages []any `json:"messages"`
			AddGen   *bool `json:"add_generation_prompt"`
		}
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatal(err)
		}
		if len(got.Messages) == 1 && (got.AddGen == nil || *got.AddGen) {
			t.Fatalf("engine rendered the cut chat with a generation prompt: %s", body)
		}
	}
}
