// Package registry is the one table of routing policies: name -> constructor. The
// router builds its policy from it, config validation checks policy names against it,
// and kvbench runs every policy it lists. A new policy is a sub-package of scorer plus
// one entry here.
package registry

import (
	"fmt"
	"strings"

	"github.com/kvroute/kvroute/scorer"
	"github.com/kvroute/kvroute/scorer/cacheaware"
	"github.com/kvroute/kvroute/scorer/leastinflight"
	"github.com/kvroute/kvroute/scorer/poweroftwo"
	"github.com/kvroute/kvroute/scorer/random"
	"github.com/kvroute/kvroute/scorer/roundrobin"
)

// Params are the tunables a constructor may read; each policy uses only its own part.
type Params struct {
	// CacheAware are the cache_aware policy's weights (configs' cache_aware section).
	CacheAware cacheaware.Options
}

// Policy is one registered routing policy.
type Policy struct {
	// Name is the policy's name in the config (policy:) and on the command line.
	Name string
	// Doc is a one-line description for help texts.
	Doc string
	// New builds a fresh policy; each call returns an independent Selector.
	New func(p Params) scorer.Selector
}

// policies is the table, in the order help texts list them; the first is the default.
var policies = []Policy{
	{Name: "cache_aware", Doc: "prefix overlap from the KV index weighed against load (scorer/cacheaware)",
		New: func(p Params) scorer.Selector { return cacheaware.New(p.CacheAware) }},
	{Name: "round_robin", Doc: "each worker in turn",
		New: func(Params) scorer.Selector { return &roundrobin.Selector{} }},
	{Name: "random", Doc: "uniformly at random",
		New: func(Params) scorer.Selector { return &random.Selector{} }},
	{Name: "least_inflight", Doc: "fewest requests in flight",
		New: func(Params) scorer.Selector { return &leastinflight.Selector{} }},
	{Name: "power_of_two", Doc: "the less loaded of two random workers",
		New: func(Params) scorer.Selector { return &poweroftwo.Selector{} }},
}

// Names returns the registered policy names, the default first.
func Names() []string {
	out := make([]string, len(policies))
	for i, p := range policies {
		out[i] = p.Name
	}
	return out
}

// Default returns the name of the default policy.
func Default() string { return policies[0].Name }

// Lookup returns the policy called name.
func Lookup(name string) (Policy, bool) {
	for _, p := range policies {
		if p.Name == name {
			return p, true
		}
	}
	return Policy{}, false
}

// New builds the policy called name; an unknown name is an error listing the known ones.
func New(name string, p Params) (scorer.Selector, error) {
	pol, ok := Lookup(name)
	if !ok {
		return nil, fmt.Errorf("unknown policy %q (want one of %s)", name, strings.Join(Names(), ", "))
	}
	return pol.New(p), nil
}

// UsesPrefixes reports whether sel reads prompt prefixes (see [scorer.PrefixUser]):
// only then does the router hash prompts and match them against the index.
func UsesPrefixes(sel scorer.Selector) bool {
	pu, ok := sel.(scorer.PrefixUser)
	return ok && pu.UsesPrefixes()
}

// NeedsPrefixes reports whether the policy called name reads prompt prefixes; false for
// an unknown name.
func NeedsPrefixes(name string) bool {
	pol, ok := Lookup(name)
	return ok && UsesPrefixes(pol.New(Params{CacheAware: cacheaware.Defaults()}))
}
