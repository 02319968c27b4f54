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
// Catch-up at connect: when a source with a replay endpoint has subscribed (first connect,
// and every reconnect while the worker is unknown, e.g. after the dead reset), it resets
// the worker "start" and replays the buffer from seq 0 at once ([Tracker.CatchUp]), so a
// router started next to an idle engine, which publishes nothing until it gets traffic,
// knows the engine's cache without waiting for its next batch. Subscribing first and then
// asking for the replay leaves no hole between the two: a batch published meanwhile comes
// in the replay, live, or both; live copies of batches the catch-up applied are dropped
// (same seq and content) for the rest of the session or until a later live batch; a
// batch in neither (the publisher handled the subscription after the replay) is a gap at
// the next live batch. An empty buffer or a failed catch-up (logged and counted in
// kvroute_events_replays_total) leaves the worker unknown: its first live batch replays
// 0..seq-1 as without catch-up, without a second start reset. A worker without a replay
// endpoint waits for its first live batch, as before.
//
// Engines are dialed through a guarded TCP transport (see guardedScheme): the ZMTP
// handshake has a deadline ([Options].DialTimeout) and TCP keepalives notice a vanished
// peer in about 20s, so a silent or dead endpoint never blocks a source past its context.
//
// Message size: zmq4 (v0.17.0, conn.go Conn.read) allocates whatever size a frame header
// announces, so a peer that completes the handshake and announces 2^40 bytes kills the
// process with "fatal error: runtime: out of memory", and zmq4 has no option to bound it.
// Rather than fork zmq4, the guarded transport wraps each dialed net.Conn in a reader that
// follows the ZMTP 3.x framing as zmq4 reads it (64-byte greeting; then per frame a flags
// byte, a 1- or 8-byte size and the body: https://rfc.zeromq.org/spec/23/ and
// https://rfc.zeromq.org/spec/37/) and fails the Read that would deliver the last byte of
// a size over [Options].MaxMessageBytes, or of a frame taking its message's total past
// it, or a message's 1025th frame. zmq4 thus never sees the header; it gets an
// [*OversizeError] (errors.Is [ErrMessageTooLarge]) and drops the connection. The
// refusal is counted (kvroute_events_dropped_messages_total{reason="oversize"}) where it
// happens, since zmq4 may report the dead connection as another error; a live source then
// reconnects with its backoff, a replay fails like any failed replay. The wrapper only
// parses framing, costs a few comparisons per read, and works for every socket type.
//
// Staleness (issue #19): each feed records the engine timestamp of its last live batch
// and that batch's lag (arrival minus timestamp); a [Staleness] monitor judges from them
// and from the router's routing record whether a serving worker's view is older than a
// bound, exports kvroute_events_last_event_age_seconds, kvroute_events_stale and
// kvroute_events_epoch, and tells the caller (the index) when a feed turns stale or
// catches up. See staleness.go for the rule.
//
// Invariants:
//   - Per worker key, Sink calls never overlap and follow the publisher's order; a batch
//     is applied at most once per tracking epoch (a catch-up's replay and the live
//     stream included), and seqs applied between two resets are consecutive but for
//     live batches that did not decode, which are skipped.
//   - Whenever batches are lost for good (no replay endpoint, replay failed, buffer
//     already past the gap) or the sequence goes backwards (engine restart), the sink
//     gets Reset before any later batch: entries are cleared, never left stale.
//   - An undecodable live batch whose seq is in sequence is skipped and counted
//     (kvroute_events_dropped_messages_total{reason="malformed"}); it resets nothing.
//     Its removals are missed, so a few entries may outlive their blocks, which is
//     preferred to clearing the whole worker and losing every hit it would give (issue
//     #15). Only a gap or a restart, revealed by seqs, goes through replay and reset.
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
