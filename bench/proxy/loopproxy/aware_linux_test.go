package main

import (
	"strings"
	"testing"
)

// The loop's cache-aware pick hashes a chat and sends its repeat where the first went;
// a body that is not a chat gets no pick.
func TestAwarePick(t *testing.T) {
	a, err := newAware(4)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("the same long prompt ", 40) + `"}],"max_tokens":8}`)
	first := a.pick(body)
	if first < 0 {
		t.Fatal("a chat body got no pick")
	}
	for range 3 {
		if w := a.pick(body); w != first {
			t.Fatalf("a repeat went to worker %d, the first to %d", w, first)
		}
	}
	if len(a.hashes) == 0 {
		t.Error("no blocks hashed")
	}
	for _, b := range []string{`{"model":"m","prompt":"x"}`, `[1]`, `{"messages":`} {
		if w := a.pick([]byte(b)); w != -1 {
			t.Errorf("%s: picked %d, want -1", b, w)
		}
	}
}
