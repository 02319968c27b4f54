// Package replica lets several kvroute routers behind one L4/L7 balancer act as one
// router: each replica shares the load it has put on every worker and the blocks its
// routing decisions predicted, over NATS, so the replicas do not all send a burst to the
// same worker (the herding of independent routers, Dynamo #589), and a restarted
// replica can copy a peer's index instead of starting cold (Dynamo #1056).
//
// # Protocol
//
// Every replica of a cluster publishes on and subscribes to one subject,
// <prefix>.<cluster>.state (default prefix "kvroute.replica"). A state message
// (wire.go has the byte layout) carries the sender's id, an incarnation (random per
// process start), a sequence number, its send time and:
//
//   - per worker, the sender's own load there as absolute totals — requests in flight,
//     prompt tokens not yet prefilled, KV blocks held: the counters upstream.Load keeps
//     for the router's scorer — only for workers whose totals changed since its previous
//     message, or every worker in a heartbeat (flag full, every Heartbeat, default 1 s);
//   - the routing decisions made since its previous message: (worker, block hashes),
//     which each receiver records with indexer.Index.Predict;
//   - the Responses API responses it saw stored since its previous message: (response
//     id, worker, model), handed to the router's sink ([Sync.SetResponseSink]), so a
//     follow-up naming previous_response_id reaches the worker holding it through any
//     replica (issue #22). Like predictions they are sent once: a replica that joins
//     later, or misses the message, answers 404 response_not_found for those ids.
//
// Totals rather than deltas make the protocol idempotent: a lost or reordered message
// costs at most one FlushInterval of staleness, the next message (at the latest the next
// heartbeat) repairs it, and receivers keep no per-request state — memory is bounded by
// peers x workers. A replica publishes when a request is routed (Changed), coalescing
// what happens within FlushInterval (default 5 ms) into one message, and keeps
// publishing changes every FlushInterval while it has load, so first tokens and
// completions (which reduce load) propagate too.
//
// A receiver keeps each peer's last totals per worker and, per worker, their sum over
// live peers ([Sync.Remote]), which the router adds to its own counters when it scores a
// candidate: the scorer and the load guard see fleet-wide load. Its own messages
// (same id and incarnation) are ignored; a message from its id with another incarnation
// means two replicas share an id (logged, dropped). A peer's new incarnation voids what
// the old one reported. A peer silent for ExpireAfter (default 3 heartbeats) is dropped
// with its load: a crashed replica's share disappears within that time.
//
// # Warm start
//
// A starting replica publishes a request on <prefix>.<cluster>.dump; one running peer
// (a queue group picks it) answers with its indexer dump (indexer.Index.Dump), in
// ordered chunks below the server's max payload, to the request's reply inbox. The new
// replica restores it (indexer.Index.Restore) before serving and before its event feeds
// start. No answer within the timeout, a lost chunk or a bad dump: it starts cold
// (logged, counted). With ZMQ feeds the workers' replay buffers rebuild the confirmed
// entries anyway (a ZMQ feed resets its worker at the first batch); the dump matters
// most for predictions (feeds off) and for NATS feeds without a durable consumer.
//
// # Invariants
//
// Routing never waits for NATS: Changed and Predicted only signal or append to a
// bounded buffer (predictions beyond MaxPending are dropped and counted), and publishing
// happens on Run's goroutine; an outage makes publishes fail (counted) while the
// connection reconnects on its own, and the first message after a failure is a full
// one. Remote sums only include workers of this router's pool (others are dropped,
// counted) and never go below zero as read. Decoding never trusts a count for
// allocation and never panics (FuzzDecodeMessage).
//
// Metrics: kvroute_replica_messages_sent_total, _messages_received_total,
// _predictions_sent_total, _predictions_received_total, _dropped_total{reason},
// _peers, _peers_expired_total, _remote_{in_flight,prefill_tokens,active_blocks}{worker},
// _sync_lag_seconds (publish to apply; across hosts it includes clock skew) and
// _warm_starts_total{outcome}.
package replica
