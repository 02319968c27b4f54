package natsbus

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/upstream/kvevents"
)

// DefaultPrefix is the subject prefix of every kvroute event subject.
const DefaultPrefix = "kvroute.events"

// DefaultStream is the JetStream stream name kvroute uses by default.
const DefaultStream = "KVROUTE_EVENTS"

// Subject returns the subject of a worker's events: prefix.model.worker.dpN, with model
// and worker sanitised to one subject token each (every byte outside [A-Za-z0-9_-]
// becomes '_'; an empty token becomes '_').
func Subject(prefix, model string, w proto.WorkerKey) string {
	return prefix + "." + token(model) + "." + token(w.ID) + ".dp" + strconv.Itoa(w.DPRank)
}

func token(s string) string {
	if s == "" {
		return "_"
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' {
			b.WriteByte(c)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// PublisherOptions configure a [Publisher].
type PublisherOptions struct {
	// Prefix is the subject prefix; default DefaultPrefix.
	Prefix string
	// Model is the model name used for a worker's resets before its first batch (a
	// bridge knows its engine's model); batches carry their own.
	Model string
	// Logger logs publish errors; nil discards.
	Logger *slog.Logger
}

// Publisher is a [kvevents.Sink] that republishes every batch and reset as an
// [proto.Envelope] on the worker's [Subject]. Publishing goes through the NATS
// connection's buffer (core publish); a JetStream stream bound to the subjects stores
// them. Safe for concurrent use.
type Publisher struct {
	nc     *nats.Conn
	prefix string
	model  string
	log    *slog.Logger
	errs   atomic.Uint64

	// mu guards buf and models.
	mu     sync.Mutex
	buf    []byte
	models map[proto.WorkerKey]string // last model seen per worker, for reset subjects
}

// NewPublisher returns a Publisher on nc.
func NewPublisher(nc *nats.Conn, opts PublisherOptions) *Publisher {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Publisher{nc: nc, prefix: opts.Prefix, model: opts.Model, log: opts.Logger, models: map[proto.WorkerKey]string{}}
}

// Apply publishes one batch.
func (p *Publisher) Apply(w proto.WorkerKey, model string, b *proto.Batch) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.models[w] = model
	env := proto.Envelope{Kind: proto.EnvelopeBatch, Worker: w.ID, Model: model, DPRank: w.DPRank, Batch: *b}
	p.buf = proto.AppendEnvelope(p.buf[:0], &env)
	p.publish(Subject(p.prefix, model, w))
}

// Reset publishes a reset of the worker, on the subject of its last batch's model.
func (p *Publisher) Reset(w proto.WorkerKey, reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	model, ok := p.models[w]
	if !ok {
		model = p.model
	}
	env := proto.Envelope{Kind: proto.EnvelopeReset, Worker: w.ID, Model: model, DPRank: w.DPRank, Reason: reason}
	p.buf = proto.AppendEnvelope(p.buf[:0], &env)
	p.publish(Subject(p.prefix, model, w))
}

// Heartbeat publishes that the bridge is alive and follows w; consumers with a
// DeadAfter reset workers whose bridge stays silent (no batch, no heartbeat) longer.
func (p *Publisher) Heartbeat(w proto.WorkerKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	model, ok := p.models[w]
	if !ok {
		model = p.model
	}
	env := proto.Envelope{Kind: proto.EnvelopeHeartbeat, Worker: w.ID, Model: model, DPRank: w.DPRank}
	p.buf = proto.AppendEnvelope(p.buf[:0], &env)
	p.publish(Subject(p.prefix, model, w))
}

// publish sends p.buf; nats.go copies it into its write buffer. mu must be held.
func (p *Publisher) publish(subject string) {
	if err := p.nc.Publish(subject, p.buf); err != nil {
		p.errs.Add(1)
		p.log.Warn("publish kv events to nats", "subject", subject, "err", err)
	}
}

// Errors returns how many publishes failed.
func (p *Publisher) Errors() uint64 { return p.errs.Load() }

var _ kvevents.Sink = (*Publisher)(nil)

// StreamOptions configure the JetStream stream holding kvroute events.
type StreamOptions struct {
	// Name is the stream name; default DefaultStream.
	Name string
	// Prefix is the subject prefix; default DefaultPrefix. The stream takes prefix.>.
	Prefix string
	// MaxAge drops messages older than this; default 1h.
	MaxAge time.Duration
	// MaxBytes bounds the stream's size; default 1 GiB. The oldest messages go first.
	MaxBytes int64
	// Memory stores the stream in memory instead of files.
	Memory bool
}

// EnsureStream creates the stream, or updates it to opts.
func EnsureStream(ctx context.Context, nc *nats.Conn, opts StreamOptions) error {
	if opts.Name == "" {
		opts.Name = DefaultStream
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.MaxAge == 0 {
		opts.MaxAge = time.Hour
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = 1 << 30
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	storage := jetstream.FileStorage
	if opts.Memory {
		storage = jetstream.MemoryStorage
	}
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        opts.Name,
		Description: "kvroute normalized KV-cache events",
		Subjects:    []string{opts.Prefix + ".>"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      opts.MaxAge,
		MaxBytes:    opts.MaxBytes,
		Storage:     storage,
	})
	if err != nil {
		return fmt.Errorf("create stream %q: %w", opts.Name, err)
	}
	return nil
}
