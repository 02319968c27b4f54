package tokenize

import (
	"slices"
	"testing"

	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

func spansOf(f finder, s string) [][2]int {
	return f.find(s, nil)
}

// checkScanner compares a hand-written scanner with regexp2 running the literal
// pattern on s.
func checkScanner(t testing.TB, pattern, s string) {
	t.Helper()
	re, err := newRegexFinder(pattern)
	if err != nil {
		t.Fatal(err)
	}
	got, want := spansOf(finderFor(pattern), s), spansOf(re, s)
	if !slices.Equal(got, want) {
		t.Fatalf("pattern %q on %q:\n scanner %v\n regexp2 %v", pattern, s, got, want)
	}
}

var scanPatterns = []string{patGPT2, patLlama3, patQwen2, patDSDigits, patDSCJK, patDSMain}

var scanCases = []string{
	"", " ", "  ", "a", "Hello world", "Hello  world", "  leading", "trailing  ", "x \ny", "x\n \ny",
	"it's I'M we'll 'sound 'S 'LL 're 'Ve ſ 'ſ", "12345 1,234.5", "a1b2 ３４", " !!! ?? \r\n\r\nnext",
	"\t\tfoo", "a1b2c3 12345 x.y-z", "中文字かなカナ abc", " .x\r\n", "e\u0301\u0301 a\u0300", "$x #tag @me", " \tfoo", "\u00a0x", "\u3000漢字", "a\u2028b", "a\u0085b", "emoji 🤗🤗 ok", "\r\r\n  \n\t",
	"don't", "x'", "'", "''s", " 'll", "\xff\xfe bad utf8 \xc3", "\n\n\n   ", "a   \n   b", " . , ;",
}

// TestScannerMatchesRegexp2 checks the hand-written scanners against the patterns
// run by a backtracking regex engine.
func TestScannerMatchesRegexp2(t *testing.T) {
	corpus := tokenizetest.ReadJSONL[string](t, "testdata/corpus.jsonl")
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

// TestKnownPatternsUseScanners checks that the real tokenizer files' Split
// patterns are the ones the hand-written scanners implement, so they never fall
// back to regexp2.
func TestKnownPatternsUseScanners(t *testing.T) {
	for _, m := range []string{"llama3", "qwen3", "deepseek_v3"} {
		tok := loadModel(t, m)
		var walk func(p preTokenizer)
		n := 0
		walk = func(p preTokenizer) {
			switch p := p.(type) {
			case seqPre:
				for _, q := range p {
					walk(q)
				}
			case *splitPre:
				n++
				if _, ok := p.f.(*regexFinder); ok {
					t.Errorf("%s: a Split pattern runs on regexp2", m)
				}
			}
		}
		walk(tok.pre)
		if n == 0 {
			t.Errorf("%s: no Split pre-tokenizer found", m)
		}
	}
}
