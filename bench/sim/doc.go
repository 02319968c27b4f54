// Package sim is kvsim: a fleet of simulated vLLM (or SGLang) workers in one process,
// faithful where routing quality depends on it. Every end-to-end test, `kvroute demo`
// and the kvbench benchmark run against it.
//
// Each [Worker] serves the OpenAI-compatible API as vLLM does (POST /v1/completions
// with text or token-id prompts, POST /v1/chat/completions, streamed with vLLM's chunk
// shapes or not, usage with prompt_tokens_details.cached_tokens, GET /v1/models,
// POST /tokenize, GET /health, GET /metrics with vLLM's metric names, the Responses API
// with stored responses, and plausible answers from the other engine endpoints:
// responses.go), runs a continuous-batching engine over a paged KV cache with prefix
// caching (package kvcache), and publishes KV-cache events on ZMQ with vLLM's framing,
// encodings and replay protocol (package kvevents). Admin endpoints: POST /sim/fault,
// GET /sim/fault, POST /sim/restart, GET /sim/stats, POST /reset_prefix_cache. A worker
// may have several data-parallel ranks ([Rank]), each a full engine with its own cache
// and event sockets; requests go to the rank named by X-data-parallel-rank or to the
// least loaded one.
//
// Engine model (one step = one forward pass): running requests are served first (one
// decode token each, or the next prefill chunk), then waiting requests are admitted in
// arrival order while max_num_seqs, the max_num_batched_tokens budget and free blocks
// allow. A step's duration comes from the latency [Profile] (prefill cost per uncached
// token, decode cost growing with the batch and its context) times the time scale. A
// prompt's cached prefix costs nothing, so cached requests get a lower TTFT.
//
// Invariants:
//   - cached_tokens is the number of tokens in the leading full blocks found in the
//     cache, at most (prompt length - 1) rounded down to a block, as in vLLM.
//   - Blocks used by a running request are pinned; only unreferenced blocks are evicted,
//     least recently freed first, each eviction published as BlockRemoved.
//   - Every full block computed is published once as BlockStored with its token ids,
//     parent hash and block size, in the step that computed it; a step's events form one
//     batch with the next seq.
//   - With a CPU offload tier (Config.CPUBlocks, kvsim --cpu-blocks), modelled on vLLM's
//     OffloadingConnector (vllm-project/vllm,
//     vllm/distributed/kv_transfer/kv_connector/v1/offloading/scheduler.py: its
//     take_events publishes BlockStored with medium "CPU", empty token_ids and no
//     parent, and BlockRemoved with medium "CPU"; it offloads every computed block, not
//     only evicted ones), every full block computed is also stored there, published in
//     the same batch after the GPU events; the tier's LRU evictions are published as
//     BlockRemoved "CPU". A prompt's blocks after its GPU hit that the tier holds are
//     loaded back at Config.CPUBandwidth (Profile.KVBytesPerToken per token), counted in
//     cached_tokens as vLLM counts the connector's external tokens, and stored on GPU
//     again (BlockStored "GPU"). Details in offload.go.
//   - Engine block hashes are opaque uint64s seeded per worker and rank: the same content
//     has different hashes on different workers, and they never equal kvroute's own
//     hashes.
//   - Outputs are deterministic functions of the prompt; the built-in tokenizer and chat
//     format are documented on [WordTokenizer].
//   - No goroutine busy-waits: the engine sleeps on a timer per step (several steps per
//     wake-up when the time scale makes them shorter than a millisecond) and request
//     handlers wake only when a chunk is ready.
package sim
