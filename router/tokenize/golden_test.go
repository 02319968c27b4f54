package tokenize

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

// goldenModels are the tokenizers testdata/gen/gen.mjs writes goldens for.
var goldenModels = []string{"llama3", "qwen3", "deepseek_v3", "llama2", "gemma3", "llama2_metaspace", "llama3_meta", "cohere"}

// goFiles are tokenizer.json files from the test data of the Go module
// github.com/daulet/tokenizers, which scripts/deps.d/30-tokenizers.sh downloads
// into the module cache.
var goFiles = map[string]string{
	"llama3_meta": "Meta-Llama-3-8B-Instruct.json",
	"cohere":      "cohere-tokenizer.json",
}

// goFilePath returns the path of a goFiles entry; the test fails (never skips)
// when it is missing.
func goFilePath(t testing.TB, name string) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatalf("go env GOMODCACHE: %v", err)
	}
	p := filepath.Join(strings.TrimSpace(string(out)), "github.com/daulet/tokenizers@v1.24.0/test/data", goFiles[name])
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("tokenizer file missing (run scripts/deps.sh): %v", err)
	}
	return p
}

// variants are real tokenizer files with one component swapped, as in gen.mjs.
var variants = map[string]struct {
	base string
	edit map[string]any
}{
	"llama2_metaspace": {base: "llama2", edit: map[string]any{
		"normalizer":    nil,
		"pre_tokenizer": map[string]any{"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": false},
	}},
}

var (
	loadMu sync.Mutex // guards loaded
	loaded = map[string]*loadOnce{}
)

type loadOnce struct {
	once sync.Once
	tok  *Tokenizer
	err  error
}

// loadModel loads a test tokenizer once per test binary; different models load
// in parallel.
func loadModel(t testing.TB, name string) *Tokenizer {
	t.Helper()
	loadMu.Lock()
	l, ok := loaded[name]
	if !ok {
		l = &loadOnce{}
		loaded[name] = l
	}
	loadMu.Unlock()
	l.once.Do(func() { l.tok, l.err = loadUncached(t, name) })
	if l.err != nil {
		t.Fatalf("load %s: %v", name, l.err)
	}
	return l.tok
}

func loadUncached(t testing.TB, name string) (*Tokenizer, error) {
	if _, ok := goFiles[name]; ok {
		return Load(goFilePath(t, name))
	}
	v, ok := variants[name]
	if !ok {
		return Load(tokenizetest.ModelDir(t, name))
	}
	data, err := os.ReadFile(filepath.Join(tokenizetest.ModelDir(t, v.base), "tokenizer.json"))
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	for k, val := range v.edit {
		b, _ := json.Marshal(val)
		m[k] = b
	}
	data, _ = json.Marshal(m)
	return Parse(data)
}

type goldenLine struct {
	IDs []uint32 `json:"ids"`
	Raw []uint32 `json:"raw"`
}

// TestGolden compares Encode with the reference implementation's ids on every
// corpus string, with and without special tokens.
func TestGolden(t *testing.T) {
	corpus := tokenizetest.ReadJSONL[string](t, "testdata/corpus.jsonl")
	if len(corpus) < 2000 {
		t.Fatalf("corpus has %d strings, want at least 2000", len(corpus))
	}
	for _, m := range goldenModels {
		t.Run(m, func(t *testing.T) {
			t.Parallel()
			tok := loadModel(t, m)
			golden := tokenizetest.ReadJSONL[goldenLine](t, filepath.Join("testdata/golden", m+".jsonl"))
			if len(golden) != len(corpus) {
				t.Fatalf("golden has %d lines, corpus %d", len(golden), len(corpus))
			}
			bad := 0
			for i, s := range corpus {
				ids := tok.Encode(s, true)
				// Encode(s, false) is ids without the post-processor's tokens;
				// encoding once keeps the race-enabled run short.
				raw := ids[len(tok.prefix) : len(ids)-len(tok.suffix)]
				if i%50 == 0 && !slices.Equal(tok.Encode(s, false), raw) {
					t.Errorf("string %d: Encode(s, false) is not Encode(s, true) without special tokens", i)
				}
				if !slices.Equal(raw, golden[i].Raw) || !slices.Equal(ids, golden[i].IDs) {
					bad++
					if bad <= 5 {
						q, _ := json.Marshal(s)
						if len(q) > 200 {
							q = q[:200]
						}
						t.Errorf("string %d %s:\n got  %v\n want %v", i, q, head(raw), head(golden[i].Raw))
					}
				}
			}
			if bad > 0 {
				t.Errorf("%d of %d strings differ", bad, len(corpus))
			}
		})
	}
}

func head(ids []uint32) []uint32 {
	if len(ids) > 40 {
		return ids[:40]
	}
	return ids
}
