package indexer

import (
	"maps"
	"testing"
	"time"
)

// A stale worker's confirmed blocks count as predicted ones (held, not confirmed, at the
// predicted weight) until it is marked caught up; other workers are untouched, and the
// tables are not changed by the mark.
func TestStaleDowngrade(t *testing.T) {
	qa := cat(doc(1, 4), doc(2, 3))
	req := chain("", qa)
	ix, _ := newIndex(t, Options{PredictedWeight: 0.5, PredictedTTL: time.Minute})
	ix.Apply(wA, "m", batch(stored(1, qa, 0, 4, "GPU", "")))
	ix.Predict(wA, req, 0) // blocks 4..6 predicted
	ix.Apply(wB, "m", batch(stored(2, qa, 0, 7, "GPU", "")))
	score := func(w string) (float64, bool) {
		for _, m := range ix.Match(req, nil) {
			if m.Worker.ID == w {
				return m.Score, m.Stale
			}
		}
		return -1, false
	}
	want := map[string][2]int{"a": {7, 4}, "b": {7, 7}}
	if got := matchMap(ix, req); !maps.Equal(got, want) {
		t.Fatalf("fresh: Match = %v, want %v", got, want)
	}
	if s, stale := score("a"); s != 4+3*0.5 || stale {
		t.Fatalf("fresh: a's score %v stale %v, want 5.5 false", s, stale)
	}
	ix.SetStale(wA, true)
	if !ix.Stale(wA) || ix.Stale(wB) {
		t.Fatalf("Stale(a) %v Stale(b) %v, want true false", ix.Stale(wA), ix.Stale(wB))
	}
	if got, want := matchMap(ix, req), map[string][2]int{"a": {7, 0}, "b": {7, 7}}; !maps.Equal(got, want) {
		t.Fatalf("stale: Match = %v, want %v", got, want)
	}
	if s, stale := score("a"); s != 7*0.5 || !stale {
		t.Fatalf("stale: a's score %v stale %v, want 3.5 true", s, stale)
	}
	// Events keep flowing into a stale worker's entries: a remove still breaks its chain.
	ix.Apply(wA, "m", batch(removed(1, qa, 2, 3, "GPU")))
	if got, want := matchMap(ix, req), map[string][2]int{"a": {2, 0}, "b": {7, 7}}; !maps.Equal(got, want) {
		t.Fatalf("stale after a remove: Match = %v, want %v", got, want)
	}
	checkInvariants(t, ix)
	ix.SetStale(wA, false)
	if got, want := matchMap(ix, req), map[string][2]int{"a": {2, 2}, "b": {7, 7}}; !maps.Equal(got, want) {
		t.Fatalf("caught up: Match = %v, want %v", got, want)
	}
}

// With IgnorePredicted, a stale worker's blocks do not count at all; a mark set before
// the worker has entries applies once it has.
func TestStaleIgnorePredicted(t *testing.T) {
	qa := doc(1, 4)
	req := chain("", qa)
	ix, _ := newIndex(t, Options{IgnorePredicted: true})
	ix.SetStale(wA, true)
	ix.Apply(wA, "m", batch(stored(1, qa, 0, 4, "GPU", "")))
	if got := matchMap(ix, req); len(got) != 0 {
		t.Fatalf("stale, predictions ignored: Match = %v, want none", got)
	}
	ix.SetStale(wA, false)
	if got, want := matchMap(ix, req), map[string][2]int{"a": {4, 4}}; !maps.Equal(got, want) {
		t.Fatalf("caught up: Match = %v, want %v", got, want)
	}
}
