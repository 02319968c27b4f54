// Package scorer decides which worker serves a request.
//
// The contract lives here; each policy is a sub-package (roundrobin, random,
// leastinflight, poweroftwo, and the cache-aware policy). A policy is a [Selector]: given
// the request and a non-empty slice of eligible [Candidate]s, it returns the index of
// the chosen one. The router builds the candidate slice (healthy workers serving the
// model, hard limits already applied) and owns every side effect of the choice: policies
// only read.
//
// Optional abilities are separate interfaces found by type assertion: [Explainer] (the
// policy reports each candidate's [Cost]) and [PrefixUser] (the policy reads prefix
// overlap, so the router must hash the prompt). Ties break at random through an
// injected [Rand], so tests are deterministic. The names policies are configured by live
// in one table, package scorer/registry.
package scorer
