// Package kvevents publishes a simulated engine's KV-cache events on the wire exactly as
// vLLM does (vllm/distributed/kv_events.py), or as SGLang does.
//
// Transport: a ZMQ PUB socket sends one multipart message per engine step,
// [topic, seq as 8-byte big-endian, msgpack payload]. A ZMQ ROUTER socket answers replay
// requests: a DEALER sends ["", start seq as 8-byte big-endian], the ROUTER answers one
// [identity, "", seq, payload] per buffered batch with seq >= start, oldest first, then
// the end marker [identity, "", 0xFFFFFFFFFFFFFFFF (-1 signed), ""].
//
// Payload encodings ([Format]):
//   - vLLM, array layout (every release before vLLM PR #42892): EventBatch is
//     [ts, events, data_parallel_rank]; events are tagged arrays
//     ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id,
//     medium, lora_name], ["BlockRemoved", block_hashes, medium], ["AllBlocksCleared"].
//     Fields with defaults (extra_keys, group_idx, kv_cache_spec_*) are omitted, as
//     msgspec's omit_defaults does.
//   - vLLM, map layout: events are maps tagged by "type" with the same field names; the
//     batch stays an array, or is a map too ({"ts","events","data_parallel_rank"}) with
//     [LayoutMapBatch] (the newest vLLM source).
//   - SGLang: the array layout with signed int64 hashes, events up to lora_id (no medium,
//     no lora_name), one BlockStored per page, and attn_dp_rank as the batch's third
//     field.
//
// Hashes are uint64 (msgpack uint 64 when above int64 max) unless [Format.DigestHashes]
// is set, in which case each hash is sent as a 32-byte binary digest derived from it
// (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0).
//
// Invariants: seq starts at 0 and grows by one per published batch, including batches the
// fault injector drops from the PUB stream (those stay in the replay buffer, so a
// subscriber sees a gap it can fill by replay); [Publisher.Restart] sets seq back to 0
// and empties the replay buffer, as a restarted engine process does; the replay buffer
// holds the last BufferSteps batches.
package kvevents
