package tokenize

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// tinyByteLevel is a minimal byte-level BPE tokenizer.json: every printable ASCII
// byte, "Ġ" (space), one merge chain for "hello", a special token and a BOS
// template.
func tinyByteLevel() string {
	var vocab []string
	id := 0
	add := func(s string) {
		vocab = append(vocab, `"`+strings.ReplaceAll(s, `"`, `\"`)+`": `+itoaTest(id))
		id++
	}
	for c := '!'; c <= '~'; c++ {
		if c == '\\' {
			add(`\\`)
			continue
		}
		add(string(c))
	}
	add("Ġ")
	for _, s := range []string{"he", "ll", "hell", "hello", "Ġhello"} {
		add(s)
	}
	return `{"added_tokens": [{"id": 1000, "content": "<s>", "special": true}],
	"normalizer": null,
	"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
	"post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}],
		"special_tokens": {"<s>": {"id": "<s>", "ids": [1000]}}},
	"model": {"type": "BPE", "vocab": {` + strings.Join(vocab, ", ") + `},
		"merges": ["h e", "l l", "he ll", "hell o", ["Ġ", "hello"]]}}`
}

func itoaTest(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoaTest(n/10) + string(rune('0'+n%10))
}

func TestParseTiny(t *testing.T) {
	tok, err := Parse([]byte(tinyByteLevel()))
	if err != nil {
		t.Fatal(err)
	}
	hello, _ := tok.TokenID("hello")
	sphello, _ := tok.TokenID("Ġhello")
	if got, want := tok.Encode("hello hello<s>", true), []uint32{1000, hello, sphello, 1000}; !slices.Equal(got, want) {
		t.Fatalf("Encode: got %v, want %v", got, want)
	}
}

func TestParseErrors(t *testing.T) {
	tiny := tinyByteLevel()
	tests := []struct {
		name        string
		json        string
		unsupported bool
	}{
		{"not json", `{"model": `, false},
		{"wordpiece", `{"model": {"type": "WordPiece", "vocab": {}}}`, true},
		{"unigram", `{"model": {"type": "Unigram", "vocab": []}}`, false},
		{"dropout", `{"model": {"type": "BPE", "vocab": {}, "merges": [], "dropout": 0.1}}`, true},
		{"merge not in vocab", `{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}`, true},
		{"merge without space", `{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["ab"]}}`, false},
		{"unknown normalizer", strings.Replace(tiny, `"normalizer": null`, `"normalizer": {"type": "Precompiled"}`, 1), true},
		{"unknown pre_tokenizer", strings.Replace(tiny, `{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}`, `{"type": "Punctuation"}`, 1), true},
		{"bad split behavior", strings.Replace(tiny, `{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}`, `{"type": "Split", "pattern": {"String": " "}, "behavior": "Sideways"}`, 1), true},
		{"bad regex", strings.Replace(tiny, `{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}`, `{"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}`, 1), true},
		{"template without sequence", strings.Replace(tiny, `{"Sequence": {"id": "A"}}`, `{"SpecialToken": {"id": "<s>"}}`, 1), true},
		{"huge id", `{"model": {"type": "BPE", "vocab": {"a": 99999999}, "merges": []}}`, false},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.json))
		if err == nil {
			t.Errorf("%s: no error", tt.name)
			continue
		}
		if errors.Is(err, ErrUnsupported) != tt.unsupported {
			t.Errorf("%s: %v; wraps ErrUnsupported %v, want %v", tt.name, err, !tt.unsupported, tt.unsupported)
		}
	}
}

// FuzzParse checks that no tokenizer.json panics Parse, and that a tokenizer that
// parses encodes without panicking, the same ids every time (also after encoding
// other text, which reuses the pooled buffers), and that AppendEncode appends
// exactly Encode's ids.
func FuzzParse(f *testing.F) {
	f.Add([]byte(tinyByteLevel()), "hello world <s>")
	f.Add([]byte(`{"model": {"type": "BPE", "vocab": {"▁": 0, "a": 1, "<0x41>": 2}, "merges": [], "byte_fallback": true, "unk_token": "a"},
		"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}}`), "a A b")
	f.Add([]byte(`{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "first"}}`), "a a")
	f.Fuzz(func(t *testing.T, data []byte, text string) {
		tok, err := Parse(data)
		if err != nil {
			return
		}
		ids := tok.Encode(text, true)
		tok.Encode(text+text, false)
		if again := tok.Encode(text, true); !slices.Equal(ids, again) {
			t.Fatalf("%q: %v, then %v", text, ids, again)
		}
		plain := tok.Encode(text, false)
		if app := tok.AppendEncode([]uint32{7, 9}, text, false); !slices.Equal(app, append([]uint32{7, 9}, plain...)) {
			t.Fatalf("%q: AppendEncode %v, Encode %v", text, app, plain)
		}
	})
}
