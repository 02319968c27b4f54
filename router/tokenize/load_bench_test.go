package tokenize

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

// BenchmarkParse measures building a tokenizer from tokenizer.json (Gemma-3: 262k
// vocabulary, 515k merges).
//
//	go test -run XXX -bench Parse -count 6 ./router/tokenize > new.txt; benchstat old.txt new.txt
func BenchmarkParse(b *testing.B) {
	data, err := os.ReadFile(filepath.Join(tokenizetest.ModelDir(b, "gemma3"), "tokenizer.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}
