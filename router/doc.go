// Package router is kvroute's HTTP front: it parses OpenAI-compatible requests, asks a
// [scorer.Selector] which worker should serve each one, and forwards it.
//
// A request's path, in order (file: function):
//
//	limits.go      guardListener.Accept   connection limits below TLS; guardConn bounds each write
//	                                      and closes a refused upload lingering
//	server.go      Server.handle          the endpoint table
//	auth.go        Server.admit           API key, per-client rate limit, the /metrics token
//	framing.go     Server.readBody        framing (no smuggling, RFC 9112 6.3), body budget, body read
//	forward.go     Server.handleInference parse -> hash -> choose -> forward -> record, with retries
//	responses.go   Server.handleResponses the Responses API: hashed as a chat; stored ids pinned to their worker
//	passthrough.go Server.handlePassthrough the engines' other endpoints, by the body's model (JSON or multipart)
//	request.go     parseRequest           only the fields routing needs (router/jsonscan validates)
//	cacheaware.go  Server.hashPrompt      prompt -> block hashes (router/blockhash) -> index matches
//	queue.go       Server.route           pick, or wait in the queue while every worker is full
//	route.go       Server.pick            candidates, hard limits, the policy's choice, the decision ring
//	forward.go     Server.attempt         one exchange with one worker -> one outcome record
//	forward.go     Server.settle          the outcome applied: load, health, predictions, replicas, stats
//	forward.go     streamPipe             the streamed answer, chunk by chunk (close-delimited to HTTP/1.0)
//	errors.go      statusOf, writeError   every client-visible error, mapped to a status in one place
//	stats.go       Server.count           Prometheus metrics and the windowed figures of the admin API
//
// Ten files: limits, server, auth, framing, forward, request, cacheaware, route, errors
// and stats (router/jsonscan is the JSON scanner; clientgone_unix.go is the platform
// half of forward.go's check that a client is still there before a retry; coalesce.go
// lets streamPipe forward the chunks already received at once; series.go keeps the
// metric children stats.go and cacheaware.go update per request; queue.go is
// the wait queue of requests that find every worker full, issue #18; responses.go and
// passthrough.go the rest of the OpenAI surface, issue #22: both enter forward.go's
// Server.forward, so they share its retries, limits, headers and metrics). reload.go
// holds the hooks of config reload and the admin mount; the admin API is router/admin.
//
// Prefill/decode disaggregation (issue #20) is pd.go: forward hands a chat or completion
// request whose model has workers of role prefill and decode to Server.forwardPD, which
// runs the prefill phase and sets up forward's loop for the decode phase (a pick by
// load, streamPipe, settle), or for a fallback on one pool. Protocol details and where
// each was checked (read 2026-12):
//
//   - vLLM's prefill request (max_tokens 1 and max_completion_tokens 1 when present,
//     stream false, no stream_options, min_tokens and min_completion_tokens dropped, the
//     exact kv_transfer_params with do_remote_decode true and null remote fields), the
//     answer's kv_transfer_params copied into the decode request, the decode answer
//     streamed to the client, X-Request-Id sent to both: vLLM's example proxy
//     tests/v1/kv_connector/nixl_integration/toy_proxy_server.py (vllm-project/vllm),
//     which also sends the decode request only the answer's params when non-empty (a
//     decode worker then prefills itself: our no_kv_params fallback). do_remote_prefill
//     true on the decode request is what the issue asks and what vLLM's NixlConnector
//     answers anyway; the router sets it.
//   - SGLang's fields: bootstrap_host is the prefill worker URL's host name,
//     bootstrap_port the prefill worker's configured port or null, bootstrap_room a
//     random integer in [0, 2^63) (rand & i64::MAX), the same body sent to the prefill
//     and the decode worker at once, the client answered from the decode worker:
//     sgl-project/sglang sgl-router/src/routers/bootstrap_injector.rs. Not done: its
//     per-choice arrays for n > 1 and batch prompts (one room per request here).
//
// What a router runs with (pool, index, event feeds, replica sync, scraper, prompt
// hasher, admin listener, config reload) is built and started by the composition root,
// package cmd/stack; this package only receives it through [Options].
//
// Invariants: a request is retried only while no byte of the response has been written
// to the client; a request bound to a stored response (previous_response_id,
// /v1/responses/{id}) goes to the worker holding it or fails, never elsewhere; every worker.Begin is matched by exactly one End, including when the
// client disconnects mid-stream; fasthttp's RequestCtx is never touched from the
// streaming writer (it runs after the handler returns), which only sees copies; a
// request refused before its body was read closes its connection (the unread bytes
// must never be taken for a request), and requests fasthttp cannot parse get fixed
// messages (its error text quotes its read buffer: the next pipelined request too).
//
// Security invariants: while auth.keys are set no request but /health, /ready, /metrics
// and the admin path (which checks its own token) reaches the endpoint table without a
// valid key, and the client's Authorization and api-key headers never reach a worker;
// the gate does not allocate; a forwarded request is only ever sent to a pool worker's
// address, whatever the request says.
package router
