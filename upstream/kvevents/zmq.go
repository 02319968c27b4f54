package kvevents

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/kvroute/kvroute/proto"
)

// zmqLogger silences zmq4's own logging; errors reach us through return values.
var zmqLogger = log.New(io.Discard, "", 0)

// source follows one worker's (one DP rank's) ZMQ PUB stream and its replay endpoint.
type source struct {
	key     proto.WorkerKey
	cfg     WorkerConfig // endpoints already shifted for the rank
	opts    *Options
	tracker *Tracker

	connected  atomic.Bool
	reconnects atomic.Uint64
	downSince  atomic.Int64 // unix nanoseconds; 0 while connected

	// replayBatch is the decode target of replies; used only by the source goroutine.
	replayBatch proto.Batch
	// warnedRank is set once a batch's rank differed from the configured one; source
	// goroutine only.
	warnedRank bool
}

func newSource(key proto.WorkerKey, cfg WorkerConfig, opts *Options) *source {
	s := &source{key: key, cfg: cfg, opts: opts}
	var rp Replayer
	if cfg.ReplayEndpoint != "" {
		rp = s
	}
	s.tracker = NewTracker(key, opts.Sink, TrackerOptions{
		Model: cfg.Model, ResetOnStart: true, Replay: rp,
		Metrics: opts.Metrics, Logger: opts.Logger, Now: opts.Now,
	})
	s.downSince.Store(opts.Now().UnixNano())
	return s
}

// run connects, follows the stream, and reconnects with exponential backoff and jitter
// until ctx ends. A worker unreachable for longer than DeadAfter is reset once.
func (s *source) run(ctx context.Context) {
	backoff := s.opts.BackoffMin
	attempts := 0
	for ctx.Err() == nil {
		if attempts > 0 {
			s.reconnects.Add(1)
			s.tracker.wm.reconnect()
		}
		attempts++
		wasUp, err := s.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.tracker.setError(err)
		}
		if wasUp {
			s.opts.Logger.Info("kv events disconnected", "worker", s.key.String(), "err", err)
			s.downSince.Store(s.opts.Now().UnixNano())
			backoff = s.opts.BackoffMin
		}
		s.purgeIfDead()
		d := backoff/2 + rand.N(backoff/2+1) // jitter in [backoff/2, backoff]
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, s.opts.BackoffMax)
		s.purgeIfDead()
	}
}

// purgeIfDead resets the worker once it has been unreachable beyond DeadAfter.
func (s *source) purgeIfDead() {
	since := s.downSince.Load()
	if since == 0 || !s.tracker.Known() || s.opts.DeadAfter <= 0 {
		return
	}
	if s.opts.Now().Sub(time.Unix(0, since)) > s.opts.DeadAfter {
		s.opts.Logger.Warn("kv events publisher dead, purging worker", "worker", s.key.String(),
			"down_for", s.opts.Now().Sub(time.Unix(0, since)))
		s.tracker.Reset(ReasonDead)
		// After the purge the next connection starts over as if new: reset "start" and
		// replay what the publisher still holds.
		s.tracker.skipStart = false
	}
}

// session dials the PUB endpoint and handles messages until the connection fails or ctx
// ends. wasUp reports whether the connection was established.
func (s *source) session(ctx context.Context) (wasUp bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	gctx, guard := withDialGuard(sctx, s.opts.DialTimeout, s.opts.MaxMessageBytes, s.droppedOversize)
	defer func() { err = guard.explain(err) }()
	sub := zmq4.NewSub(gctx, zmq4.WithDialerMaxRetries(0), zmq4.WithDialerTimeout(s.opts.DialTimeout),
		zmq4.WithLogger(zmqLogger), zmq4.WithAutomaticReconnect(false))
	defer func() { _ = sub.Close() }()
	if err := sub.Dial(guardedEndpoint(s.cfg.Endpoint)); err != nil {
		return false, fmt.Errorf("dial kv events %q: %w", s.cfg.Endpoint, err)
	}
	guard.established()
	if err := sub.SetOption(zmq4.OptionSubscribe, s.cfg.Topic); err != nil {
		return false, fmt.Errorf("subscribe kv events %q: %w", s.cfg.Endpoint, err)
	}
	s.setConnected(true)
	defer s.setConnected(false)
	s.opts.Logger.Info("kv events connected", "worker", s.key.String(), "endpoint", s.cfg.Endpoint)

	// The reader goroutine only moves messages, so a slow replay does not stall the
	// socket beyond the channel's capacity (then zmq4 buffers, then TCP pushes back; the
	// publisher's high-water mark drops, which shows up as a gap and is replayed).
	msgs := make(chan zmq4.Msg, 1024)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			msg, err := sub.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case msgs <- msg:
			case <-sctx.Done():
				return
			}
		}
	}()
	defer wg.Wait()
	defer cancel() // runs before wg.Wait: unblocks the reader
	// Subscribed: catch up with what the publisher buffered (an idle engine publishes
	// nothing until it gets traffic). Live batches meanwhile wait in msgs; those the
	// catch-up applies too are dropped as duplicates until the session ends.
	defer s.tracker.EndCatchUp()
	s.tracker.CatchUp(ctx)
	var b proto.Batch
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case err := <-errc:
			if errors.Is(err, context.Canceled) && ctx.Err() != nil {
				return true, nil
			}
			return true, fmt.Errorf("receive kv events %q: %w", s.cfg.Endpoint, err)
		case msg := <-msgs:
			s.handle(ctx, msg.Frames, &b)
		}
	}
}

func (s *source) handle(ctx context.Context, frames [][]byte, b *proto.Batch) {
	_, seq, payload, err := proto.DecodeFrames(frames)
	if err != nil {
		// Without a seq the message cannot be placed; a real loss shows up as a gap.
		s.tracker.stats.decodeErrors.Add(1)
		s.tracker.wm.decodeErr.Inc()
		s.tracker.wm.drop(DropMalformed)
		s.tracker.setError(err)
		return
	}
	if err := proto.DecodeBatch(payload, b); err != nil {
		s.tracker.Lost(ctx, seq, fmt.Errorf("batch %d: %w", seq, err))
		return
	}
	b.Seq = seq
	if b.DPRank >= 0 && b.DPRank != s.key.DPRank && !s.warnedRank {
		// The key stays the configured one (its endpoint decides the rank, as in vLLM);
		// a mismatch means the DP configuration is wrong, worth saying once.
		s.warnedRank = true
		s.opts.Logger.Warn("kv events batch rank differs from the endpoint's rank", "worker", s.key.String(),
			"batch_rank", b.DPRank, "endpoint", s.cfg.Endpoint)
	}
	s.tracker.Batch(ctx, b)
}

// droppedOversize counts a message refused for its size; called by the connection that
// refused it.
func (s *source) droppedOversize() { s.tracker.wm.drop(DropOversize) }

func (s *source) setConnected(up bool) {
	s.connected.Store(up)
	if up {
		s.downSince.Store(0)
		s.tracker.wm.connected.Set(1)
	} else {
		s.tracker.wm.connected.Set(0)
	}
}

// Replay asks the worker's replay ROUTER for every buffered batch from seq from on, on a
// fresh DEALER socket, and passes each to fn until the end marker. The whole exchange is
// bounded by ReplayTimeout.
func (s *source) Replay(ctx context.Context, from uint64, fn func(b *proto.Batch) bool) (err error) {
	rctx, cancel := context.WithTimeout(ctx, s.opts.ReplayTimeout)
	defer cancel()
	gctx, guard := withDialGuard(rctx, s.opts.DialTimeout, s.opts.MaxMessageBytes, s.droppedOversize)
	defer func() { err = guard.explain(err) }()
	d := zmq4.NewDealer(gctx, zmq4.WithDialerMaxRetries(0), zmq4.WithDialerTimeout(s.opts.DialTimeout),
		zmq4.WithLogger(zmqLogger), zmq4.WithAutomaticReconnect(false))
	defer func() { _ = d.Close() }()
	if err := d.Dial(guardedEndpoint(s.cfg.ReplayEndpoint)); err != nil {
		return fmt.Errorf("dial kv events replay %q: %w", s.cfg.ReplayEndpoint, err)
	}
	guard.established()
	if err := d.SendMulti(zmq4.NewMsgFrom(proto.ReplayRequest(from)...)); err != nil {
		return fmt.Errorf("send replay request to %q: %w", s.cfg.ReplayEndpoint, err)
	}
	b := &s.replayBatch
	for {
		msg, err := d.Recv()
		if err != nil {
			if rctx.Err() != nil {
				err = rctx.Err()
			}
			return fmt.Errorf("replay from %d at %q: %w", from, s.cfg.ReplayEndpoint, err)
		}
		seq, end, payload, err := proto.DecodeReplayFrames(msg.Frames)
		if err != nil {
			return fmt.Errorf("replay from %d: %w", from, err)
		}
		if end {
			return nil
		}
		if err := proto.DecodeBatch(payload, b); err != nil {
			s.tracker.stats.decodeErrors.Add(1)
			s.tracker.wm.decodeErr.Inc()
			return fmt.Errorf("replay batch %d: %w", seq, err)
		}
		b.Seq = seq
		if !fn(b) {
			return nil
		}
	}
}

func (s *source) state() WorkerState {
	st := s.tracker.State()
	st.Endpoint, st.ReplayEndpoint = s.cfg.Endpoint, s.cfg.ReplayEndpoint
	st.Connected = s.connected.Load()
	st.Reconnects = s.reconnects.Load()
	if ns := s.downSince.Load(); ns != 0 {
		st.DownSince = time.Unix(0, ns)
	}
	return st
}
