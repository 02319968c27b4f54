// Package upstream is the router's view of its inference workers: their connections,
// health, served models and load.
//
// A [Pool] holds the configured workers. Each [Worker] has two keep-alive connection
// pools (fasthttp HostClients): one for streaming requests, whose connections bound the
// wait for the response headers by the first-byte timeout, and one for non-streaming
// requests, whose headers only arrive when generation is done and so are bounded by the
// total timeout alone.
//
// A worker is available for routing when its active health checks pass and it is not
// ejected. Passive ejection: eject_after consecutive failed requests (connect error,
// timeout, 5xx) eject it for eject_base, doubling with each ejection in a row up to
// eject_max; it is re-admitted when the ejection has passed and a health check succeeds.
// A request that timed out (no first byte within timeouts.first_byte, no answer within
// timeouts.total) marks the worker suspect: its next active check also asks for a
// one-token completion, bounded by the first-byte timeout, and a worker failing it is
// ejected at once and re-admitted only after such a probe passes (health.generation_probe).
// So an engine that answers /health but never generates leaves rotation after one
// timed-out request, however few requests the policy still sends it.
// Availability is one atomic load on the request path.
//
// Every request the router makes to a worker carries the worker's API key when one is
// configured ([Worker.Authorize] on fasthttp requests, [Pool.HTTPClient] for net/http
// calls) and uses the worker's TLS settings; Pool.HTTPClient refuses any host that is
// not a pool worker and never follows redirects.
//
// Goroutines: [Pool.Run] runs one health/discovery loop per worker until its context
// ends. Every Worker method is safe for concurrent use.
package upstream
