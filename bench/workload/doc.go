// Package workload builds the request streams kvbench replays and replays them against
// an OpenAI-compatible endpoint.
//
// A [Workload] is a list of [Request]s in arrival order, each a prompt of token ids (sent
// as a /v1/completions token-id prompt, so every policy and every tokenize mode hashes
// exactly the same tokens) with a forced output length (max_tokens with ignore_eos). Three
// generators build them: [Mooncake] (a trace in the Mooncake FAST'25 format, each hash
// id expanded to 512 deterministic token ids), [SharedPrefix] (G groups x P prompts
// sharing a system prompt) and [MultiTurn] (U users x R rounds with growing history).
//
// Invariants:
//   - Generators are pure functions of their config (seed included): the same config
//     gives byte-identical prompts, so every policy sees identical input.
//   - A request with a non-negative Prev is sent only after request Prev has finished
//     (a conversation's next turn cannot be typed before the reply), and never before
//     its own At: arrivals are otherwise open loop.
//   - [Bounds] are computed from the workload alone, at the engines' block size, in
//     arrival order: they do not depend on any policy.
package workload
