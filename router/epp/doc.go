// Package epp makes kvroute the endpoint picker (EPP) of a Gateway API Inference
// Extension gateway: an Envoy ext_proc server (envoy.service.ext_proc.v3
// ExternalProcessor/Process) that tells the gateway which pod serves each request,
// with the router's own decision path and bookkeeping (router.Server.Pick).
//
// # Protocol
//
// It follows docs/proposals/004-endpoint-picker-protocol/README.md of
// kubernetes-sigs/gateway-api-inference-extension, read beside that repository's
// lightweight picker (pkg/lwepp/handlers/server.go, request.go) and its body chunking
// (pkg/common/envoy/chunking.go); no code is taken from them. One stream carries one
// HTTP request:
//
//   - The request headers (FULL_DUPLEX_STREAMED, so not answered yet) give :path,
//     x-request-id, x-kvroute-priority and the session header, and the filter metadata
//     envoy.lb.subset_hint / x-gateway-destination-endpoint-subset the subset hint (a
//     list, or a comma-separated string; present but empty or unmatched means nothing
//     is eligible: 503).
//   - The body is gathered up to Options.MaxBodyBytes (epp.max_body_bytes, else
//     max_body_bytes); a larger one ends the stream RESOURCE_EXHAUSTED. Its end
//     (end_of_stream, or trailers) places the request: parse, hash, match, score and,
//     when every candidate is full, the overload queue, exactly as the HTTP API does.
//   - The answer is the request headers' response: header mutation
//     x-gateway-destination-endpoint "ip:port[,ip:port...]" (the pick, then
//     Options.Fallbacks candidates cheapest first) and content-length, the same value
//     in dynamic metadata envoy.lb, clear_route_cache set; then the body streamed back
//     unchanged in chunks of at most 62000 bytes, the last with end_of_stream (or
//     followed by the trailers' response). A request the router refuses gets an
//     ImmediateResponse with the router's OpenAI-shaped JSON error: 400 for a body
//     without a model or invalid JSON, 404 for an unknown model, 503 when nothing is
//     eligible, 429 when shedding (queue full or timed out).
//   - The response headers give :status, content-type and, in the metadata context,
//     envoy.lb / x-gateway-destination-endpoint-served: when a fallback served, the
//     request's load moves to it and its predictions are recorded there. Response body
//     chunks are echoed back (FULL_DUPLEX_STREAMED) or just acknowledged (other modes)
//     and read for usage (the JSON body's, or the SSE events', including cached
//     tokens), which feeds the truth metrics, the decision log and the statistics.
//
// The request body must be FULL_DUPLEX_STREAMED (the protocol's mode); a stream
// announcing another request_body_mode ends FAILED_PRECONDITION. Out-of-order messages
// (a body before headers, a response before the request's end, anything after the
// end) and messages with no known phase end the stream INVALID_ARGUMENT. However a
// stream ends, cut included, the request's load ends (Pick.Done). Never a panic:
// FuzzProcess drives arbitrary message sequences and checks that no load is left.
//
// # Health
//
// Health serves grpc.health.v1 with the protocol's services: liveness (SERVING while
// the process answers), readiness and envoy.service.ext_proc.v3.ExternalProcessor
// (SERVING while the router is not draining and some worker is available). cmd/stack
// serves it on epp.health_listen (9003) and on the ext_proc port (9002).
//
// # Pods
//
// The pods come from kvroute's own membership sources (static workers, DNS, or
// discovery.kubernetes's label selector on EndpointSlices): an InferencePool's
// selector and targetPorts map onto discovery.kubernetes's selector and port (see
// deploy/kubernetes/epp). Reading InferencePool objects themselves is not done yet.
package epp
