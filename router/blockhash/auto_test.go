package blockhash

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/kvroute/kvroute/proto"
)

// countingHasher stands for the engine mode in auto mode tests: it counts its requests
// and hashes in approx mode.
type countingHasher struct{ n atomic.Int64 }

func (c *countingHasher) Hash(ctx context.Context, req *Request, dst []proto.BlockHash) (Result, error) {
	c.n.Add(1)
	return Approx{}.Hash(ctx, req, dst)
}

func writeTokenizer(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestFindTokenizer(t *testing.T) {
	perModel := t.TempDir()
	writeTokenizer(t, filepath.Join(perModel, "Qwen", "Qwen3-8B"))
	writeTokenizer(t, filepath.Join(perModel, "llama"))
	if err := os.MkdirAll(filepath.Join(perModel, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Dir(perModel) // "../" of perModel: never looked at
	writeTokenizer(t, filepath.Join(outside, "escape"))
	one := t.TempDir()
	writeTokenizer(t, one)
	notFile := t.TempDir()
	if err := os.MkdirAll(filepath.Join(notFile, "m", "tokenizer.json"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ dir, model, want string }{
		{"", "llama", ""},
		{perModel, "llama", filepath.Join(perModel, "llama")},
		{perModel, "Qwen/Qwen3-8B", filepath.Join(perModel, "Qwen", "Qwen3-8B")},
		{perModel, "Qwen", ""},
		{perModel, "empty", ""},
		{perModel, "missing", ""},
		{perModel, "", ""},
		{perModel, "../escape", ""},
		{perModel, "/llama", ""},
		{one, "anything", one},
		{one, "", one},
		{one, "../x", one},
		{notFile, "m", ""},
	} {
		if got := FindTokenizer(tc.dir, tc.model); got != tc.want {
			t.Errorf("FindTokenizer(%q, %q) = %q, want %q", tc.dir, tc.model, got, tc.want)
		}
	}
}

// Auto hashes a model with a tokenizer in local mode (exact, no engine call), every other
// model with the engine, and a tokenizer that does not load leaves its model in engine
// mode with the error reported.
func TestAuto(t *testing.T) {
	dir := t.TempDir()
	writeTokenizer(t, filepath.Join(dir, "local"))
	writeTokenizer(t, filepath.Join(dir, "broken"))
	errBroken := errors.New("broken tokenizer")
	var loads atomic.Int64
	load := func(d string) (Tokenizer, error) {
		loads.Add(1)
		if filepath.Base(d) == "broken" {
			return nil, errBroken
		}
		return wordTok{}, nil
	}
	eng := &countingHasher{}
	a, err := NewAuto(AutoOptions{Dir: dir, Load: load, Engine: eng})
	if err != nil {
		t.Fatal(err)
	}
	if mode, d, err := a.Resolve("local"); mode != ModeLocal || d != filepath.Join(dir, "local") || err != nil {
		t.Fatalf("Resolve(local) = %q %q %v", mode, d, err)
	}
	if mode, d, err := a.Resolve("broken"); mode != ModeEngine || d != "" || !errors.Is(err, errBroken) {
		t.Fatalf("Resolve(broken) = %q %q %v", mode, d, err)
	}
	msgs := conversation(2, 30)[1]
	for i := 0; i < 3; i++ {
		req := chatReq(t, msgs)
		req.Model = "local"
		r, err := a.Hash(t.Context(), req, nil)
		if err != nil || !r.Exact {
			t.Fatalf("local model: %+v %v", r, err)
		}
		want, _ := NewLocal(wordTok{}).Hash(t.Context(), req, nil)
		if !slices.Equal(r.Hashes, want.Hashes) {
			t.Fatal("local model: hashes differ from the local mode's")
		}
		for _, m := range []string{"broken", "engine-only", "../local"} {
			req.Model = m
			if _, err := a.Hash(t.Context(), req, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	if eng.n.Load() != 9 {
		t.Errorf("engine asked %d times, want 9 (3 models without a tokenizer, 3 rounds)", eng.n.Load())
	}
	if loads.Load() != 2 {
		t.Errorf("tokenizers loaded %d times, want once each", loads.Load())
	}
	if mode, _, _ := a.Resolve("engine-only"); mode != ModeEngine {
		t.Errorf("Resolve(engine-only) = %q", mode)
	}

	if _, err := NewAuto(AutoOptions{Dir: dir, Engine: eng}); err == nil {
		t.Error("NewAuto with a dir and no loader accepted")
	}
	if _, err := NewAuto(AutoOptions{}); err == nil {
		t.Error("NewAuto without an engine accepted")
	}
}

// Past MaxModels a model's mode is not remembered, and still right.
func TestAutoMaxModels(t *testing.T) {
	eng := &countingHasher{}
	a, err := NewAuto(AutoOptions{Engine: eng, MaxModels: 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"a", "b", "c", "d", "a"} {
		if mode, _, err := a.Resolve(m); mode != ModeEngine || err != nil {
			t.Fatalf("Resolve(%q) = %q %v", m, mode, err)
		}
	}
	if n := len(*a.modes.Load()); n != 2 {
		t.Errorf("%d models remembered, want 2", n)
	}
}
