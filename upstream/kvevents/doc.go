// Package kvevents ingests the engines' KV-cache events: one ZMQ SUB source per worker
// (and per data-parallel rank), sequence tracking with replay of gaps, and resets when
// the stream's history is lost, delivered in order to a user-supplied [Sink] (the
// indexer in the router, the NATS publisher in `kvroute bridge`).
//
// Wire: vLLM's (and SGLang's) ZMQ PUB stream, [topic, seq 8-byte BE, msgpack batch], and
// the replay ROUTER (a DEALER sends ["", start seq]; one reply per buffered batch, then
// seq -1). Decoding is package proto's. ZMQ is github.com/go-zeromq/zmq4, pure Go.
//
// State machine per worker: see [Tracker]. Sources reconnect with exponential backoff
// and jitter ([Options].BackoffMin..BackoffMax); messages missed while disconnected show
// up as a gap at the next batch and are replayed. A worker unreachable for longer than
// [Options].DeadAfter is reset once ("dead"); when it comes back, its replay buffer is
// replayed from seq 0.
//
// Engines are dialed through a guarded TCP transport (see guardedScheme): the ZMTP
// handshake has a deadline ([Options].DialTimeout) and TCP keepalives notice a vanished
// peer in about 20s, so a silent or dead endpoint never blocks a source past its context.
//
// Invariants:
//   - Per worker key, Sink calls never overlap and follow the publisher's order; a batch
//     is applied at most once per tracking epoch, and seqs applied between two resets
//     are consecutive.
//   - Whenever batches are lost for good (no replay endpoint, replay failed, buffer
//     already past the gap, undecodable batch) or the sequence goes backwards (engine
//     restart), the sink gets Reset before any later batch: entries are cleared, never
//     left stale.
//   - A removed worker gets Reset("removed") after its source has stopped; nothing of it
//     reaches the sink afterwards.
//   - Every goroutine takes a context and ends with it; [Manager.Run] returns only after
//     all of them have.
//
// Known limit: an engine that restarts while kvroute is disconnected and publishes at
// least as many batches as before it restarted is indistinguishable, by seq alone, from a
// gap; the replay then fills from the new engine's buffer and entries of the old engine
// may stay until they are removed or the worker is purged.
package kvevents
