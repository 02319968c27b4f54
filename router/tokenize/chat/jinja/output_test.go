package jinja

import (
	"strings"
	"sync"
	"testing"
	"unsafe"
)

// TestRenderShadow renders several conversations from one Prior, the way turns of a
// conversation, retries and edits arrive: the first render that extends the prior's
// output appends in place (its output shares the prior's bytes), the others copy, a
// render that ends inside the prior's output does not let its own later renders
// overwrite the rest, and no output ever changes after it was returned.
func TestRenderShadow(t *testing.T) {
	// The generation prompt is how the next message starts, as in chat templates.
	tpl, err := Parse(`<s>{% for m in messages %}<m>{{ m }}</m>{% endfor %}{% if gen %}<m>{% endif %}`)
	if err != nil {
		t.Fatal(err)
	}
	type out struct{ got, want string }
	var outs []out
	render := func(prior *Prior, gen bool, msgs ...string) (string, *Prior) {
		t.Helper()
		list := make([]Value, len(msgs))
		for i, m := range msgs {
			list[i] = m
		}
		vars := map[string]Value{"messages": list, "gen": gen}
		got, p, err := tpl.RenderFrom(vars, 0, prior)
		if err != nil {
			t.Fatal(err)
		}
		want, err := tpl.Render(vars)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("%v: %q, want %q", msgs, got, want)
		}
		outs = append(outs, out{got, strings.Clone(want)})
		return got, p
	}
	shares := func(a, b string) bool { return unsafe.StringData(a) == unsafe.StringData(b) }

	a, pa := render(nil, true, "one", "two")
	b1, pb1 := render(pa, true, "one", "two", "three") // turn: shares a's bytes
	if !shares(a, b1) {
		t.Fatalf("the next turn copied the prior's output")
	}
	b2, _ := render(pa, true, "one", "two", "other") // a second extension of a: copies
	if shares(a, b2) {
		t.Fatalf("two renders extend one prior in place")
	}
	short, ps := render(pa, false, "one") // ends inside a's output
	if !shares(a, short) {
		t.Fatalf("a prefix of the prior's output was copied")
	}
	render(ps, true, "one", "four", "five") // must not write over a's bytes
	render(pb1, false, "one", "two", "three", "six")
	render(pb1, true, "zero") // differs at once
	render(nil, true)

	// Concurrent extensions of one prior: one appends in place, the rest copy.
	// (sized for them, or the winner might have to grow the buffer, and copy)
	c, pc, err := tpl.RenderFrom(map[string]Value{"messages": []Value{"one", "two", "three"}, "gen": true}, 256, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	res := make([]string, 8)
	errs := make([]error, len(res))
	for i := range res {
		wg.Go(func() {
			list := []Value{"one", "two", "three", strings.Repeat("x", i+1)}
			res[i], _, errs[i] = tpl.RenderFrom(map[string]Value{"messages": list, "gen": true}, 0, pc)
		})
	}
	wg.Wait()
	inPlace := 0
	for i, r := range res {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if shares(c, r) {
			inPlace++
		}
		if want := "<s><m>one</m><m>two</m><m>three</m><m>" + strings.Repeat("x", i+1) + "</m><m>"; r != want {
			t.Fatalf("concurrent render %d: %q, want %q", i, r, want)
		}
	}
	if inPlace != 1 {
		t.Fatalf("%d of %d concurrent extensions appended in place, want 1", inPlace, len(res))
	}
	for _, o := range outs {
		if o.got != o.want {
			t.Fatalf("an output changed after it was returned: %q, was %q", o.got, o.want)
		}
	}
}
