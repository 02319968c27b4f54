package jinja

import (
	"fmt"
	"testing"
)

// TestConcatChain renders chains a + b + c + d over operands of every type and
// checks each against the "+" operator applied pair by pair from the left (the
// nested evaluation evalConcat replaces): same output, or an error in both; printed
// directly (outputConcat) and through a variable (evalConcat).
func TestConcatChain(t *testing.T) {
	vals := []Value{"x", "", "ünï", int64(2), 1.5, []Value{"l"}, nil, true, Undefined{}, NewDict()}
	tmpls := map[int][2]*Template{}
	for n := 2; n <= 4; n++ {
		chain := "v0"
		for i := 1; i < n; i++ {
			chain += fmt.Sprintf(" + v%d", i)
		}
		out, err := Parse("{{ " + chain + " }}")
		if err != nil {
			t.Fatal(err)
		}
		set, err := Parse("{% set s = " + chain + " %}{{ s }}")
		if err != nil {
			t.Fatal(err)
		}
		tmpls[n] = [2]*Template{out, set}
	}
	var idx [4]int
	for n := 2; n <= 4; n++ {
		total := 1
		for range n {
			total *= len(vals)
		}
		for c := 0; c < total; c++ {
			x := c
			vars := map[string]Value{}
			for i := range n {
				idx[i] = x % len(vals)
				x /= len(vals)
				vars[fmt.Sprintf("v%d", i)] = vals[idx[i]]
			}
			acc, werr := vals[idx[0]], error(nil)
			for i := 1; i < n && werr == nil; i++ {
				acc, werr = binOp("+", acc, vals[idx[i]])
			}
			want := ""
			if werr == nil {
				want = str(acc)
			}
			for _, tm := range tmpls[n] {
				got, gerr := tm.Render(vars)
				if (gerr == nil) != (werr == nil) || got != want {
					t.Fatalf("%v: rendered %q (%v), pairwise %q (%v)", vars, got, gerr, want, werr)
				}
			}
		}
	}
}

// TestConcatNested: chains inside a chain's operands (their runs of strings share the
// renderer's stack) give what the nested evaluation gives, printed or set.
func TestConcatNested(t *testing.T) {
	for src, want := range map[string]string{
		`{{ 'a' + ('b' + 'c' + 'd') + 'e' + 'f' }}`:                        "abcdef",
		`{% set s = 'a' + ('b' + ('c' + 'd' + 'e') + 'f') + 'g' %}{{ s }}`: "abcdefg",
		`{{ 1 + (2 + 3 + 4) + 5 }}`:                                        "15",
		`{{ 'a' + 'b' + ([1] + [2] + [3]) | length | string + 'c' }}`:      "ab3c",
		`{{ 'x' + ('y' + 'z' + 1) }}`:                                      "error",
		`{{ 'x' + 'y' + ('z' + 'w' + 1) + 'v' }}`:                          "error",
	} {
		tm, err := Parse(src)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tm.Render(nil)
		if err != nil {
			got = "error"
		}
		if got != want {
			t.Errorf("%s: %q, want %q", src, got, want)
		}
	}
}
