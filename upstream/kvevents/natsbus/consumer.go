package natsbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/upstream/kvevents"
)

// ConsumerOptions configure a [Consumer].
type ConsumerOptions struct {
	// Prefix is the subject prefix; default DefaultPrefix. The consumer takes prefix.>.
	Prefix string
	// JetStream reads from the stream instead of core NATS subscriptions.
	JetStream bool
	// Stream is the JetStream stream; default DefaultStream. It must exist (see
	// EnsureStream; the bridge creates it).
	Stream string
	// Durable names a durable JetStream consumer: after a restart it resumes after the
	// last message this router acknowledged. Empty means an ephemeral consumer that
	// delivers everything the stream holds. Durable names are per router replica.
	Durable string
	// Registerer registers the kvroute_events_* metrics; nil disables registration.
	Registerer prometheus.Registerer
	// Metrics, when set, is used instead of building metrics from Registerer.
	Metrics *kvevents.Metrics
	// DeadAfter resets a worker ("dead") when nothing of it (batch, reset or bridge
	// heartbeat) has arrived for this long while the consumer holds its state; 0 (the
	// default) disables it. Set it well above the bridges' heartbeat interval.
	DeadAfter time.Duration
	// Logger logs resets and errors; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Consumer feeds a [kvevents.Sink] from NATS. Create it with [NewConsumer] and call
// [Consumer.Run].
type Consumer struct {
	nc   *nats.Conn
	sink kvevents.Sink
	opts ConsumerOptions
	log  *slog.Logger

	ready chan struct{} // closed once subscribed

	// applyMu is held while a message is applied, while Forget resets and while dead
	// workers are purged, so sink calls for one worker never overlap. It guards lastSeen.
	applyMu  sync.Mutex
	lastSeen map[proto.WorkerKey]time.Time

	// mu guards trackers, decodeErr and lastError.
	mu        sync.Mutex
	trackers  map[proto.WorkerKey]*kvevents.Tracker
	decodeErr uint64
	lastError string

	env proto.Envelope // decode target, Run's goroutine only
}

// NewConsumer returns a consumer of nc feeding sink.
func NewConsumer(nc *nats.Conn, sink kvevents.Sink, opts ConsumerOptions) (*Consumer, error) {
	if sink == nil {
		return nil, errors.New("natsbus: nil sink")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.Stream == "" {
		opts.Stream = DefaultStream
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.DeadAfter < 0 {
		return nil, fmt.Errorf("natsbus: negative DeadAfter %v", opts.DeadAfter)
	}
	if opts.Metrics == nil {
		m, err := kvevents.NewMetrics(opts.Registerer)
		if err != nil {
			return nil, err
		}
		opts.Metrics = m
	}
	return &Consumer{nc: nc, sink: sink, opts: opts, log: opts.Logger, ready: make(chan struct{}),
		trackers: map[proto.WorkerKey]*kvevents.Tracker{}, lastSeen: map[proto.WorkerKey]time.Time{}}, nil
}

// Ready is closed once Run has subscribed: messages published after it are delivered.
func (c *Consumer) Ready() <-chan struct{} { return c.ready }

// Run consumes until ctx ends (then returns nil) or the subscription fails.
func (c *Consumer) Run(ctx context.Context) error {
	if c.opts.DeadAfter > 0 {
		rctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.reapDead(rctx)
		}()
		defer wg.Wait()
		defer cancel()
	}
	if c.opts.JetStream {
		return c.runJetStream(ctx)
	}
	return c.runCore(ctx)
}

// reapDead resets workers silent for longer than DeadAfter, checking four times per
// DeadAfter, until ctx ends.
func (c *Consumer) reapDead(ctx context.Context) {
	t := time.NewTicker(c.opts.DeadAfter / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.applyMu.Lock()
		now := c.opts.Now()
		for k, seen := range c.lastSeen {
			if now.Sub(seen) <= c.opts.DeadAfter {
				continue
			}
			c.mu.Lock()
			tr := c.trackers[k]
			c.mu.Unlock()
			if tr != nil && tr.Known() {
				c.log.Warn("kv events: no message from the worker's bridge, purging", "worker", k.String(), "silent_for", now.Sub(seen))
				tr.Reset(kvevents.ReasonDead)
			}
			delete(c.lastSeen, k) // reset once; the next message re-arms it
		}
		c.applyMu.Unlock()
	}
}

func (c *Consumer) runCore(ctx context.Context) error {
	sub, err := c.nc.SubscribeSync(c.opts.Prefix + ".>")
	if err != nil {
		return fmt.Errorf("subscribe %s.>: %w", c.opts.Prefix, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	// Bursts queue in the client up to 256 MiB; beyond that NATS drops (slow consumer)
	// and the seq gap resets the worker.
	if err := sub.SetPendingLimits(-1, 256<<20); err != nil {
		return fmt.Errorf("pending limits: %w", err)
	}
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = c.nc.FlushWithContext(fctx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("flush subscription: %w", err)
	}
	close(c.ready)
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, nats.ErrSlowConsumer) {
				c.log.Warn("kv events consumer too slow, NATS dropped messages")
				continue
			}
			return fmt.Errorf("next message on %s.>: %w", c.opts.Prefix, err)
		}
		c.handle(ctx, m.Data)
	}
}

func (c *Consumer) runJetStream(ctx context.Context) error {
	js, err := jetstream.New(c.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	cfg := jetstream.ConsumerConfig{
		Durable:       c.opts.Durable,
		Description:   "kvroute router",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		MaxAckPending: 10_000,
		FilterSubject: c.opts.Prefix + ".>",
	}
	if c.opts.Durable == "" {
		cfg.InactiveThreshold = 5 * time.Minute
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, c.opts.Stream, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("create consumer on stream %q: %w", c.opts.Stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("consume stream %q: %w", c.opts.Stream, err)
	}
	close(c.ready)
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer func() {
		// Make the server see the pull request's inbox go away before Run returns:
		// otherwise messages published right after could be handed to the dead request
		// and only come back after AckWait, out of order for a consumer restarted on the
		// same connection.
		it.Stop()
		fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = c.nc.FlushWithContext(fctx)
		cancel()
	}()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return fmt.Errorf("next message on stream %q: %w", c.opts.Stream, err)
		}
		c.handle(ctx, m.Data())
		if err := m.Ack(); err != nil {
			c.log.Warn("ack kv events", "err", err)
		}
	}
}

// handle applies one envelope to its worker's tracker.
func (c *Consumer) handle(ctx context.Context, data []byte) {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	e := &c.env
	if err := proto.DecodeEnvelope(data, e); err != nil {
		// Without a decodable header the worker is unknown; its next batch shows the gap.
		c.mu.Lock()
		c.decodeErr++
		c.lastError = err.Error()
		c.mu.Unlock()
		c.log.Warn("undecodable kv event envelope", "err", err)
		return
	}
	key := proto.WorkerKey{ID: e.Worker, DPRank: max(e.DPRank, 0)}
	c.mu.Lock()
	tr := c.trackers[key]
	if tr == nil {
		tr = kvevents.NewTracker(key, c.sink, kvevents.TrackerOptions{
			Model: e.Model, Metrics: c.opts.Metrics, Logger: c.log,
		})
		c.trackers[key] = tr
	}
	c.mu.Unlock()
	c.lastSeen[key] = c.opts.Now()
	switch e.Kind {
	case proto.EnvelopeHeartbeat:
		if e.Model != "" {
			tr.SetModel(e.Model)
		}
	case proto.EnvelopeReset:
		c.log.Info("kv events reset by bridge", "worker", key.String(), "bridge_reason", e.Reason)
		tr.Reset(kvevents.ReasonUpstream)
	case proto.EnvelopeBatch:
		if e.Model != "" {
			tr.SetModel(e.Model)
		}
		tr.Batch(ctx, &e.Batch)
	}
}

// Forget resets every rank of worker in the sink ("removed") and drops its tracking; a
// later message of it starts afresh. Call it when the worker leaves the configuration
// or is declared dead. Safe to call concurrently with Run.
func (c *Consumer) Forget(worker string) {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	c.mu.Lock()
	var gone []*kvevents.Tracker
	for k, tr := range c.trackers {
		if k.ID == worker {
			gone = append(gone, tr)
			delete(c.trackers, k)
			delete(c.lastSeen, k)
		}
	}
	c.mu.Unlock()
	for _, tr := range gone {
		c.sink.Reset(tr.Key(), kvevents.ReasonRemoved)
	}
}

// States returns a snapshot of every worker seen, sorted by worker and rank. Connected
// is true for a worker whose last message was a batch.
func (c *Consumer) States() []kvevents.WorkerState {
	c.mu.Lock()
	out := make([]kvevents.WorkerState, 0, len(c.trackers))
	for _, tr := range c.trackers {
		st := tr.State()
		st.Connected = st.HaveSeq
		out = append(out, st)
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Key.ID != out[j].Key.ID {
			return out[i].Key.ID < out[j].Key.ID
		}
		return out[i].Key.DPRank < out[j].Key.DPRank
	})
	return out
}

// DecodeErrors returns how many messages could not be decoded, and the last error.
func (c *Consumer) DecodeErrors() (uint64, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.decodeErr, c.lastError
}
