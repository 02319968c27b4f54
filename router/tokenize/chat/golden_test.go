package chat

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

var chatModels = []string{"llama3", "qwen3", "deepseek_v3", "gemma3"}

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
	e.once.Do(func() { e.enc, e.err = Load(tokenizetest.ModelDir(t, name)) })
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
	return tokenizetest.ReadJSONL[chatGolden](t, filepath.Join("testdata/golden", name+".jsonl"))
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
