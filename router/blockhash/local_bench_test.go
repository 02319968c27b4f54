package blockhash

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/router/tokenize/chat"
	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

// BenchmarkLocalChat measures the local mode on a 16-turn chat of 1 KB messages with
// the real Qwen3 tokenizer and template, its conversation cache off: "composed" hands
// the tokenizer a body made of the messages and options (appendTokenizeBody), "body"
// the client's body as it is (Request.Body), one JSON pass less.
//
//	go test -run '^$' -bench LocalChat -benchmem -count 6 ./router/blockhash > new.txt; benchstat -col /body new.txt
func BenchmarkLocalChat(b *testing.B) {
	enc, err := chat.Load(tokenizetest.ModelDir(b, "qwen3"))
	if err != nil {
		b.Fatal(err)
	}
	enc = chat.NewEncoder(enc.Tokenizer(), enc.Config(), 0)
	para := strings.Repeat("The router keeps a map of which worker holds which prefix, and it scores each worker by the overlap. ", 10)
	var msgs []map[string]string
	for turn := 0; turn < 16; turn++ {
		msgs = append(msgs, map[string]string{"role": "user", "content": para[:1000]})
		msgs = append(msgs, map[string]string{"role": "assistant", "content": para[7:1007]})
	}
	body, err := json.Marshal(map[string]any{"model": "m", "stream": true, "max_tokens": 64, "messages": msgs})
	if err != nil {
		b.Fatal(err)
	}
	rawMsgs, err := json.Marshal(msgs)
	if err != nil {
		b.Fatal(err)
	}
	l := NewLocal(enc)
	for _, mode := range []string{"composed", "client"} {
		b.Run("body="+mode, func(b *testing.B) {
			req := &Request{Model: "m", BlockSize: 16, Messages: rawMsgs}
			if mode == "client" {
				req.Body = body
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			var dst []proto.BlockHash
			for b.Loop() {
				r, err := l.Hash(b.Context(), req, dst[:0])
				if err != nil {
					b.Fatal(err)
				}
				dst = r.Hashes
			}
		})
	}
}
