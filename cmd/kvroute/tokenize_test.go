package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kvroute/kvroute/router/tokenize/chat"
	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

func runTokenizeWith(t *testing.T, stdin string, args ...string) (int, []uint32, string) {
	t.Helper()
	tokenizeStdin = strings.NewReader(stdin)
	defer func() { tokenizeStdin = os.Stdin }()
	var out, errb bytes.Buffer
	code := run(append([]string{"tokenize"}, args...), &out, &errb)
	var res struct {
		Tokens []uint32 `json:"tokens"`
		Prompt string   `json:"prompt"`
	}
	if code == 0 {
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			t.Fatalf("output %q: %v", out.String(), err)
		}
	}
	return code, res.Tokens, res.Prompt
}

// TestTokenizeCommand checks that the command prints what the library computes,
// for text and for a chat request, and rejects bad input.
func TestTokenizeCommand(t *testing.T) {
	dir := tokenizetest.ModelDir(t, "qwen3")
	enc, err := chat.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	text := "Hello  world! <|im_start|> 你好"
	code, ids, _ := runTokenizeWith(t, text, "--tokenizer", dir)
	if code != 0 || !slices.Equal(ids, enc.Encode(text, true)) {
		t.Errorf("text: code %d ids %v", code, ids)
	}
	req := `{"messages":[{"role":"user","content":"Hi"}]}`
	want, err := enc.EncodeChat([]byte(req))
	if err != nil {
		t.Fatal(err)
	}
	code, ids, prompt := runTokenizeWith(t, req, "--tokenizer", filepath.Join(dir, "tokenizer.json"), "--chat", "--prompt")
	if code != 0 || !slices.Equal(ids, want) || prompt != "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" {
		t.Errorf("chat: code %d ids %v prompt %q", code, ids, prompt)
	}
	if code, _, _ := runTokenizeWith(t, "not json", "--tokenizer", dir, "--chat"); code != 1 {
		t.Errorf("bad chat request: code %d, want 1", code)
	}
	if code, _, _ := runTokenizeWith(t, "", "--tokenizer", "/nonexistent"); code != 1 {
		t.Errorf("missing tokenizer: code %d, want 1", code)
	}
	if code, _, _ := runTokenizeWith(t, ""); code != 2 {
		t.Errorf("no flags: code %d, want 2", code)
	}
}
