// Package chaos is kvroute's chaos suite: a real router ([stack.Stack]) in front of a
// kvsim fleet (bench/sim), driven by a real closed-loop HTTP load generator ([RunLoad]),
// all on loopback, while faults are injected into workers, the event feeds, the NATS
// server and the router itself.
//
// Every case asserts the same contract: every client request either completes or fails
// with a clean error (an OpenAI error JSON, or mid-stream an SSE error event); none is
// lost (cut without an error) or hangs (every request has a client deadline); and the
// router's load bookkeeping (each worker's in-flight count, pending prefill tokens and
// active blocks) returns to zero once the load stops, without the expiry backstop.
//
// Cases: a worker whose streams die mid-way, a worker process killed, a worker that
// accepts and never answers, a worker answering 500 then recovering, an engine restart
// with its seq back to 0 (event sockets kept or rebound), dropped event batches, a NATS
// server restart under a JetStream-fed router, the router stopped under load (its Run
// context, as SIGTERM), config reloads through the admin API, and a real SIGTERM to a
// built kvroute binary.
//
// The quick subset (every case but the binary one, about a second of load each) runs in
// `go test ./bench/chaos/` and so in `make test`; the full suite, with 10-15 s of load
// per fault, runs with KVROUTE_CHAOS=full (scripts/chaos.sh), which also writes the table
// of outcomes ([WriteTable]) to the file named by KVROUTE_CHAOS_TABLE. With
// KVROUTE_TEST_DATA_PLANE=event_loop the router serves on the event-loop data plane
// (router/dataplane.go); `make test` runs the quick subset both ways.
//
// Invariants of the package itself: [RunLoad] never cancels a request it has sent (only
// its own deadline ends it), so a drain is observed as clients see it; [Send]
// classifies by what reached the client, never by what the router logged.
//
// bench/chaos/fuzzall.sh runs every Go fuzz target of the repository one after another.
package chaos
