package jinja

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// resumeCase is a template for the RenderFrom tests; copies says whether a render
// resumed after an appended message must copy iterations.
type resumeCase struct {
	name, src string
	plans     int // planned loops
	copies    bool
}

var resumeCases = []resumeCase{
	{"last", `{% for m in messages %}{{ m.role }}:{{ m.content }}{% if loop.last %}!{% endif %}
{% endfor %}`, 1, true},
	// Qwen3's shape: a loop keeping state in a namespace, then a loop comparing the
	// position with that state.
	{"threshold", `{% set ns = namespace(q=-1) %}{% for m in messages %}{% if m.role == 'user' %}{% set ns.q = loop.index0 %}{% endif %}{% endfor %}` +
		`{% for m in messages %}{% if loop.index0 > ns.q %}[{{ m.content }}]{% else %}{{ m.content }}{% endif %}{% endfor %}`, 2, true},
	// DeepSeek-V3's shape: state carried from iteration to iteration.
	{"carried", `{% set ns = namespace(tool=false, first=true, sys='', other=1) %}{% for m in messages %}{% if m.role == 'system' %}{% set ns.sys = ns.sys + m.content %}{% endif %}{% endfor %}{{ ns.sys }}|` +
		`{% for m in messages %}{% if m.role == 'tool' %}{% if ns.first %}<T>{% set ns.first = false %}{% endif %}{% set ns.tool = true %}{{ m.content }}` +
		`{% elif ns.tool %}</T>{{ m.content }}{% set ns.tool = false %}{% else %}{{ m.content }}{{ ns.other }}{% endif %}{% endfor %}{% if ns.tool %}</T>{% endif %}`, 2, true},
	{"nsdefined", `{% set ns = namespace() %}{% for m in messages %}{% if ns.x is defined %}{{ ns.x }}{% endif %}{% set ns.x = m.content %}{% endfor %}`, 1, false},
	{"nswhole", `{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ ns }}{% endfor %}`, 0, false},
	{"nsbound", `{% for m in messages %}{% set ns = namespace(n=0) %}{% set ns.n = 1 %}{{ ns.n }}{% endfor %}`, 0, false},
	{"neighbours", `{% for m in messages %}{% if loop.first or messages[loop.index0 - 1].role != m.role %}<{{ m.role }}>{% endif %}{{ m.content }}` +
		`{% if loop.last or messages[loop.index0 + 1].role != m.role %}</{{ m.role }}>{% endif %}{% endfor %}`, 1, true},
	// messages[-1] at the first iteration: the end of the list, so nothing is copied.
	{"negative", `{% for m in messages %}{{ messages[loop.index0 - 1].content }}>{{ m.content }};{% endfor %}`, 1, false},
	{"offset2", `{% for m in messages %}{{ m.content }}{{ messages[loop.index + 1].role }}{% endfor %}`, 1, true},
	{"outer", `{% for m in messages %}{{ prefix }}{{ m.content }}{% endfor %}`, 1, true},
	{"index", `{% for m in messages %}{% if loop.index >= cut %}*{% endif %}{% if cut < loop.index0 %}+{% endif %}{{ m.content }}{% endfor %}`, 1, true},
	{"nested", `{% for m in messages %}{% for p in m.parts if p != 'x' %}{{ p }}{% if not loop.last %},{% endif %}{{ loop.length }}{% endfor %};{% endfor %}`, 1, true},
	{"local", `{% for m in messages %}{{ c }}{% set c = m.content %}{{ c }}{% endfor %}`, 1, true},
	{"methods", `{% for m in messages %}{% if '</think>' in m.content %}{{ m.content.split('</think>')[-1] | trim }}{% else %}{{ m.content | upper }}{% endif %}` +
		`{{ loop.cycle('a', 'b') }}{{ loop.previtem.role if loop.previtem else '-' }}{% if m.role == 'x' %}{{ raise_exception('bad role') }}{% endif %}{% endfor %}`, 1, true},
	{"inif", `{% if messages %}{% for m in messages %}{{ m.content }}{% if loop.last %}.{% endif %}{% endfor %}{% else %}none{% endif %}`, 1, true},
	{"continue", `{% for m in messages %}{% if m.role == 'tool' %}{% continue %}{% endif %}{{ m.content }}{% endfor %}`, 1, true},
	{"macro", `{% macro f(x) %}<{{ x }}>{% endmacro %}{% for m in messages %}{{ f(m.content) }}{% endfor %}`, 1, false},
	{"outerlist", `{% for m in messages %}{{ m.content }}{{ tools | length }}{% endfor %}`, 1, false},
	{"length", `{% for m in messages %}{{ loop.length }}{{ m.content }}{% endfor %}`, 0, false},
	{"carriedstart", `{% set ns = namespace(n=cut) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ ns.n }}{% endfor %}`, 1, true},
	{"nswrite", `{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ ns.n }}{% endfor %}`, 1, true},
	{"break", `{% for m in messages %}{% if m.role == 'tool' %}{% break %}{% endif %}{{ m.content }}{% endfor %}`, 0, false},
	{"list", `{% for m in messages %}{{ messages | length }}{{ m.content }}{% endfor %}`, 0, false},
	{"setblock", `{% set s %}{% for m in messages %}{{ m.content }}{% endfor %}{% endset %}{{ s }}`, 0, false},
	{"filtered", `{% for m in messages if m.role != 'tool' %}{{ m.content }}{% endfor %}`, 0, false},
}

// resumeConv is a conversation the RenderFrom tests change step by step: messages
// are kept as the same *Dict values from step to step, as the chat encoder keeps
// them, unless a step replaces one.
type resumeConv struct {
	msgs []Value
	vars map[string]Value
	// rebuild gives each render copies of the messages (new dicts and lists over the
	// same strings), as the chat encoder does for templates that loop over content
	// parts.
	rebuild bool
}

var resumeTexts = []string{"hi", "Hello there", "<think>\nhmm\n</think>\n\nfour", "x", "", " padded ", "tool output"}
var resumeRoles = []string{"user", "assistant", "tool", "system", "user", "assistant"}

func (c *resumeConv) message(pick func(int) int) Value {
	d := NewDict()
	d.Set("role", resumeRoles[pick(len(resumeRoles))])
	d.Set("content", resumeTexts[pick(len(resumeTexts))])
	parts := make([]Value, pick(3))
	for i := range parts {
		parts[i] = []string{"p", "x", "q"}[pick(3)]
	}
	d.Set("parts", parts)
	return d
}

// step changes the conversation as pick decides: mostly appends, now and then an
// edit, a cut, a change of the outer variables or nothing.
func (c *resumeConv) step(pick func(int) int) {
	switch pick(12) {
	case 0:
		if len(c.msgs) > 0 {
			c.msgs[pick(len(c.msgs))] = c.message(pick)
		}
	case 1:
		c.msgs = c.msgs[:pick(len(c.msgs)+1)]
	case 2:
		c.vars["prefix"] = []string{"", "> ", ">> "}[pick(3)]
	case 3:
		c.vars["cut"] = int64(pick(6))
	case 4:
		c.vars["c"] = []string{"a", "b"}[pick(2)]
	case 5:
	case 6:
		if len(c.msgs) > 0 {
			c.msgs = c.msgs[1:]
		}
	default:
		for range 1 + pick(3) {
			c.msgs = append(c.msgs, c.message(pick))
		}
	}
}

func (c *resumeConv) varsNow() map[string]Value {
	msgs := append([]Value(nil), c.msgs...)
	if c.rebuild {
		for i, m := range msgs {
			d := NewDict()
			for _, k := range m.(*Dict).Keys() {
				v := m.(*Dict).at(k)
				if l, ok := v.([]Value); ok {
					v = append([]Value(nil), l...)
				}
				d.Set(k, v)
			}
			msgs[i] = d
		}
	}
	v := map[string]Value{"messages": msgs, "tools": []Value{"t"}}
	for k, x := range c.vars {
		v[k] = x
	}
	return v
}

// playResume renders steps of a conversation with RenderFrom, each from the previous
// step's Prior, and fails when a render differs from RenderSize's. It returns the
// iterations copied and run.
func playResume(t *testing.T, tpl *Template, steps int, pick func(int) int, rebuild bool) (copied, ran int) {
	t.Helper()
	c := &resumeConv{vars: map[string]Value{"prefix": "", "cut": int64(2), "c": "a"}, rebuild: rebuild}
	var priors []*Prior
	var outs [][2]string // every output, and a copy: none may change later (outBuf)
	for s := range steps {
		c.step(pick)
		vars := c.varsNow()
		want, werr := tpl.RenderSize(vars, 0)
		var prior *Prior
		if n := len(priors); n > 0 {
			prior = priors[n-1]
			if pick(8) == 0 { // now and then an older one: a retry, an edit, a fork
				prior = priors[pick(n)]
			}
		}
		got, next, gerr := tpl.RenderFrom(vars, 0, prior)
		if (werr == nil) != (gerr == nil) || got != want {
			t.Fatalf("step %d, %d messages: RenderFrom %q (%v), RenderSize %q (%v)", s, len(c.msgs), got, gerr, want, werr)
		}
		outs = append(outs, [2]string{got, strings.Clone(got)})
		if next != nil {
			priors = append(priors, next)
			cp, r := next.Iterations()
			copied += cp
			ran += r
		}
	}
	for i, o := range outs {
		if o[0] != o[1] {
			t.Fatalf("step %d's output changed after later renders: %q, was %q", i, o[0], o[1])
		}
	}
	return copied, ran
}

// TestRenderFrom plays random conversations through templates that exercise each rule
// of resume.go, and checks every render against a full one, and that the templates
// that can resume do.
func TestRenderFrom(t *testing.T) {
	for _, tc := range resumeCases {
		t.Run(tc.name, func(t *testing.T) {
			tpl, err := Parse(tc.src)
			if err != nil {
				t.Fatal(err)
			}
			if len(tpl.plans) != tc.plans {
				t.Fatalf("%d planned loops, want %d", len(tpl.plans), tc.plans)
			}
			var copied, ran int
			for seed := range uint64(20) {
				rng := rand.New(rand.NewPCG(seed, 7))
				cp, r := playResume(t, tpl, 60, rng.IntN, seed%2 == 1)
				copied, ran = copied+cp, ran+r
			}
			t.Logf("copied %d iterations, ran %d", copied, ran)
			if (copied > 0) != tc.copies {
				t.Fatalf("copied %d iterations (ran %d); want copies: %v", copied, ran, tc.copies)
			}
		})
	}
}

// TestRenderFromAppend checks how much a turn that appends a message copies: every
// earlier message when nothing reads past its own, all but the previous last one when
// the body reads loop.last.
func TestRenderFromAppend(t *testing.T) {
	for _, tc := range []struct {
		src  string
		want int
	}{
		{`{% for m in messages %}{{ m.content }}{% endfor %}`, 5},
		{`{% for m in messages %}{{ m.content }}{% if loop.last %}.{% endif %}{% endfor %}`, 4},
		{`{% for m in messages %}{{ m.content }}{{ messages[loop.index0 + 2].content }}{% endfor %}`, 3},
	} {
		tpl, err := Parse(tc.src)
		if err != nil {
			t.Fatal(err)
		}
		c := &resumeConv{vars: map[string]Value{}}
		for i := range 5 {
			c.msgs = append(c.msgs, c.message(func(n int) int { return i % n }))
		}
		_, prior, err := tpl.RenderFrom(c.varsNow(), 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.msgs = append(c.msgs, c.message(func(int) int { return 0 }))
		vars := c.varsNow()
		got, next, err := tpl.RenderFrom(vars, 0, prior)
		want, _ := tpl.RenderSize(vars, 0)
		if err != nil || got != want {
			t.Fatalf("%s: %q (%v), want %q", tc.src, got, err, want)
		}
		if copied, ran := next.Iterations(); copied != tc.want || ran != 6-tc.want {
			t.Fatalf("%s: copied %d and ran %d iterations, want %d and %d", tc.src, copied, ran, tc.want, 6-tc.want)
		}
	}
}

// TestRenderFromOverride: a variable that overrides a global is compared like any
// other outer value, and a prior of another template is ignored.
func TestRenderFromOverride(t *testing.T) {
	tpl, err := Parse(`{% for m in messages %}{{ range(m) }}{% endfor %}`)
	if err != nil {
		t.Fatal(err)
	}
	f := func(s string) Func { return func([]Value, *Dict) (Value, error) { return s, nil } }
	msgs := []Value{int64(1), int64(2)}
	_, prior, err := tpl.RenderFrom(map[string]Value{"messages": msgs, "range": f("a")}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, next, err := tpl.RenderFrom(map[string]Value{"messages": msgs, "range": f("b")}, 0, prior)
	if err != nil || got != "bb" {
		t.Fatalf("%q %v", got, err)
	}
	if copied, _ := next.Iterations(); copied != 0 {
		t.Fatalf("copied %d iterations with range overridden", copied)
	}
	other, _ := Parse(`{% for m in messages %}{{ m }}{% endfor %}`)
	got, next, err = other.RenderFrom(map[string]Value{"messages": msgs}, 0, prior)
	if copied, _ := next.Iterations(); err != nil || got != "12" || copied != 0 {
		t.Fatalf("another template's prior: %q %v, copied %d", got, err, copied)
	}
}

// FuzzRenderFrom drives the conversation of TestRenderFrom with the fuzzer's bytes,
// through each of its templates.
func FuzzRenderFrom(f *testing.F) {
	f.Add([]byte{0, 7, 7, 7, 1, 2, 9, 9, 0, 0, 3, 3})
	f.Add([]byte{2, 11, 2, 11, 5, 11, 6, 0, 11, 1, 2, 3, 4, 5, 6, 7})
	tpls := make([]*Template, len(resumeCases))
	for i, tc := range resumeCases {
		var err error
		if tpls[i], err = Parse(tc.src); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 || len(data) > 600 { // longer inputs only make slower runs
			return
		}
		tpl := tpls[int(data[0])%len(tpls)]
		rebuild := data[0]&0x80 != 0
		data = data[1:]
		pick := func(n int) int {
			if n <= 0 {
				return 0
			}
			if len(data) == 0 {
				return 0
			}
			b := data[0]
			data = data[1:]
			return int(b) % n
		}
		playResume(t, tpl, len(data)/2+1, pick, rebuild)
	})
}

// BenchmarkRenderFrom renders turn 40 of a conversation (80 messages) from turn 39's
// prior, against a full render.
func BenchmarkRenderFrom(b *testing.B) {
	tpl, err := Parse(resumeCases[1].src)
	if err != nil {
		b.Fatal(err)
	}
	var msgs []Value
	for i := range 80 {
		d := NewDict()
		d.Set("role", []string{"user", "assistant"}[i%2])
		d.Set("content", fmt.Sprintf("message %d: %s", i, resumeTexts[2]))
		msgs = append(msgs, d)
	}
	_, prior, err := tpl.RenderFrom(map[string]Value{"messages": msgs[:78]}, 0, nil)
	if err != nil {
		b.Fatal(err)
	}
	vars := map[string]Value{"messages": msgs}
	b.Run("resumed", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := tpl.RenderFrom(vars, 0, prior); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("full", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := tpl.RenderSize(vars, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}
