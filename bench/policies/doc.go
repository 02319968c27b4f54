// Package policies holds re-implementations of the routing policies kvroute's peers
// publish, as [scorer.Selector]s, so kvbench can run them through the same router, index
// and fleet as kvroute's own policies. They are labelled baselines written from the
// peers' public sources, not the peers' code, and differ from the originals where the
// router's inputs differ; each type's comment says how. Sources: SGLang's
// https://github.com/sgl-project/sglang/blob/main/sgl-model-gateway/src/policies/cache_aware.rs;
// llm-d's scorers (prefix cache, queue, KV-cache utilization) in
// https://github.com/kubernetes-sigs/gateway-api-inference-extension/tree/main/pkg/epp/scheduling/framework/plugins;
// Dynamo's cost function in https://docs.nvidia.com/dynamo/latest/router/README.html and
// https://github.com/ai-dynamo/dynamo/tree/main/lib/kv-router.
//
// Invariants:
//   - Select never panics on a non-empty candidate list and returns an index in range.
//   - Ties break at random through the injected [scorer.Rand].
//   - Selectors keep no per-request state: the router's prefix index (its routing
//     predictions, plus engine events when the run feeds them) is their only memory.
package policies
