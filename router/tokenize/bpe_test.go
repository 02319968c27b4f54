package tokenize

import (
	"slices"
	"testing"

	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

// FuzzMetaspaceChunks checks that cutting SentencePiece words before "▁" (see
// initChunks) gives the same ids as merging each word whole, on Llama-2 and
// Gemma-3, whose vocabulary has a token with "▁" inside (">▁</").
func FuzzMetaspaceChunks(f *testing.F) {
	f.Add("Hello world, this is a fairly long sentence with spaces in it.   And more.")
	f.Add("<div>\n  <p>x</p> </div> > </ a>▁</b")
	f.Add("  \t  漢字 🤗 a▁▁b ▁▁▁ x  ")
	pairs := map[string][2]*Tokenizer{}
	for _, m := range []string{"llama2", "gemma3"} {
		plain, err := Load(tokenizetest.ModelDir(f, m))
		if err != nil {
			f.Fatal(err)
		}
		plain.model.spChunks = false
		chunked := loadModel(f, m)
		if !chunked.model.spChunks {
			f.Fatalf("%s: chunking not enabled", m)
		}
		pairs[m] = [2]*Tokenizer{plain, chunked}
	}
	f.Fuzz(func(t *testing.T, s string) {
		for m, p := range pairs {
			if a, b := p[0].Encode(s, false), p[1].Encode(s, false); !slices.Equal(a, b) {
				t.Fatalf("%s %q: whole %v, chunked %v", m, s, a, b)
			}
		}
	})
}
