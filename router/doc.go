// Package router is kvroute's HTTP front: it parses OpenAI-compatible requests, asks a
// [scorer.Selector] which worker should serve each one, and forwards it.
//
// Where things happen, in request order:
//
//   - server.go: the fasthttp listener and the endpoint table (handler).
//   - request.go: parseRequest reads only the fields routing needs (model, stream,
//     messages or prompt, user); the original body bytes are forwarded untouched.
//   - route.go: candidates (available workers serving the model, minus those already
//     tried) and the policy's choice.
//   - forward.go: one attempt on one worker, retries on another while nothing has reached
//     the client, and the streaming passthrough.
//   - errors.go: every error a client can see, mapped to an HTTP status in one function
//     (statusOf) and written as OpenAI-shaped JSON.
//
// Invariants: a request is retried only while no byte of the response has been written
// to the client; every worker.Begin is matched by exactly one End, including when the
// client disconnects mid-stream; fasthttp's RequestCtx is never touched from the
// streaming writer (it runs after the handler returns), which only sees copies.
package router
