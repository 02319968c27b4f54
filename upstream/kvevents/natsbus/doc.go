// Package natsbus carries normalized KV-event batches over NATS, so one `kvroute bridge`
// next to each engine can feed any number of routers, and a restarted router can catch
// up from JetStream.
//
//	engine --ZMQ--> kvroute bridge (kvevents.Manager + [Publisher]) --NATS--> [Consumer] --> indexer
//
// Messages are [proto.Envelope] values (versioned binary, see proto.AppendEnvelope) on
// subject <prefix>.<model>.<worker>.dp<rank> ([Subject]; tokens sanitised, the real
// identity travels inside the message). A bridge's resets (engine restart, unrecoverable
// gap, dead publisher) travel as reset envelopes, in order with the batches.
//
// The [Consumer] runs one kvevents.Tracker per worker key, the same state machine as
// the ZMQ sources (minus replay): a gap in a worker's seqs (core NATS dropped messages)
// or a seq going back resets the worker. With JetStream it reads the stream through a
// durable consumer (resumes after the last acknowledged message when the router
// restarts) or, without a durable name, an ephemeral one that delivers everything the
// stream retains (rebuilds the index from history).
//
// Liveness: a bridge publishes a heartbeat envelope per worker every few seconds; a
// consumer with DeadAfter set resets a worker whose bridge has stayed silent that long
// (a dead bridge or a partition), so its entries do not outlive it.
//
// [StartEmbedded] runs an in-process nats-server with JetStream on loopback, for
// single-binary setups and tests.
//
// Invariants: per worker, the sink sees batches and resets in the order the bridge
// published them; a message is acknowledged only after the sink has returned; every
// goroutine ends with its context.
package natsbus
