package jinja

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func mustJSON(t *testing.T, s string) Value {
	t.Helper()
	v, err := FromJSON([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestToJSON checks tojson against Python's json.dumps(x, ensure_ascii=False, ...)
// outputs, written down from CPython 3.12.
func TestToJSON(t *testing.T) {
	tests := []struct {
		in   string
		opts JSONOptions
		want string
	}{
		{`{"a": 1, "b": [1, 2.5, null, true], "c": "é\n\"x\""}`, JSONOptions{}, `{"a": 1, "b": [1, 2.5, null, true], "c": "é\n\"x\""}`},
		{`{"z": 1, "a": 2}`, JSONOptions{}, `{"z": 1, "a": 2}`},
		{`{"z": 1, "a": 2}`, JSONOptions{SortKeys: true}, `{"a": 2, "z": 1}`},
		{`{"a": 1, "b": [1, 2]}`, JSONOptions{Indent: 2, HasIndent: true}, "{\n  \"a\": 1,\n  \"b\": [\n    1,\n    2\n  ]\n}"},
		{`{"a": {}, "b": []}`, JSONOptions{Indent: 4, HasIndent: true}, "{\n    \"a\": {},\n    \"b\": []\n}"},
		{`[1.0, 1e-05, 1e16, 123456789012.0, 0.1, -0.0, 1.5e300]`, JSONOptions{}, `[1.0, 1e-05, 1e+16, 123456789012.0, 0.1, -0.0, 1.5e+300]`},
		{`"\u0001\u007f\u2028 東京 🤗 / \\"`, JSONOptions{}, "\"\\u0001\u007f\u2028 東京 🤗 / \\\\\""},
		{`"é🤗"`, JSONOptions{EnsureASCII: true}, `"\u00e9\ud83e\udd17"`},
		{`{"a": [1, 2]}`, JSONOptions{ItemSep: ",", KeySep: ":"}, `{"a":[1,2]}`},
		{`12345678901234567890`, JSONOptions{}, `1.2345678901234567e+19`},
	}
	for _, tt := range tests {
		got, err := ToJSON(mustJSON(t, tt.in), tt.opts)
		if err != nil {
			t.Errorf("ToJSON(%s): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ToJSON(%s, %+v)\n got  %q\n want %q", tt.in, tt.opts, got, tt.want)
		}
	}
}

// TestRender covers the Jinja features Hugging Face chat templates use, with the
// outputs Python's jinja2 (trim_blocks, lstrip_blocks) gives.
func TestRender(t *testing.T) {
	msgs := `[{"role": "system", "content": "S"}, {"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]`
	tests := []struct{ tmpl, want string }{
		{`{{ "a" + 'b' ~ 1 }}`, "ab1"},
		{`{% for m in messages %}{{ loop.index0 }}{{ m.role[0] }}{% if not loop.last %},{% endif %}{% endfor %}`, "0s,1u,2a,3u"},
		{`{% for m in messages[::-1] %}{{ m['content'] }}{% endfor %}`, "U2A1U1S"},
		{`{{ messages[1:3] | map(attribute='content') | join('|') }}`, "U1|A1"},
		{`{% set ns = namespace(n=0) %}{% for m in messages if m.role == 'user' %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}`, "2"},
		{`{% set x = 1 %}{% for m in messages %}{% set x = 2 %}{% endfor %}{{ x }}`, "1"},
		{"{%- if true %}\n  yes\n{%- endif %}\n", "  yes"},
		{"{% if true %}\n  a\n{% endif %}\nb", "  a\nb"},
		{`{{ "  x  " | trim }}|{{ " a b ".strip() }}|{{ "xxaxx".lstrip("x") }}|{{ "a,b,c".split(",")[-1] }}`, "x|a b|axx|c"},
		{`{{ "Hello".startswith("He") }} {{ "Hello".endswith(("x", "lo")) }} {{ "ell" in "Hello" }}`, "True True True"},
		{`{{ none is none }} {{ undefined_var is defined }} {{ 3 is odd }} {{ "s" is string }} {{ [1] is iterable }}`, "True False True True True"},
		{`{{ [1, 2, 3] | length }} {{ {"a": 1} | tojson }} {{ [1, 'a', none, true] }}`, `3 {"a": 1} [1, 'a', None, True]`},
		{`{% macro m(a, b="d") %}[{{ a }}{{ b }}]{% endmacro %}{{ m(1) }}{{ m(2, b="x") }}`, "[1d][2x]"},
		{`{% for k, v in {"a": 1, "b": 2}.items() %}{{ k }}={{ v }};{% endfor %}`, "a=1;b=2;"},
		{`{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 2 ** 10 }} {{ 7 / 2 }} {{ 1 if false else 2 }}`, "3 -4 1 1024 3.5 2"},
		{`{% for i in range(3) %}{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% endfor %}`, "02"},
		{`{{ messages | selectattr("role", "equalto", "user") | list | length }}`, "2"},
		{`{% set c %}inner{{ 1 }}{% endset %}{{ c | upper }}`, "INNER1"},
		{`{{ "a\nb" | indent(2) }}|{{ x | default("dflt") }}`, "a\n  b|dflt"},
		{`{# comment #}{{ "%s-%d" % ("a", 3) }}`, "a-3"},
	}
	for _, tt := range tests {
		tmpl, err := Parse(tt.tmpl)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.tmpl, err)
			continue
		}
		got, err := tmpl.Render(map[string]Value{"messages": mustJSON(t, msgs)})
		if err != nil {
			t.Errorf("Render(%q): %v", tt.tmpl, err)
			continue
		}
		if got != tt.want {
			t.Errorf("Render(%q)\n got  %q\n want %q", tt.tmpl, got, tt.want)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, src := range []string{
		"{% if x %}no end",
		"{{ x ",
		"{% frobnicate %}",
		"{% for %}{% endfor %}",
		"{{ (1 + }}",
		"{% set = 1 %}",
		"{# open comment",
		"{{ " + strings.Repeat("(", 10000) + "1" + strings.Repeat(")", 10000) + " }}",
		"{{ " + strings.Repeat("not ", 10000) + "x }}",
		"{{ " + strings.Repeat("-", 10000) + "1 }}",
		strings.Repeat("{% if x %}", 10000) + strings.Repeat("{% endif %}", 10000),
	} {
		if _, err := Parse(src); err == nil {
			t.Errorf("Parse(%q): no error", src)
		}
	}
}

func TestRaiseAndStrftime(t *testing.T) {
	tmpl, err := Parse(`{{ raise_exception("bad roles") }}`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tmpl.Render(nil); !errors.Is(err, ErrRaised) || !strings.Contains(err.Error(), "bad roles") {
		t.Fatalf("raise_exception: got %v", err)
	}
	saved := Now
	defer func() { Now = saved }()
	Now = func() time.Time { return time.Date(2026, 7, 4, 9, 5, 3, 0, time.UTC) }
	tmpl, err = Parse(`{{ strftime_now("%d %b %Y %H:%M:%S %A %B %-d") }}`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tmpl.Render(nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := "04 Jul 2026 09:05:03 Saturday July 4"; got != want {
		t.Fatalf("strftime_now: got %q, want %q", got, want)
	}
}

// TestLimits checks that runaway templates stop with an error.
func TestLimits(t *testing.T) {
	rec, err := Parse(`{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rec.Render(nil); err == nil || !strings.Contains(err.Error(), "recursion") {
		t.Fatalf("unbounded recursion: got %v", err)
	}
	tmpl, err := Parse(`{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tmpl.Render(nil); err == nil {
		t.Fatal("runaway template rendered")
	}
}

// FuzzParseRender checks that no template or input panics or hangs, and that a
// template renders the same input to the same output every time (a prompt that
// changed between two renders of one conversation would defeat prefix caching).
func FuzzParseRender(f *testing.F) {
	f.Add(`{% for m in messages %}{{ m.content | trim }}{% endfor %}`, `[{"role":"user","content":"hi"}]`)
	f.Add(`{%- set ns = namespace(a=1) -%}{{ ns.a ~ messages[::-1] | tojson }}`, `[1, 2.5, "x"]`)
	f.Add(`{% macro f(x) %}{{ x * 3 }}{% endmacro %}{{ f("ab") }}{{ 1 // 0 }}`, `{}`)
	f.Fuzz(func(t *testing.T, src, data string) {
		tmpl, err := Parse(src)
		if err != nil {
			return
		}
		v, err := FromJSON([]byte(data))
		if err != nil {
			v = data
		}
		out, err := tmpl.Render(map[string]Value{"messages": v})
		again, err2 := tmpl.Render(map[string]Value{"messages": v})
		if out != again || (err == nil) != (err2 == nil) {
			t.Fatalf("two renders differ: %q (%v), then %q (%v)", out, err, again, err2)
		}
	})
}

// TestDictKeys: a Dict keeps insertion order and finds every key, overwritten or not,
// below and above smallDict keys (scanned, then indexed), and renders the same through
// the template's dict methods and tojson either way.
func TestDictKeys(t *testing.T) {
	for _, n := range []int{0, 1, smallDict, smallDict + 1, 40} {
		d := NewDict()
		var want []string
		for i := range n {
			k := fmt.Sprintf("k%d", i)
			d.Set(k, int64(i))
			want = append(want, k)
		}
		for i := 0; i < n; i += 3 { // overwrites keep the position
			d.Set(fmt.Sprintf("k%d", i), int64(100+i))
		}
		if got := d.Keys(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("n=%d: keys %v, want %v", n, got, want)
		}
		for i := range n {
			v, ok := d.Get(fmt.Sprintf("k%d", i))
			wantV := int64(i)
			if i%3 == 0 {
				wantV = int64(100 + i)
			}
			if !ok || v != wantV {
				t.Fatalf("n=%d: k%d = %v, %v; want %d", n, i, v, ok, wantV)
			}
		}
		if _, ok := d.Get("absent"); ok {
			t.Fatalf("n=%d: absent key found", n)
		}
		tpl, err := Parse(`{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{{ d | tojson }}|{{ 'k1' in d }}|{{ d.values() | length }}`)
		if err != nil {
			t.Fatal(err)
		}
		out, err := tpl.Render(map[string]Value{"d": d})
		if err != nil {
			t.Fatal(err)
		}
		var items, js strings.Builder
		js.WriteByte('{')
		for i, k := range want {
			v, _ := d.Get(k)
			fmt.Fprintf(&items, "%s=%d;", k, v)
			if i > 0 {
				js.WriteString(", ")
			}
			fmt.Fprintf(&js, "%q: %d", k, v)
		}
		js.WriteByte('}')
		wantOut := fmt.Sprintf("%s|%s|%v|%d", items.String(), js.String(), n > 1, n)
		wantOut = strings.ReplaceAll(strings.ReplaceAll(wantOut, "|true|", "|True|"), "|false|", "|False|")
		if out != wantOut {
			t.Fatalf("n=%d: rendered %q, want %q", n, out, wantOut)
		}
	}
}
