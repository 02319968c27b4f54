// Package proto holds kvroute's wire formats and its block hash.
//
// Two things live here and nowhere else:
//
//   - The normalized KV-cache event ([Event], [Batch]) that every engine-specific
//     decoder (vLLM array- and map-encoded, SGLang) produces and the indexer consumes.
//   - kvroute's own chained block hash ([HashBlocks], [ChainBlock], [Seed]). The router
//     hashes request tokens with it and the indexer hashes the token ids carried by
//     BlockStored events with it, so both sides agree without trusting the engine's hash,
//     which is not reproducible outside Python (vLLM: pickle+sha256 with a random seed).
//
// Decoders of outside input live here too: [DecodeBatch] (every vLLM and SGLang msgpack
// variant), [DecodeFrames] and [DecodeReplayFrames] (the ZMQ PUB and replay framing), and
// the compact [Envelope] encoding kvroute itself carries over NATS ([AppendEnvelope],
// [DecodeEnvelope], versioned by [EnvelopeVersion]). Decoders never panic, bound their
// work and allocations by the input length, reject malformed input with an error, and
// ignore unknown fields so that newer engines keep working. Each has a fuzz test seeded
// with real-format payloads built by package prototest.
//
// Invariants: engine hashes are opaque ids ([EngineHash]), only ever used to resolve
// BlockRemoved and parent links; only full blocks are hashed; a block's hash depends on
// every token before it (chaining) and on the seed (model, LoRA adapter, cache salt).
package proto
