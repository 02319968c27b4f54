// Package proxy is the proxy-overhead benchmark of issue 2: how much latency and CPU
// kvroute adds between a client and a worker, next to nginx as a plain round-robin
// reverse proxy, on loopback.
//
// Parts:
//   - upstream.go: [Upstream], a fake OpenAI-compatible worker that answers at once
//     (a ~2 KB chat completion, or a 200-chunk vLLM-shaped SSE stream), so the proxy is
//     what is measured; [UpstreamMain] runs it as its own process.
//   - load.go: [RunLoad], an open-loop load generator: arrivals on a fixed schedule,
//     latency from the scheduled send time, exact percentiles from all samples.
//   - harness.go: [Run] starts the fake upstream, kvroute (round_robin, or the
//     [Config.Policy] and [Config.Tokenize] given) and nginx as child processes,
//     measures every target on every workload in interleaved rounds, and reads each
//     process's CPU time from /proc; report.go and markdown.go turn that into a
//     [Report].
//   - floorproxy/: the least a fasthttp reverse proxy does (round robin, nothing
//     else), to run in kvroute's place (--kvroute): the ceiling of kvroute's
//     architecture on the machine at hand.
//   - loopproxy/: the least an event-loop proxy does (one epoll loop on one thread, as
//     an nginx worker), in kvroute's place likewise: what a data plane that waits for
//     readiness in one loop, instead of a goroutine per connection, would cost.
//
// Invariants:
//   - Latencies are measured from when the schedule says a request should have been
//     sent, never from when it was sent, so a stalled generator or target cannot hide
//     latency (no coordinated omission); the generator's own lateness is reported.
//   - Every answer is checked byte for byte against the fake upstream's deterministic
//     body; a wrong or truncated answer is a failed request, never a latency sample.
//   - All targets of a run see the same workload bytes and the same offered load per
//     target, and share the machine's noise alike: in the mixed mode requests to the
//     targets alternate one by one, in the sequential mode windows rotate order.
//   - Child processes are stopped before [Run] returns, whatever happened.
//   - Numbers in a report come from the run that produced it; nothing is estimated.
package proxy
