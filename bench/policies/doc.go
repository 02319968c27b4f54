// Package policies holds re-implementations of the routing policies kvroute's peers
// publish, as [scorer.Selector]s, so kvbench can run them through the same router, index
// and fleet as kvroute's own policies. They are labelled baselines written from the
// peers' public sources (REFERENCE.md section 5), not the peers' code, and differ from
// the originals where the router's inputs differ; each type's comment says how.
//
// Invariants:
//   - Select never panics on a non-empty candidate list and returns an index in range.
//   - Ties break at random through the injected [scorer.Rand].
//   - Selectors keep no per-request state: the router's prefix index (its routing
//     predictions, plus engine events when the run feeds them) is their only memory.
package policies
