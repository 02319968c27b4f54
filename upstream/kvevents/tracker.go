package kvevents

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvroute/kvroute/proto"
)

// Replayer fetches a worker's buffered batches from seq from on, calling fn for each in
// the publisher's order (oldest first) until the publisher's end marker or until fn
// returns false. The batch passed to fn is only valid during the call. A publisher that
// no longer holds from starts at its oldest buffered batch; the caller detects that from
// the seqs.
type Replayer interface {
	Replay(ctx context.Context, from uint64, fn func(b *proto.Batch) bool) error
}

// TrackerOptions configure a [Tracker].
type TrackerOptions struct {
	// Model is the worker's model name, passed to the sink.
	Model string
	// ResetOnStart resets the worker before its first batch and replays what the
	// publisher still holds from seq 0, because nothing is known of what came before.
	// ZMQ sources set it. A NATS consumer does not: a reset reaches it from the bridge,
	// and a durable consumer resumes where the router's restored index left off.
	ResetOnStart bool
	// Replay fills gaps; nil means gaps cannot be filled and reset the worker.
	Replay Replayer
	// Metrics receives the worker's counters; nil disables them.
	Metrics *Metrics
	// Logger logs resets and replays; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Tracker applies one worker's batches to a [Sink] in sequence order, the state machine
// shared by ZMQ sources and NATS consumers:
//
//	unknown --first batch--> [reset "start" and replay 0..seq-1 if ResetOnStart] --> tracking(next = seq+1)
//	tracking, seq == next      --> apply, next++
//	tracking, seq >  next      --> gap: replay next..seq-1; at a hole the replay cannot
//	                               cover (no replayer, error, publisher's buffer already
//	                               past next or ending early): reset "gap", apply what it
//	                               returned past the hole; then apply seq
//	tracking, seq <  next      --> restart: reset "restart", replay 0..seq-1, apply seq
//	undecodable batch seq      --> as a batch with seq (gap, restart), but skipped, not
//	                               applied: no reset; next = seq+1
//	Reset(reason)              --> reset, back to unknown (no second reset at the next batch)
//
// A reset always reaches the sink before any batch applied after it. Replayed batches
// with seq >= the live batch that revealed the gap are not applied from the replay: the
// live stream delivers them, and applying them twice would look like a restart.
//
// A Tracker is used by one goroutine at a time; [Tracker.State] may be called from any.
type Tracker struct {
	key  proto.WorkerKey
	sink Sink
	opts TrackerOptions
	wm   *workerMetrics
	log  *slog.Logger

	// Owned by the goroutine driving the tracker.
	have      bool // next is known
	skipStart bool // the next first batch follows an explicit Reset
	next      uint64

	model atomic.Pointer[string] // the worker's model, see SetModel

	stats trackerStats
}

// trackerStats is the part of the state read concurrently. It must not be copied.
type trackerStats struct {
	haveSeq      atomic.Bool
	lastSeq      atomic.Uint64
	batches      atomic.Uint64
	events       atomic.Uint64
	gaps         atomic.Uint64
	replays      atomic.Uint64
	replayed     atomic.Uint64
	resets       atomic.Uint64
	decodeErrors atomic.Uint64
	lastEvent    atomic.Int64 // unix nanoseconds; 0 before the first batch

	// mu guards lastReset and lastError.
	mu        sync.Mutex
	lastReset string
	lastError string
}

// NewTracker returns a tracker feeding sink with key's batches.
func NewTracker(key proto.WorkerKey, sink Sink, opts TrackerOptions) *Tracker {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics, _ = NewMetrics(nil)
	}
	t := &Tracker{
		key: key, sink: sink, opts: opts,
		wm:  opts.Metrics.forWorker(key),
		log: opts.Logger.With("worker", key.String()),
	}
	t.model.Store(&opts.Model)
	return t
}

// SetModel changes the model passed to the sink with later batches (a NATS consumer
// learns it from the messages). Safe for concurrent use.
func (t *Tracker) SetModel(model string) {
	if *t.model.Load() != model {
		t.model.Store(&model)
	}
}

// Key returns the worker the tracker follows.
func (t *Tracker) Key() proto.WorkerKey { return t.key }

// Batch handles one live batch; b.Seq must be set. It may call the replayer, which
// blocks until the replay ends or ctx is done.
func (t *Tracker) Batch(ctx context.Context, b *proto.Batch) {
	t.advance(ctx, b.Seq)
	t.apply(b, false)
}

// advance brings the sequence up to seq, the live batch about to be applied or skipped:
// start, gap and restart handling as in the state machine above.
func (t *Tracker) advance(ctx context.Context, seq uint64) {
	if !t.have {
		t.have = true
		t.next = seq
		if t.opts.ResetOnStart && !t.skipStart {
			t.reset(ReasonStart)
			t.next = 0
			if seq > 0 {
				t.fill(ctx, seq, false)
			}
		}
		t.skipStart = false
	}
	switch {
	case seq > t.next:
		t.stats.gaps.Add(1)
		t.wm.gaps.Inc()
		t.log.Info("kv events gap", "want", t.next, "got", seq)
		t.fill(ctx, seq, true)
	case seq < t.next:
		t.log.Info("kv events sequence went back: engine restarted", "want", t.next, "got", seq)
		t.reset(ReasonRestart)
		t.next = 0
		if seq > 0 {
			t.fill(ctx, seq, false)
		}
	}
}

// Lost handles live batch seq that could not be decoded (err says why): it takes the
// batch's place in the sequence, so gaps and restarts before it are handled as for a
// decoded batch, and is skipped. The worker's entries are kept: one corrupt batch does
// not void what the intact ones before it said. Its own events are unknown, so blocks
// it stored are missing (a lost hit at worst) and blocks it removed may stay until the
// worker is reset or removed. It is counted in kvroute_events_decode_errors_total and
// kvroute_events_dropped_messages_total{reason="malformed"}.
func (t *Tracker) Lost(ctx context.Context, seq uint64, err error) {
	t.stats.decodeErrors.Add(1)
	t.wm.decodeErr.Inc()
	t.wm.drop(DropMalformed)
	t.setError(err)
	t.log.Warn("kv events batch undecodable, skipped", "seq", seq, "err", err)
	t.advance(ctx, seq)
	t.next = seq + 1
	t.stats.haveSeq.Store(true)
	t.stats.lastSeq.Store(seq)
}

// Reset resets the worker for reason (a Reason constant) and forgets the sequence: the
// next batch is accepted whatever its seq, without another reset.
func (t *Tracker) Reset(reason string) {
	t.reset(reason)
	t.have, t.skipStart = false, true
	t.stats.haveSeq.Store(false)
}

// Known reports whether the tracker follows a sequence, i.e. the sink may hold entries
// for the worker that a reset would clear.
func (t *Tracker) Known() bool { return t.have }

func (t *Tracker) reset(reason string) {
	t.stats.resets.Add(1)
	t.stats.mu.Lock()
	t.stats.lastReset = reason
	t.stats.mu.Unlock()
	t.wm.reset(reason)
	t.log.Info("kv events reset", "reason", reason)
	t.sink.Reset(t.key, reason)
}

func (t *Tracker) setError(err error) {
	if err == nil {
		return
	}
	t.stats.mu.Lock()
	t.stats.lastError = err.Error()
	t.stats.mu.Unlock()
}

// fill replays [t.next, upto) and leaves t.next == upto. A hole the replay cannot cover
// (no replayer, an error, a buffer that starts past t.next or ends before upto) resets
// the worker when batches were applied before the hole in the current epoch: those
// batches' blocks may have been removed by the missing ones. epochStarted says whether
// the epoch already holds batches when fill is called (false right after a reset).
// Whatever the replay returns past a hole is still applied, after the reset.
func (t *Tracker) fill(ctx context.Context, upto uint64, epochStarted bool) {
	needReset := epochStarted
	resets := 0
	hole := func() {
		if needReset {
			t.reset(ReasonGap)
			needReset = false
			resets++
		}
	}
	if t.opts.Replay == nil {
		hole()
		t.next = upto
		return
	}
	from := t.next
	t.stats.replays.Add(1)
	err := t.opts.Replay.Replay(ctx, from, func(rb *proto.Batch) bool {
		switch {
		case rb.Seq >= upto:
			return false
		case rb.Seq < t.next:
			return true // already applied (a publisher resending)
		case rb.Seq > t.next:
			hole() // the publisher's buffer no longer holds t.next
			t.next = rb.Seq
		}
		t.apply(rb, true)
		needReset = true
		return true
	})
	if err != nil {
		t.setError(err)
		t.log.Warn("kv events replay failed", "from", from, "err", err)
	}
	if t.next < upto {
		hole()
		t.next = upto
	}
	result := "ok"
	switch {
	case err != nil:
		result = "failed"
	case resets > 0:
		result = "partial"
	}
	t.wm.replay(result)
	t.log.Info("kv events replay", "from", from, "upto", upto, "result", result)
}

func (t *Tracker) apply(b *proto.Batch, replayed bool) {
	t.sink.Apply(t.key, *t.model.Load(), b)
	t.next = b.Seq + 1
	now := t.opts.Now()
	t.stats.haveSeq.Store(true)
	t.stats.lastSeq.Store(b.Seq)
	t.stats.batches.Add(1)
	t.stats.events.Add(uint64(len(b.Events)))
	t.stats.lastEvent.Store(now.UnixNano())
	t.wm.batches.Inc()
	if replayed {
		t.stats.replayed.Add(1)
		t.wm.replayed.Inc()
	}
	for i := range b.Events {
		if k := b.Events[i].Kind; k < proto.EventKind(len(t.wm.events)) && t.wm.events[k] != nil {
			t.wm.events[k].Inc()
		}
	}
	if b.TS > 0 && !replayed {
		t.wm.lag.Set(now.Sub(time.Unix(0, int64(b.TS*1e9))).Seconds())
	}
}

// WorkerState is a snapshot of one worker's event stream, for the dashboard.
type WorkerState struct {
	Key   proto.WorkerKey
	Model string
	// Endpoint and ReplayEndpoint are the ZMQ endpoints; empty for NATS-fed workers.
	Endpoint       string
	ReplayEndpoint string
	// Connected is true while the publisher's connection is up (always true for a
	// NATS-fed worker that has sent a batch).
	Connected bool
	// HaveSeq is true when LastSeq is meaningful.
	HaveSeq bool
	LastSeq uint64
	// Counters since the tracker was created.
	Batches, Events, Gaps, Replays, ReplayedBatches, Resets, DecodeErrors, Reconnects uint64
	// LastReset is the reason of the last reset; "" when none.
	LastReset string
	// LastError is the last connection, replay or decode error; "" when none.
	LastError string
	// LastEvent is when the last batch was applied; zero before the first.
	LastEvent time.Time
	// DownSince is when the connection was lost; zero while connected.
	DownSince time.Time
}

// State returns a snapshot of the tracker's counters. Safe for concurrent use.
func (t *Tracker) State() WorkerState {
	s := &t.stats
	st := WorkerState{
		Key: t.key, Model: *t.model.Load(),
		HaveSeq: s.haveSeq.Load(), LastSeq: s.lastSeq.Load(),
		Batches: s.batches.Load(), Events: s.events.Load(), Gaps: s.gaps.Load(),
		Replays: s.replays.Load(), ReplayedBatches: s.replayed.Load(), Resets: s.resets.Load(),
		DecodeErrors: s.decodeErrors.Load(),
	}
	if ns := s.lastEvent.Load(); ns != 0 {
		st.LastEvent = time.Unix(0, ns)
	}
	s.mu.Lock()
	st.LastReset, st.LastError = s.lastReset, s.lastError
	s.mu.Unlock()
	return st
}
