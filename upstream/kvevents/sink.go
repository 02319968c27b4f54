package kvevents

import (
	"github.com/kvroute/kvroute/proto"
)

// Sink receives every worker's batches, in sequence order per worker. The indexer is the
// sink in the router; the NATS publisher is the sink in `kvroute bridge`.
//
// Calls for one proto.WorkerKey never overlap and arrive in order; calls for different keys may
// run concurrently, so implementations must be safe for concurrent use. b and its slices
// are only valid during Apply: the caller reuses them for the next batch, so a sink copies
// what it keeps. Apply must not block for long: it holds up that worker's stream. Sink
// methods must not call back into the Manager's Remove or Set, which wait for the
// worker's stream to stop and would deadlock.
type Sink interface {
	// Apply applies one batch of the worker's events. model is the worker's configured
	// model name ("" when unknown).
	Apply(w proto.WorkerKey, model string, b *proto.Batch)
	// Reset tells the sink that everything it knows about the worker is void: drop it.
	// reason is one of the Reason constants.
	Reset(w proto.WorkerKey, reason string)
}

// The reasons a worker's state is reset. They are the values of the reason label of
// kvroute_events_resets_total, so the set is closed.
const (
	// ReasonStart: the first batch from a publisher; what came before it is unknown.
	ReasonStart = "start"
	// ReasonRestart: the sequence went backwards, so the engine restarted and its cache
	// is new.
	ReasonRestart = "restart"
	// ReasonGap: batches were lost and could not be replayed.
	ReasonGap = "gap"
	// ReasonDead: the publisher has been unreachable for longer than the grace period.
	ReasonDead = "dead"
	// ReasonRemoved: the worker was removed from the configuration.
	ReasonRemoved = "removed"
	// ReasonUpstream: the publisher upstream of a NATS consumer (a bridge) reset the
	// worker; the bridge's own reason is logged.
	ReasonUpstream = "upstream"
)

// The reasons a message is dropped: the values of the reason label of
// kvroute_events_dropped_messages_total.
const (
	// DropOversize: a frame or message announced more than the configured maximum size
	// ([Options].MaxMessageBytes); the connection is closed and redialed.
	DropOversize = "oversize"
	// DropMalformed: a message or batch that could not be decoded was skipped.
	DropMalformed = "malformed"
)

// SinkFuncs adapts two functions to [Sink], e.g. an indexer offering
// Apply(worker, model, batch) and ClearWorker(worker):
//
//	kvevents.SinkFuncs{
//		ApplyFunc: func(w proto.WorkerKey, model string, b *proto.Batch) { idx.Apply(w.String(), model, b) },
//		ResetFunc: func(w proto.WorkerKey, _ string) { idx.ClearWorker(w.String()) },
//	}
//
// A nil function ignores its calls.
type SinkFuncs struct {
	ApplyFunc func(w proto.WorkerKey, model string, b *proto.Batch)
	ResetFunc func(w proto.WorkerKey, reason string)
}

// Apply calls ApplyFunc.
func (s SinkFuncs) Apply(w proto.WorkerKey, model string, b *proto.Batch) {
	if s.ApplyFunc != nil {
		s.ApplyFunc(w, model, b)
	}
}

// Reset calls ResetFunc.
func (s SinkFuncs) Reset(w proto.WorkerKey, reason string) {
	if s.ResetFunc != nil {
		s.ResetFunc(w, reason)
	}
}

var _ Sink = SinkFuncs{}
