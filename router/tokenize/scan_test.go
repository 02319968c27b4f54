package tokenize

import (
	"slices"
	"testing"
)

func spansOf(f finder, s string) [][2]int {
	var out [][2]int
	f.find(s, func(a, b int) { out = append(out, [2]int{a, b}) })
	return out
}

// checkScanner compares a hand-written scanner with regexp2 running the literal
// pattern on s.
func checkScanner(t testing.TB, pattern, s string) {
	t.Helper()
	re, err := newRegexFinder(pattern)
	if err != nil {
		t.Fatal(err)
	}
	got, want := spansOf(scannerFor(pattern), s), spansOf(re, s)
	if !slices.Equal(got, want) {
		t.Fatalf("pattern %q on %q:\n scanner %v\n regexp2 %v", pattern, s, got, want)
	}
}

var scanPatterns = []string{patGPT2, patLlama3, patQwen2}

var scanCases = []string{
	"", " ", "  ", "a", "Hello world", "Hello  world", "  leading", "trailing  ", "x \ny", "x\n \ny",
	"it's I'M we'll 'sound 'S 'LL 're 'Ve ſ 'ſ", "12345 1,234.5", "a1b2 ３４", " !!! ?? \r\n\r\nnext",
	"\t\tfoo", " \tfoo", "\u00a0x", "\u3000漢字", "a\u2028b", "a\u0085b", "emoji 🤗🤗 ok", "\r\r\n  \n\t",
	"don't", "x'", "'", "''s", " 'll", "\xff\xfe bad utf8 \xc3", "\n\n\n   ", "a   \n   b", " . , ;",
}

// TestScannerMatchesRegexp2 checks the hand-written scanners against the patterns
// run by a backtracking regex engine.
func TestScannerMatchesRegexp2(t *testing.T) {
	corpus := readJSONL[string](t, "testdata/corpus.jsonl")
	for _, p := range scanPatterns {
		for _, s := range scanCases {
			checkScanner(t, p, s)
		}
		for _, s := range corpus {
			if len(s) < 4096 { // regexp2 is slow on the longest inputs
				checkScanner(t, p, s)
			}
		}
	}
}

// FuzzScanner checks the scanners against regexp2 on arbitrary input.
func FuzzScanner(f *testing.F) {
	for _, s := range scanCases {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, p := range scanPatterns {
			checkScanner(t, p, s)
		}
	})
}

// FuzzEncode checks that arbitrary input never panics and that encoding is
// deterministic and insensitive to the word cache.
func FuzzEncode(f *testing.F) {
	for _, s := range scanCases {
		f.Add(s)
	}
	f.Add("<|im_start|>user\nhi<|im_end|>")
	f.Add("<s>[INST] hi [/INST]")
	tok := loadModel(f, "qwen3")
	sp := loadModel(f, "llama2")
	f.Fuzz(func(t *testing.T, s string) {
		for _, tk := range []*Tokenizer{tok, sp} {
			a := tk.Encode(s, true)
			b := tk.Encode(s, true)
			if !slices.Equal(a, b) {
				t.Fatalf("encode %q not deterministic: %v then %v", s, a, b)
			}
			if len(s) > 0 && len(a) == 0 {
				t.Fatalf("encode %q gave no tokens", s)
			}
		}
	})
}
