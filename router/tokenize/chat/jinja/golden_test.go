package jinja

import (
	"encoding/json"
	"testing"

	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

// TestPythonGolden renders testdata/cases.json with this package and compares
// with the outputs of Python's jinja2 in transformers' environment
// (testdata/golden.json, written by testdata/gen_cases.py).
func TestPythonGolden(t *testing.T) {
	var cases []struct {
		T    string          `json:"t"`
		Vars json.RawMessage `json:"vars"`
	}
	var golden []struct {
		Out   *string `json:"out"`
		Error string  `json:"error"`
	}
	tokenizetest.ReadJSON(t, "testdata/cases.json", &cases)
	tokenizetest.ReadJSON(t, "testdata/golden.json", &golden)
	if len(cases) != len(golden) || len(cases) == 0 {
		t.Fatalf("%d cases, %d golden outputs", len(cases), len(golden))
	}
	for i, c := range cases {
		vars := map[string]Value{}
		if len(c.Vars) > 0 {
			v, err := FromJSON(c.Vars)
			if err != nil {
				t.Fatal(err)
			}
			d := v.(*Dict)
			for _, k := range d.Keys() {
				vars[k], _ = d.Get(k)
			}
		}
		tmpl, err := Parse(c.T)
		if err != nil {
			t.Errorf("case %d %q: parse: %v", i, c.T, err)
			continue
		}
		out, err := tmpl.Render(vars)
		g := golden[i]
		switch {
		case g.Out == nil && err == nil:
			t.Errorf("case %d %q: Python fails (%s), got %q", i, c.T, g.Error, out)
		case g.Out != nil && err != nil:
			t.Errorf("case %d %q: %v, Python gives %q", i, c.T, err, *g.Out)
		case g.Out != nil && out != *g.Out:
			t.Errorf("case %d %q:\n got  %q\n want %q", i, c.T, out, *g.Out)
		}
	}
}
