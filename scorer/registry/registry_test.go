package registry

import (
	"strings"
	"testing"

	"github.com/kvroute/kvroute/scorer"
	"github.com/kvroute/kvroute/scorer/cacheaware"
)

func TestEveryPolicyBuildsAndSelects(t *testing.T) {
	cands := []scorer.Candidate{{ID: "a", OverlapBlocks: 4}, {ID: "b"}}
	req := &scorer.Request{Model: "m", PromptTokens: 64, Blocks: 4, BlockSize: 16}
	for _, name := range Names() {
		sel, err := New(name, Params{CacheAware: cacheaware.Defaults()})
		if err != nil || sel == nil {
			t.Fatalf("New(%q) = %v, %v", name, sel, err)
		}
		if i := sel.Select(req, cands); i < 0 || i >= len(cands) {
			t.Errorf("%s: Select = %d, want an index of cands", name, i)
		}
		if a, b := New(name, Params{CacheAware: cacheaware.Defaults()}); a == sel || b != nil {
			t.Errorf("%s: New returned a shared instance or failed (%v)", name, b)
		}
	}
}

func TestPrefixUsers(t *testing.T) {
	want := map[string]bool{"cache_aware": true, "round_robin": false, "random": false, "least_inflight": false, "power_of_two": false}
	if got := Names(); len(got) != len(want) || got[0] != Default() || Default() != "cache_aware" {
		t.Fatalf("Names() = %v, default %q", got, Default())
	}
	for name, uses := range want {
		if got := NeedsPrefixes(name); got != uses {
			t.Errorf("NeedsPrefixes(%q) = %v, want %v", name, got, uses)
		}
	}
	if NeedsPrefixes("nope") {
		t.Error("an unknown policy needs prefixes")
	}
}

func TestUnknownPolicy(t *testing.T) {
	_, err := New("fastest", Params{})
	if err == nil || !strings.Contains(err.Error(), `"fastest"`) || !strings.Contains(err.Error(), "cache_aware") {
		t.Errorf("error %v: want the name and the known policies", err)
	}
}
