package sim

import (
	"slices"
	"testing"
)

func TestWordTokenizer(t *testing.T) {
	var tk WordTokenizer
	tests := []struct {
		text string
		n    int
	}{
		{"", 0},
		{"hello", 1},
		{"hello world", 2},
		{" hello", 1},
		{"a  b", 3},                  // "a", " ", " b"
		{"line\n\nnext", 3},          // "line", "\n\n", "next"
		{"abcdefghijklmnopq", 3},     // 8 + 8 + 1
		{"<|user|>\nhi<|end|>\n", 5}, // "<|user|>", "\n", "hi<|end|", ">", "\n"
	}
	for _, tt := range tests {
		got := tk.Encode(tt.text)
		if len(got) != tt.n {
			t.Errorf("Encode(%q) = %d tokens, want %d", tt.text, len(got), tt.n)
		}
		for _, id := range got {
			if id < 256 || id >= VocabSize {
				t.Errorf("Encode(%q) id %d out of range", tt.text, id)
			}
		}
	}
	if !slices.Equal(tk.Encode("x y"), tk.Encode("x y")) {
		t.Fatal("not deterministic")
	}
	a, b := tk.Encode("the quick brown"), tk.Encode("the quick brown fox jumps")
	if !slices.Equal(a, b[:len(a)]) {
		t.Fatal("extending a text at a word boundary must keep its tokens as a prefix")
	}
	msgs := []Message{{"system", "be brief"}, {"user", "hi there"}}
	one, two := tk.Encode(tk.RenderChat(msgs[:1], false)), tk.Encode(tk.RenderChat(msgs, true))
	if !slices.Equal(one, two[:len(one)]) {
		t.Fatal("chat prefix must tokenize as a prefix")
	}
	for i, w := range outputWords {
		if ids := tk.Encode(w); len(ids) != 1 {
			t.Fatalf("output word %d %q is %d tokens", i, w, len(ids))
		}
	}
}
