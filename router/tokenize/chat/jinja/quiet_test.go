package jinja

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// qwen3Scan is Qwen3's scan for the last user query (its tokenizer_config.json).
const qwen3Scan = `{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}{{ ns.last_query_index }}`

var quietCases = []struct {
	name, src string
	quiet     bool
}{
	{"qwen3", qwen3Scan, true},
	{"counter", `{% set ns = namespace(on=true, n=0, last='') %}{% for m in messages %}{% set k = loop.index0 + ns.n %}{% if ns.on and m.role == 'user' %}{{ m.content }}{% set ns.n = ns.n + 1 %}{% set ns.last = m.content %}{% if ns.n >= limit %}{% set ns.on = false %}{% endif %}{% endif %}{% endfor %}{{ ns.n }}:{{ ns.last }}`, true},
	// The guard turned back on inside its if.
	{"flip", `{% set ns = namespace(on=true, n=0) %}{% for m in messages %}{% if ns.on %}{% set ns.n = ns.n + 1 %}{% set ns.on = m.role != 'tool' %}{% endif %}{% if ns.on and m.role == 'system' %}{% set ns.on = true %}{% endif %}{% endfor %}{{ ns.n }}`, true},
	// A set reading a name the if binds: an error once the if stops running.
	{"localread", `{% set ns = namespace(on=true) %}{% for m in messages %}{% if ns.on and m.role == 'user' %}{% set x = 1 %}{% set ns.on = false %}{% endif %}{% set y = x + 1 %}{% endfor %}done`, true},
	{"continue", `{% set ns = namespace(on=true) %}{% for m in messages %}{% if ns.on and m.role == 'user' %}{% set ns.on = false %}{% continue %}{% endif %}{% set y = bad - 1 %}{% endfor %}done`, true},
	{"else", `{% set ns = namespace(on=true) %}{% for m in messages %}{% if ns.on %}{% set ns.on = false %}{% else %}{{ m.role }}{% endif %}{% endfor %}`, false},
	{"elif", `{% set ns = namespace(on=true) %}{% for m in messages %}{% if ns.on %}{% set ns.on = false %}{% elif m.role %}x{% endif %}{% endfor %}`, false},
	{"output", `{% set ns = namespace(on=true) %}{% for m in messages %}{% if ns.on %}{% set ns.on = false %}{% endif %}{{ loop.index }}{% endfor %}`, false},
	{"nswrite", `{% set ns = namespace(on=true, n=0) %}{% for m in messages %}{% if ns.on %}{% set ns.on = false %}{% endif %}{% set ns.n = 1 %}{% endfor %}`, false},
	{"itemset", `{% set ns = namespace(on=true) %}{% for m in messages %}{% if ns.on %}{% set ns.on = false %}{% endif %}{% set c = m.content + 1 %}{% endfor %}`, false},
	{"guards", `{% set ns = namespace(on=true, b=true) %}{% for m in messages %}{% if ns.on %}{% set ns.on = false %}{% endif %}{% if ns.b %}{% set ns.b = false %}{% endif %}{% endfor %}`, false},
	{"shadow", `{% set ns = namespace(on=true) %}{% for m in messages %}{% set ns = namespace(on=false) %}{% if ns.on %}x{% endif %}{% endfor %}`, false},
	{"call", `{% set ns = namespace(on=true) %}{% for m in messages %}{% set r = range(loop.index0) %}{% if ns.on %}{% set ns.on = false %}{% endif %}{% endfor %}`, false},
}

// TestQuietLoop checks which loops Parse finds quiet, and that a quiet loop's render
// (output or error) is the full loop's on random message lists.
func TestQuietLoop(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 9))
	roles := []string{"user", "assistant", "tool", "system"}
	contents := []string{"hi", "<tool_response>\nok\n</tool_response>", "x"}
	for _, tc := range quietCases {
		tpl, err := Parse(tc.src)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		quiet := false
		for _, n := range tpl.body {
			if f, ok := n.(*forNode); ok && f.quiet != nil {
				quiet = true
			}
		}
		if quiet != tc.quiet {
			t.Fatalf("%s: quiet %v, want %v", tc.name, quiet, tc.quiet)
		}
		for range 300 {
			msgs := make([]Value, rng.IntN(12))
			for i := range msgs {
				d := NewDict()
				d.Set("role", roles[rng.IntN(len(roles))])
				d.Set("content", contents[rng.IntN(len(contents))])
				msgs[i] = d
			}
			vars := map[string]Value{"messages": msgs, "limit": int64(rng.IntN(4))}
			got, gerr := tpl.Render(vars)
			noQuiet = true
			want, werr := tpl.Render(vars)
			noQuiet = false
			if got != want || (gerr == nil) != (werr == nil) || (gerr != nil && gerr.Error() != werr.Error()) {
				t.Fatalf("%s, %d messages: %q (%v), full loop %q (%v)", tc.name, len(msgs), got, gerr, want, werr)
			}
		}
	}
}

// BenchmarkQuietLoop runs Qwen3's scan over 80 messages whose last is the user's
// query, stopping when the scan goes quiet and running to the end.
func BenchmarkQuietLoop(b *testing.B) {
	tpl, err := Parse(qwen3Scan)
	if err != nil {
		b.Fatal(err)
	}
	msgs := make([]Value, 80)
	for i := range msgs {
		d := NewDict()
		d.Set("role", []string{"user", "assistant"}[i%2])
		d.Set("content", fmt.Sprint("message ", i))
		msgs[i] = d
	}
	vars := map[string]Value{"messages": msgs}
	for _, full := range []bool{false, true} {
		b.Run(fmt.Sprintf("full=%v", full), func(b *testing.B) {
			noQuiet = full
			defer func() { noQuiet = false }()
			for b.Loop() {
				if _, err := tpl.Render(vars); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
