package sim

import (
	"errors"
	"testing"
)

// FuzzDecodeRequest feeds arbitrary bodies to the request decoders: they must never
// panic, and every error must be an *apiError (answered as a 4xx).
func FuzzDecodeRequest(f *testing.F) {
	seeds := []string{
		`{"model":"kvsim","prompt":"Hello, my name is","max_tokens":16,"temperature":0}`,
		`{"prompt":[128000,9906,11,856,836,374],"max_tokens":8,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}`,
		`{"prompt":[[1,2,3]],"min_tokens":2,"max_tokens":4}`,
		`{"prompt":["one prompt"],"n":1}`,
		`{"model":"kvsim","messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":"Hi"}],"max_completion_tokens":32,"stream":true}`,
		`{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"cache_salt":"s"}`,
		`{"messages":[{"role":"assistant","content":null}],"add_generation_prompt":false}`,
		`{"prompt":[1,-1]}`, `{"prompt":[1.5]}`, `{"prompt":{}}`, `[]`, `null`, `{"max_tokens":1e99}`,
	}
	for _, s := range seeds {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	tz := tokenizers{tk: WordTokenizer{}, tmpl: WordTokenizer{}}
	f.Fuzz(func(t *testing.T, body []byte, chat bool) {
		p, err := decodeRequest(body, chat, tz)
		var ae *apiError
		if err != nil {
			if !errors.As(err, &ae) || ae.status != 400 {
				t.Fatalf("error %v is not a 400 apiError", err)
			}
			return
		}
		if len(p.tokens) == 0 || p.maxTokens < 0 || p.minTokens < 0 || (p.maxTokens > 0 && p.minTokens > p.maxTokens) {
			t.Fatalf("accepted invalid params %+v", p)
		}
		if _, err := decodeTokenize(body, tz); err != nil && !errors.As(err, &ae) {
			t.Fatalf("tokenize error %v is not an apiError", err)
		}
	})
}
