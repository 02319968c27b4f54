// Package router is kvroute's HTTP front: it parses OpenAI-compatible requests, asks a
// [scorer.Selector] which worker should serve each one, and forwards it.
//
// A request's path, in order (file: function):
//
//	limits.go      guardListener.Accept   connection limits below TLS; guardConn bounds each write
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
// half of forward.go's check that a client is still there before a retry; queue.go is
// the wait queue of requests that find every worker full, issue #18; responses.go and
// passthrough.go the rest of the OpenAI surface, issue #22: both enter forward.go's
// Server.forward, so they share its retries, limits, headers and metrics). reload.go
// holds the hooks of config reload and the admin mount; the admin API is router/admin.
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
