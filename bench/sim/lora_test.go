package sim

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
)

// A worker with adapters lists them with their parent as vLLM does, serves them under
// their own name, and caches each adapter's blocks apart from the base model's and from
// each other's; an adapter it does not serve is 404.
func TestLoRA(t *testing.T) {
	f := startFleet(t, 1, func(c *Config) { c.LoRA = []string{"sql", "chat"} })
	w := f.Workers()[0]
	resp, err := http.Get(w.URL() + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Data []struct {
			ID     string  `json:"id"`
			Root   string  `json:"root"`
			Parent *string `json:"parent"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var got []string
	for _, m := range list.Data {
		p := "null"
		if m.Parent != nil {
			p = *m.Parent
		}
		got = append(got, m.ID+"<"+p+" "+m.Root)
	}
	if want := []string{"kvsim<null kvsim", "sql<kvsim /adapters/sql", "chat<kvsim /adapters/chat"}; !slices.Equal(got, want) {
		t.Fatalf("models %v, want %v", got, want)
	}

	prompt := words(0, 64)
	cached := func(model string) int {
		t.Helper()
		resp, out := post(t, w.URL()+"/v1/completions", map[string]any{"model": model, "prompt": prompt, "max_tokens": 1})
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d: %s", model, resp.StatusCode, out)
		}
		var c struct {
			Model string `json:"model"`
			Usage Usage  `json:"usage"`
		}
		if err := json.Unmarshal(out, &c); err != nil || c.Model != model {
			t.Fatalf("%s: answer %s: %v", model, out, err)
		}
		return c.Usage.PromptTokensDetails.CachedTokens
	}
	for _, step := range []struct {
		model string
		want  int
	}{
		{"kvsim", 0}, {"sql", 0}, {"chat", 0}, {"sql", 48}, {"kvsim", 48}, {"chat", 48},
	} {
		if got := cached(step.model); got != step.want {
			t.Fatalf("%s: cached %d tokens, want %d", step.model, got, step.want)
		}
	}
	resp, out := post(t, w.URL()+"/v1/completions", map[string]any{"model": "nope", "prompt": prompt})
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown adapter: status %d: %s", resp.StatusCode, out)
	}

	if ra, rb := w.Ranks()[0].EngineBlockHashesLoRA("sql", "", make([]uint32, 32)), w.Ranks()[0].EngineBlockHashes("", make([]uint32, 32)); ra[0] == rb[0] || ra[1] == rb[1] {
		t.Fatalf("adapter and base hashes meet: %v %v", ra, rb)
	}
}
