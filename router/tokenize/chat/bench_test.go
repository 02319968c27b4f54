package chat

import (
	"encoding/json"
	"strings"
	"testing"
)

// BenchmarkEncodeChat measures EncodeChat (parse the request, render the Qwen3
// template, encode) on the 16th turn of a conversation of 1 KB messages, with the
// conversation cache holding the 15th turn ("cached") and without a cache
// ("nocache").
//
//	go test -run XXX -bench EncodeChat -count 6 ./router/tokenize/chat > new.txt; benchstat old.txt new.txt
func BenchmarkEncodeChat(b *testing.B) {
	base := loadEncoder(b, "qwen3")
	para := strings.Repeat("The router keeps a map of which worker holds which prefix, and it scores each worker by the overlap. ", 10)
	var msgs []map[string]string
	var bodies [][]byte
	for turn := 0; turn < 16; turn++ {
		msgs = append(msgs, map[string]string{"role": "user", "content": para[:1000]})
		body, err := json.Marshal(map[string]any{"messages": msgs})
		if err != nil {
			b.Fatal(err)
		}
		bodies = append(bodies, body)
		msgs = append(msgs, map[string]string{"role": "assistant", "content": para[7:1007]})
	}
	last, prev := bodies[15], bodies[14]
	for _, mode := range []string{"nocache", "cached"} {
		b.Run(mode, func(b *testing.B) {
			size := 0
			if mode == "cached" {
				size = DefaultCacheBytes
			}
			enc := NewEncoder(base.Tokenizer(), base.Config(), size)
			b.ReportAllocs()
			b.SetBytes(int64(len(last)))
			for b.Loop() {
				if mode == "cached" {
					b.StopTimer()
					if _, err := enc.EncodeChat(prev); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				if _, err := enc.EncodeChat(last); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkParseCached is the parse of a repeated 2 KB chat request with the usual
// scalar members (model, stream, max_tokens, temperature, top_p, user) and its two
// messages in the message cache: what local mode does per request before rendering.
//
//	go test -run '^$' -bench ParseCached -count 6 ./router/tokenize/chat > new.txt; benchstat old.txt new.txt
func BenchmarkParseCached(b *testing.B) {
	body, err := json.Marshal(map[string]any{
		"model": "Qwen/Qwen3-8B", "stream": false, "max_tokens": 128, "temperature": 0.7, "top_p": 0.95, "user": "u-123",
		"messages": []map[string]string{
			{"role": "system", "content": "You are a helpful assistant."},
			{"role": "user", "content": strings.Repeat("lorem ipsum dolor sit amet ", 70)},
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	e := &Encoder{msgs: newMsgCache(1 << 20)}
	if _, _, err := e.parseCached(body); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, _, err := e.parseCached(body); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRender renders Qwen3's chat template for a 2 KB request of two messages (a
// system prompt and a user turn): the render local mode does per request.
//
//	go test -run '^$' -bench '^BenchmarkRender$' -count 6 ./router/tokenize/chat > new.txt; benchstat old.txt new.txt
func BenchmarkRender(b *testing.B) {
	enc := loadEncoder(b, "qwen3")
	body := []byte(`{"model":"m","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"` +
		strings.Repeat("lorem ipsum dolor sit amet ", 70) + `"}]}`)
	req, err := ParseRequest(body)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := enc.Config().Render(req.Messages, req.Options); err != nil {
			b.Fatal(err)
		}
	}
}
