package kvevents

import (
	"context"
	"log/slog"
	"math"
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
//	unknown --first batch--> [reset "start" (unless a catch-up did) and replay 0..seq-1
//	                          if ResetOnStart] --> tracking(next = seq+1)
//	unknown --CatchUp (feed subscribed; ResetOnStart and a replayer)--> reset "start" (once
//	                               per unknown phase), replay from 0, apply every batch;
//	                               batches: tracking(next = last replayed+1), dedupe window
//	                               open; none (empty buffer, or the replay failed before
//	                               the first): unknown, start reset done
//	tracking, dedupe window open, seq < next and the batch is the one the catch-up
//	                           applied for seq --> duplicate: dropped; any other batch
//	                               closes the window, as does the end of the feed's session
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
// CatchUp exists for a router started next to an idle engine: the engine publishes
// nothing until it gets traffic, so without it the first-batch replay would come only then
// and the engine's cache would stay unknown meanwhile. The feed is subscribed before the
// replay is asked for, so every batch is either in the replay's answer or arrives live
// (or both: the dedupe window), or, if the publisher handled the subscription after the
// replay request, shows up as a gap at the next live batch and is replayed.
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
	started   bool // a catch-up did the start reset of the current unknown phase
	next      uint64
	catching  bool // a catch-up replay is applying batches
	// The dedupe window: fingerprints (batchPrint) of the batches the last catch-up
	// applied, for seqs dupFrom, dupFrom+1, ...; empty when closed.
	dupFrom uint64
	dups    []uint64

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
	lastTS       atomic.Int64 // engine timestamp of the last live batch with one, unix ns; 0: none
	lastLag      atomic.Int64 // its arrival minus lastTS, ns

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
	if len(t.dups) > 0 {
		if t.duplicate(b) {
			return
		}
		t.dups = nil // closed for good: free it
	}
	t.advance(ctx, b.Seq)
	t.apply(b, false)
}

// maxDups bounds the dedupe window. Duplicates are the batches published between the
// subscription and the replay's answer, the tail of what the catch-up applied; an older
// seq that comes live is handled as a restart (reset and replay from 0): correct, only
// slower.
const maxDups = 4096

// CatchUp, called when a feed has subscribed, replays the publisher's buffer from seq 0
// if the tracker is in the unknown state with ResetOnStart and a replayer (and no
// explicit Reset is pending): the worker is reset "start" (once per unknown phase) and
// every replayed batch applied, so the sink knows an idle engine's cache without waiting
// for its next batch. With batches the tracker is then tracking from the last one + 1;
// live batches the catch-up already applied are dropped as duplicates (compared by seq
// and content, so that a restarted engine's equal seqs are not mistaken for them) until
// another live batch arrives or [Tracker.EndCatchUp] is called. Without any (an empty
// buffer, a failed replay) it stays unknown: the first live batch replays 0..seq-1 as
// before, without a second reset. A failed replay is logged and counted as any replay.
// It blocks until the replay ends or ctx is done.
func (t *Tracker) CatchUp(ctx context.Context) {
	if t.have || t.skipStart || !t.opts.ResetOnStart || t.opts.Replay == nil {
		return
	}
	if !t.started {
		t.reset(ReasonStart)
		t.started = true
	}
	t.next = 0
	t.dups = t.dups[:0]
	t.catching = true
	t.fill(ctx, noLimit, false)
	t.catching = false
	if len(t.dups) > 0 {
		t.have, t.started = true, false // t.next follows the last replayed batch
	}
}

// EndCatchUp closes the dedupe window of the last [Tracker.CatchUp]: the feed's session
// that could still deliver its duplicates has ended.
func (t *Tracker) EndCatchUp() { t.dups = nil }

// duplicate reports whether live batch b is one the catch-up already applied: its seq is
// in the window and its content the same.
func (t *Tracker) duplicate(b *proto.Batch) bool {
	if b.Seq < t.dupFrom || b.Seq-t.dupFrom >= uint64(len(t.dups)) || t.dups[b.Seq-t.dupFrom] != batchPrint(b) {
		return false
	}
	t.log.Debug("kv events live batch already applied by the catch-up", "seq", b.Seq)
	return true
}

// note records b, just applied by the catch-up, in the dedupe window.
func (t *Tracker) note(b *proto.Batch) {
	if len(t.dups) == 0 || b.Seq != t.dupFrom+uint64(len(t.dups)) {
		t.dups, t.dupFrom = t.dups[:0], b.Seq // first, or past a hole: only the tail matters
	}
	if len(t.dups) == 2*maxDups {
		n := copy(t.dups, t.dups[maxDups:])
		t.dups = t.dups[:n]
		t.dupFrom += maxDups
	}
	t.dups = append(t.dups, batchPrint(b))
}

// batchPrint is a fingerprint of b's content (FNV-1a over its timestamp and events' kinds
// and block hashes): the same published batch, decoded twice, gives the same print.
func batchPrint(b *proto.Batch) uint64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	mix := func(v uint64) { h = (h ^ v) * prime }
	mix(math.Float64bits(b.TS))
	mix(uint64(len(b.Events)))
	for i := range b.Events {
		ev := &b.Events[i]
		mix(uint64(ev.Kind))
		mix(uint64(len(ev.BlockHashes)))
		for _, x := range ev.BlockHashes {
			mix(uint64(x))
		}
	}
	return h
}

// advance brings the sequence up to seq, the live batch about to be applied or skipped:
// start, gap and restart handling as in the state machine above.
func (t *Tracker) advance(ctx context.Context, seq uint64) {
	if !t.have {
		t.have = true
		t.next = seq
		if t.opts.ResetOnStart && !t.skipStart {
			if !t.started {
				t.reset(ReasonStart)
			}
			t.next = 0
			if seq > 0 {
				t.fill(ctx, seq, false)
			}
		}
		t.skipStart, t.started = false, false
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
	t.dups = nil // the catch-up applied it decoded: not a duplicate
	t.advance(ctx, seq)
	t.next = seq + 1
	t.stats.haveSeq.Store(true)
	t.stats.lastSeq.Store(seq)
}

// Reset resets the worker for reason (a Reason constant) and forgets the sequence: the
// next batch is accepted whatever its seq, without another reset.
func (t *Tracker) Reset(reason string) {
	t.reset(reason)
	t.have, t.skipStart, t.started = false, true, false
	t.dups = nil
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

// noLimit as fill's upto replays everything the publisher holds (a catch-up).
const noLimit = math.MaxUint64

// fill replays [t.next, upto) and leaves t.next == upto (upto noLimit: after the last
// replayed batch, t.next unchanged when there is none). A hole the replay cannot cover
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
	if t.next < upto && upto != noLimit {
		hole()
		t.next = upto
	}
	t.stats.replays.Add(1) // once the replay is over: a test can wait for a catch-up's end
	result := "ok"
	switch {
	case err != nil:
		result = "failed"
	case resets > 0:
		result = "partial"
	}
	t.wm.replay(result)
	if upto == noLimit {
		t.log.Info("kv events catch-up replay", "from", from, "next", t.next, "result", result)
	} else {
		t.log.Info("kv events replay", "from", from, "upto", upto, "result", result)
	}
}

func (t *Tracker) apply(b *proto.Batch, replayed bool) {
	t.sink.Apply(t.key, *t.model.Load(), b)
	t.next = b.Seq + 1
	if t.catching {
		t.note(b)
	}
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
		ts := time.Unix(0, int64(b.TS*1e9))
		lag := now.Sub(ts)
		t.stats.lastTS.Store(ts.UnixNano())
		t.stats.lastLag.Store(int64(lag))
		t.wm.lag.Set(lag.Seconds())
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
	// LastBatchTS is the engine's timestamp of the last live batch that carried one and
	// Lag its arrival minus that timestamp (kvroute_events_lag_seconds); zero before.
	// A clock offset between the engine's host and the router's adds to Lag.
	LastBatchTS time.Time
	Lag         time.Duration
	// Epoch is the feed's tracking epoch: how many times the worker's entries were reset
	// so far (equal to Resets).
	Epoch uint64
	// Stale is true while the feed is judged stale by a [Staleness] monitor, since
	// StaleSince; set only by [Staleness.Annotate].
	Stale      bool
	StaleSince time.Time
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
	if ns := s.lastTS.Load(); ns != 0 {
		st.LastBatchTS, st.Lag = time.Unix(0, ns), time.Duration(s.lastLag.Load())
	}
	st.Epoch = st.Resets
	s.mu.Lock()
	st.LastReset, st.LastError = s.lastReset, s.lastError
	s.mu.Unlock()
	return st
}
