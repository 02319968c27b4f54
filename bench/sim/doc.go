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
// Prefill/decode disaggregation (pd.go). Config.Role (--role) is "prefill", "decode" or
// "both" (default). Requests without P/D fields are served normally by every role (a
// router's fallback to aggregated serving). Prefill workers run a side channel on
// Config.BootstrapPort (--bootstrap-port; 0 a free port; [Worker.BootstrapPort],
// Info.BootstrapPort): GET /health and POST /kvsim/pd/pull ([PullPath]), kvsim's stand-in
// for NIXL's transfer and SGLang's transfer engine. Decode and both workers have none: a
// both worker takes vLLM decode requests (it pulls) but answers a vLLM prefill request
// as an ordinary one, without kv_transfer_params (nothing held, so the router's decode
// request goes without them and prefills locally).
//
//   - vLLM (NixlConnector). A request whose kv_transfer_params has do_remote_decode true
//     (as the proxy sends it: max_tokens 1, stream false) is a prefill: it runs through
//     the engine as usual (prefix cache hits, KV events), and if it finished by length
//     with blocks, they stay held and the non-streamed answer carries a top-level
//     kv_transfer_params {do_remote_prefill: true, do_remote_decode: false,
//     remote_block_ids: [[ids...]], remote_engine_id, remote_request_id, remote_host,
//     remote_port (the side channel), tp_size: 1}. A request whose kv_transfer_params has
//     do_remote_prefill true is a decode: before anything is written the worker POSTs
//     {engine_id, request_id, block_ids, tokens} to remote_host:remote_port; the prefill side
//     checks them, waits the modelled transfer time (moved tokens x kv_bytes_per_token,
//     default the profile's, over pd_link_gbps, default 100, time-scaled), frees the
//     blocks and answers; the decode worker then allocates the prompt's blocks, computes
//     only its last token (the pulled blocks are cached and published as BlockStored)
//     and streams. Held blocks are freed unpulled after pd_kv_hold_ms (default 480 s).
//   - SGLang. A request with bootstrap_host, bootstrap_port and bootstrap_room goes to
//     a prefill worker and a decode worker at once. The prefill worker computes the
//     prompt and one token (its answer is for the router to discard) and holds the KV
//     under the room; the decode worker POSTs {room, wait_ms, tokens} to
//     bootstrap_host:bootstrap_port (null: see below), which waits for that room's
//     prefill, then transfers as above. A both worker ignores the bootstrap fields (it
//     cannot tell which half it is).
//   - A restart drops held KV; an offline restart (POST /sim/restart offline) closes
//     the side channel with the HTTP server and reopens both on their ports.
//   - Failures are bounded and clean: a decode worker that gets no KV within
//     pd_transfer_timeout_ms (default 30 s) -- prefill worker dead or unreachable,
//     unknown engine or request, blocks expired or already pulled, block ids that do
//     not match, the room's prefill never coming, faults transfer_hang and
//     transfer_error_rate -- answers 503 with an OpenAI error before any byte is
//     written. Wrong or garbage P/D fields, or a request the role cannot take (a vLLM
//     prefill on a decode worker, a decode on a prefill worker, a prefill with stream
//     true) are 400s; vLLM itself would log and fall back to a local prefill on some of
//     these, kvsim refuses so that routers' mistakes show.
//   - Metrics: requests waiting for their KV count in num_requests_waiting (SGLang:
//     num_queue_reqs), and the blocks a KV in transit will land in (taken when the
//     pull starts, if free) and held blocks in kv_cache_usage_perc (token_usage), like
//     vLLM's WAITING_FOR_REMOTE_KVS requests and delayed-free blocks;
//     kvsim:pd_transfers_total{side=send|recv, result} and
//     kvsim:pd_transfer_seconds{side}. [Worker.PDStats].
//   - Only the tokens beyond the decode worker's own prefix-cache hit move (the pull
//     says how many), as vLLM's decode side pulls what it lacks.
//   - Simplifications: the decode worker gives its transit blocks back and allocates
//     the request's own at admission (the request may queue for blocks then); the
//     transfer is one delay, not per layer;
//     cached_tokens on a decode worker counts the pulled tokens, as vLLM's
//     num_cached_tokens counts externally computed ones.
//
// Checked against (read, not copied):
//   - vllm-project/vllm tests/v1/kv_connector/nixl_integration/toy_proxy_server.py: the
//     prefill request (kv_transfer_params with the six fields, stream false, max_tokens
//     1, stream_options removed), the answer's top-level kv_transfer_params copied into
//     the decode request.
//   - vllm-project/vllm vllm/distributed/kv_transfer/kv_connector/v1/nixl/scheduler.py
//     (request_finished, update_state_after_alloc): the params a prefill returns
//     (do_remote_prefill, do_remote_decode false, remote_block_ids as one list per
//     KV-cache group, remote_engine_id, remote_request_id, remote_host/remote_port =
//     the side channel, tp_size), held only when finished by length with blocks, the
//     decode side needing remote_engine_id, remote_request_id, remote_host and
//     remote_port, and no transfer when remote_block_ids is empty (kvsim: the decode
//     worker prefills locally); vllm/envs.py: VLLM_NIXL_ABORT_REQUEST_TIMEOUT default
//     480 s. Older connectors' flat remote_block_ids lists are accepted too.
//   - sgl-project/sglang python/sglang/srt/disaggregation/mini_lb.py: the router adds
//     bootstrap_host (the prefill's host), bootstrap_port and bootstrap_room (random in
//     [0, 2^63-1]) and posts the same body to both workers at once, returning the
//     decode answer; sgl-router/src/routers/http/pd_router.rs: prefill workers are
//     registered with an optional bootstrap_port, prefill answers are drained and
//     dropped in the background; python/sglang/srt/managers/scheduler.py
//     (handle_generate_request): a null bootstrap_port means the server's own
//     disaggregation_bootstrap_port (default 8998; kvsim: the decode worker's
//     bootstrap_port if set, else 8998); python/sglang/srt/disaggregation/common/conn.py:
//     the bootstrap server (aiohttp on the bootstrap port) with GET /health.
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
