// Package router is kvroute's HTTP front: it parses OpenAI-compatible requests, asks a
// [scorer.Selector] which worker should serve each one, and forwards it.
//
// Where things happen, in request order:
//
//   - server.go: the fasthttp listener and the endpoint table (handler); framing.go:
//     before anything else the handler checks the request's framing (smuggling, RFC
//     9112 section 6.3), reserves its body's memory from the in-flight budget and reads
//     the body (the server streams bodies, so this happens after the headers only).
//   - limits.go: below TLS, the connection limits (refused with an OpenAI-shaped answer)
//     and the per-write timeout; auth.go: the gate every request passes first (API key,
//     rate limit from ratelimit.go, the admin token of /metrics).
//   - request.go: parseRequest reads only the fields routing needs (model, stream,
//     messages or prompt, user) with the validating scanner of router/jsonscan; the
//     original body bytes are forwarded untouched.
//   - route.go: candidates (available workers serving the model, minus those already
//     tried) and the policy's choice.
//   - forward.go: one attempt on one worker, retries on another while nothing has reached
//     the client (and the client is still connected: clientgone_unix.go), and the
//     streaming passthrough (close-delimited to HTTP/1.0 clients: http10.go); hop.go
//     the hop-by-hop fields never forwarded.
//   - errors.go: every error a client can see, mapped to an HTTP status in one function
//     (statusOf) and written as OpenAI-shaped JSON.
//   - cacheaware.go: the cache-aware steps (prompt hashing, index match, load bookkeeping,
//     predictions, OnScrape for the scraped engine metrics); decisions.go the ring of
//     recent decisions and their explanation.
//   - stats.go: the windowed traffic figures the Server records (it is the admin API's
//     TrafficSource); reload.go the admin API's hooks: the policy a config reload
//     replaces, the admin handler mounted under admin.path_prefix, the TLS settings.
//
// What a router runs with (pool, index, event feeds, replica sync, scraper, prompt
// hasher, admin listener, config reload) is built and started by the composition root,
// package cmd/stack; this package only receives it through [Options].
//
// Invariants: a request is retried only while no byte of the response has been written
// to the client; every worker.Begin is matched by exactly one End, including when the
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
