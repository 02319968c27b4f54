//go:build gonjacompare

// This file measures github.com/nikolalohinski/gonja/v2 against the jinja package
// (issue #16) and is kept out of the normal build because the module does not depend
// on gonja. To run it:
//
//	go get github.com/nikolalohinski/gonja/v2@v2.9.1
//	go test -tags gonjacompare -run Gonja -v ./router/tokenize/chat
//	go test -tags gonjacompare -run '^$' -bench 'RenderTemplate' -benchmem -count 5 ./router/tokenize/chat > cmp.txt && benchstat -col /impl cmp.txt
//	git checkout go.mod go.sum
//
// The shim is what transformers adds to a plain Jinja environment: trim_blocks,
// lstrip_blocks and the raise_exception and strftime_now globals. Template values are
// converted once, objects to gonja's insertion-ordered *exec.Dict.

package chat

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/nikolalohinski/gonja/v2"
	"github.com/nikolalohinski/gonja/v2/builtins"
	"github.com/nikolalohinski/gonja/v2/config"
	"github.com/nikolalohinski/gonja/v2/exec"
	"github.com/nikolalohinski/gonja/v2/loaders"

	"github.com/kvroute/kvroute/router/tokenize/chat/jinja"
	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

var errRaised = errors.New("raise_exception")

// gonjaEnv is gonja's default environment plus transformers' two globals.
func gonjaEnv() (*config.Config, *exec.Environment) {
	gonja.SetLoggerOutput(io.Discard)
	cfg := config.New()
	cfg.TrimBlocks = true
	cfg.LeftStripBlocks = true
	ctx := exec.EmptyContext().Update(builtins.GlobalFunctions).Update(builtins.GlobalVariables)
	ctx.Set("raise_exception", func(_ *exec.Evaluator, a *exec.VarArgs) (*exec.Value, error) {
		msg := ""
		if len(a.Args) > 0 {
			msg = a.Args[0].String()
		}
		return nil, fmt.Errorf("%w: %s", errRaised, msg)
	})
	ctx.Set("strftime_now", func(_ *exec.Evaluator, a *exec.VarArgs) (*exec.Value, error) {
		if len(a.Args) != 1 {
			return nil, errors.New("strftime_now takes one argument")
		}
		return exec.AsValue(jinja.Strftime(jinja.Now(), a.Args[0].String())), nil
	})
	return cfg, &exec.Environment{
		Context:           ctx,
		Filters:           builtins.Filters,
		Tests:             builtins.Tests,
		ControlStructures: builtins.ControlStructures,
		Methods:           builtins.Methods,
	}
}

// gonjaParse parses src as a gonja template; gonja may panic on some inputs, which
// is reported as an error.
func gonjaParse(src string) (t *exec.Template, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	cfg, env := gonjaEnv()
	loader, err := loaders.NewShiftedLoader("root", strings.NewReader(src), loaders.MustNewFileSystemLoader(""))
	if err != nil {
		return nil, err
	}
	return exec.NewTemplate("root", cfg, loader, env)
}

// gonjaRender renders with vars already converted by toGonja.
func gonjaRender(t *exec.Template, vars map[string]any) (out string, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return t.ExecuteToString(exec.NewContext(vars))
}

// toGonja converts a jinja value to what gonja takes: objects become ordered
// *exec.Dict, integers int.
func toGonja(v jinja.Value) any {
	switch x := v.(type) {
	case int64:
		return int(x)
	case []jinja.Value:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = toGonja(e)
		}
		return out
	case *jinja.Dict:
		d := exec.NewDict()
		for _, k := range x.Keys() {
			e, _ := x.Get(k)
			d.Pairs = append(d.Pairs, &exec.Pair{Key: exec.AsValue(k), Value: exec.AsValue(toGonja(e))})
		}
		return d
	default:
		return v
	}
}

func varsToGonja(vars map[string]jinja.Value) map[string]any {
	out := make(map[string]any, len(vars))
	for k, v := range vars {
		out[k] = toGonja(v)
	}
	return out
}

// TestGonjaJinjaCases renders the jinja package's Python-golden cases
// (jinja/testdata/cases.json, golden.json) with gonja.
func TestGonjaJinjaCases(t *testing.T) {
	var cases []struct {
		T    string          `json:"t"`
		Vars json.RawMessage `json:"vars"`
	}
	var golden []struct {
		Out   *string `json:"out"`
		Error string  `json:"error"`
	}
	tokenizetest.ReadJSON(t, "jinja/testdata/cases.json", &cases)
	tokenizetest.ReadJSON(t, "jinja/testdata/golden.json", &golden)
	pass := 0
	for i, c := range cases {
		vars := map[string]jinja.Value{}
		if len(c.Vars) > 0 {
			v, err := jinja.FromJSON(c.Vars)
			if err != nil {
				t.Fatal(err)
			}
			d := v.(*jinja.Dict)
			for _, k := range d.Keys() {
				vars[k], _ = d.Get(k)
			}
		}
		g := golden[i]
		tmpl, err := gonjaParse(c.T)
		if err != nil {
			if g.Out == nil {
				pass++
				continue
			}
			t.Errorf("case %d %q: parse: %v", i, c.T, firstLine(err))
			continue
		}
		out, err := gonjaRender(tmpl, varsToGonja(vars))
		switch {
		case g.Out == nil && err == nil:
			t.Errorf("case %d %q: Python fails (%s), got %q", i, c.T, g.Error, out)
		case g.Out != nil && err != nil:
			t.Errorf("case %d %q: %v, Python gives %q", i, c.T, firstLine(err), *g.Out)
		case g.Out != nil && out != *g.Out:
			t.Errorf("case %d %q:\n got  %q\n want %q", i, c.T, out, *g.Out)
		default:
			pass++
		}
	}
	t.Logf("gonja: %d of %d cases match Python's jinja2", pass, len(cases))
}

func firstLine(err error) string {
	s := err.Error()
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// chatTemplates returns the template sources of a model's tokenizer_config.json by
// name, as ParseConfig names them.
func chatTemplates(t testing.TB, model string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(tokenizetest.ModelDir(t, model), "tokenizer_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		T json.RawMessage `json:"chat_template"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	var src string
	if json.Unmarshal(raw.T, &src) == nil {
		return map[string]string{"default": src}
	}
	var named []struct{ Name, Template string }
	if err := json.Unmarshal(raw.T, &named); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, n := range named {
		out[n.Name] = n.Template
	}
	return out
}

// renderVars builds the variables Config.Render gives the template.
func renderVars(c *Config, req *Request) (string, map[string]jinja.Value, error) {
	o := req.Options
	_, name, err := c.pick(&o)
	if err != nil {
		return "", nil, err
	}
	messages := req.Messages
	if c.iteratesContent[name] {
		messages = asParts(messages, o.ContentParts)
	}
	vars := map[string]jinja.Value{}
	for k, v := range c.SpecialTokens {
		vars[k] = v
	}
	for k, v := range o.Vars {
		vars[k] = v
	}
	vars["messages"] = messages
	vars["tools"] = nil
	if o.Tools != nil {
		vars["tools"] = o.Tools
	}
	vars["documents"] = nil
	if o.Documents != nil {
		vars["documents"] = o.Documents
	}
	vars["add_generation_prompt"] = o.AddGenerationPrompt
	return name, vars, nil
}

// TestGonjaChatGolden renders the chat goldens (testdata/golden) with gonja and the
// models' real templates, comparing prompts with Python's.
func TestGonjaChatGolden(t *testing.T) {
	for _, m := range chatModels {
		t.Run(m, func(t *testing.T) {
			enc := loadEncoder(t, m)
			srcs := chatTemplates(t, m)
			tmpls := map[string]*exec.Template{}
			for name, src := range srcs {
				tm, err := gonjaParse(src)
				if err != nil {
					t.Fatalf("gonja cannot parse template %q: %v", name, lastPart(err))
				}
				tmpls[name] = tm
			}
			pass, total := 0, 0
			kinds := map[string]int{}
			for i, g := range readGolden(t, m) {
				total++
				req, err := ParseRequest(g.Request)
				if err != nil {
					if g.Error != "" {
						pass++
					} else {
						t.Errorf("case %d: %v", i, err)
					}
					continue
				}
				name, vars, err := renderVars(enc.Config(), req)
				if err != nil {
					if g.Error != "" {
						pass++
					}
					continue
				}
				out, err := gonjaRender(tmpls[name], varsToGonja(vars))
				switch {
				case g.Error != "" && err == nil:
					kinds["renders where Python raises"]++
					t.Logf("case %d: Python raises %q, gonja renders %q", i, g.Error, out)
				case g.Error == "" && err != nil:
					kinds[firstLine(err)]++
				case g.Error == "" && out != g.Prompt:
					k := "prompt differs"
					kinds[k]++
					if kinds[k] <= 3 {
						t.Logf("case %d differs at byte %d:\n got  %q\n want %q", i, diffAt(out, g.Prompt), clip(out, g.Prompt), clip(g.Prompt, out))
					}
				default:
					pass++
				}
			}
			keys := make([]string, 0, len(kinds))
			for k := range kinds {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				t.Errorf("%d cases: %s", kinds[k], k)
			}
			t.Logf("gonja: %d of %d %s goldens match", pass, total, m)
		})
	}
}

func diffAt(a, b string) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}

// clip returns a's bytes around its first difference from b.
func clip(a, b string) string {
	i := diffAt(a, b)
	lo, hi := max(0, i-60), min(len(a), i+60)
	return a[lo:hi]
}

// BenchmarkRenderTemplate renders the Qwen3 and Llama 3 chat templates on a system
// prompt and a 16-turn conversation of 1 KB messages (31 KB of prompt) with the jinja
// package and with gonja, the template parsed and the variables converted outside
// the loop. Compare:
//
//	go test -tags gonjacompare -run '^$' -bench RenderTemplate -benchmem -count 5 ./router/tokenize/chat > cmp.txt && benchstat -col /impl cmp.txt
func BenchmarkRenderTemplate(b *testing.B) {
	for _, m := range []string{"qwen3", "llama3"} {
		enc := loadEncoder(b, m)
		body := benchBody(b)
		req, err := ParseRequest(body)
		if err != nil {
			b.Fatal(err)
		}
		name, vars, err := renderVars(enc.Config(), req)
		if err != nil {
			b.Fatal(err)
		}
		ours := enc.Config().Templates[name]
		want, err := ours.Render(vars)
		if err != nil {
			b.Fatal(err)
		}
		theirs, err := gonjaParse(chatTemplates(b, m)[name])
		if err != nil {
			b.Fatal(err)
		}
		gvars := varsToGonja(vars)
		got, err := gonjaRender(theirs, gvars)
		if err != nil {
			b.Fatalf("gonja %s: %v", m, err)
		}
		if got != want {
			b.Logf("%s: gonja's prompt differs from ours at byte %d of %d (timed anyway)", m, diffAt(got, want), len(want))
		}
		b.Run("model="+m+"/impl=jinja", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(want)))
			for b.Loop() {
				if _, err := ours.Render(vars); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("model="+m+"/impl=gonja", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(want)))
			for b.Loop() {
				if _, err := theirs.ExecuteToString(exec.NewContext(gvars)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchBody is a 16-turn conversation of 1 KB messages with a system prompt.
func benchBody(b *testing.B) []byte {
	para := strings.Repeat("The router keeps a map of which worker holds which prefix, and it scores each worker by the overlap. ", 10)
	msgs := []map[string]string{{"role": "system", "content": "You are a helpful assistant."}}
	for turn := 0; turn < 16; turn++ {
		msgs = append(msgs, map[string]string{"role": "user", "content": para[:1000]})
		if turn < 15 {
			msgs = append(msgs, map[string]string{"role": "assistant", "content": para[7:1007]})
		}
	}
	body, err := json.Marshal(map[string]any{"messages": msgs})
	if err != nil {
		b.Fatal(err)
	}
	return body
}

// lastPart drops the template source gonja quotes in parse errors.
func lastPart(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, "':"); i >= 0 {
		return s[i+2:]
	}
	return s
}
