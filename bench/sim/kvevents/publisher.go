package kvevents

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/go-zeromq/zmq4"
)

// Config says where a [Publisher] binds and how much it keeps for replay.
type Config struct {
	// Endpoint is the PUB socket's bind address, e.g. "tcp://127.0.0.1:5557" (port 0: a
	// free port chosen at bind time).
	Endpoint string
	// ReplayEndpoint is the ROUTER socket's bind address; "" disables replay.
	ReplayEndpoint string
	// Topic is the first frame of every message (vLLM default "").
	Topic string
	// BufferSteps is how many batches the replay buffer keeps (vLLM default 10000).
	BufferSteps int
}

type entry struct {
	seq     uint64
	payload []byte
}

// Publisher sends payloads on a ZMQ PUB socket with vLLM's framing and serves replay
// requests from a ring of the last BufferSteps payloads. Its methods are safe for
// concurrent use.
type Publisher struct {
	pub    zmq4.Socket
	router zmq4.Socket
	topic  []byte
	cancel context.CancelFunc
	done   chan struct{}

	// mu guards the fields below.
	mu      sync.Mutex
	seq     uint64
	ring    []entry // circular once len == ringCap
	ringCap int
	next    int // ring index of the oldest entry (and next overwrite) once full
	drop    int
	sent    uint64
	dropd   uint64
}

// Listen binds the PUB socket and, when configured, the replay ROUTER socket, and starts
// the replay server. It stops when ctx ends or [Publisher.Close] is called.
func Listen(ctx context.Context, cfg Config) (*Publisher, error) {
	if cfg.BufferSteps <= 0 {
		return nil, fmt.Errorf("buffer_steps must be positive, got %d", cfg.BufferSteps)
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &Publisher{topic: []byte(cfg.Topic), cancel: cancel, done: make(chan struct{})}
	p.ring = make([]entry, 0, min(cfg.BufferSteps, 1024))
	p.ringCap = cfg.BufferSteps
	p.pub = zmq4.NewPub(ctx)
	if err := p.pub.Listen(cfg.Endpoint); err != nil {
		cancel()
		_ = p.pub.Close()
		return nil, fmt.Errorf("bind kv events %q: %w", cfg.Endpoint, err)
	}
	if cfg.ReplayEndpoint == "" {
		close(p.done)
		return p, nil
	}
	p.router = zmq4.NewRouter(ctx)
	if err := p.router.Listen(cfg.ReplayEndpoint); err != nil {
		cancel()
		_ = p.pub.Close()
		_ = p.router.Close()
		return nil, fmt.Errorf("bind kv events replay %q: %w", cfg.ReplayEndpoint, err)
	}
	go p.serveReplay(ctx)
	return p, nil
}

// Endpoint returns the PUB socket's bound address as "tcp://host:port".
func (p *Publisher) Endpoint() string { return "tcp://" + p.pub.Addr().String() }

// ReplayEndpoint returns the ROUTER socket's bound address, or "" without replay.
func (p *Publisher) ReplayEndpoint() string {
	if p.router == nil {
		return ""
	}
	return "tcp://" + p.router.Addr().String()
}

// Subscribed reports whether at least one subscriber has subscribed to a topic that
// matches this publisher's topic. Tests use it to avoid ZMQ's slow-joiner loss.
func (p *Publisher) Subscribed() bool {
	t, ok := p.pub.(zmq4.Topics)
	if !ok {
		return false
	}
	for _, s := range t.Topics() {
		if len(s) <= len(p.topic) && string(p.topic[:len(s)]) == s {
			return true
		}
	}
	return false
}

// Publish assigns the next seq to payload, keeps a copy for replay and sends it, unless
// the fault injector asked to drop it from the PUB stream. It returns the seq.
func (p *Publisher) Publish(payload []byte) uint64 {
	buf := append([]byte(nil), payload...)
	p.mu.Lock()
	defer p.mu.Unlock()
	seq := p.seq
	p.seq++
	e := entry{seq: seq, payload: buf}
	if len(p.ring) < p.ringCap {
		p.ring = append(p.ring, e)
	} else {
		p.ring[p.next] = e
		p.next = (p.next + 1) % p.ringCap
	}
	if p.drop > 0 {
		p.drop--
		p.dropd++
		return seq
	}
	var sb [8]byte
	binary.BigEndian.PutUint64(sb[:], seq)
	// The PUB socket queues the message and returns at once (no high-water mark set).
	_ = p.pub.SendMulti(zmq4.NewMsgFrom(p.topic, sb[:], buf))
	p.sent++
	return seq
}

// DropNext makes the next n published batches skip the PUB socket (they are still
// numbered and kept for replay). n <= 0 cancels a pending drop.
func (p *Publisher) DropNext(n int) {
	p.mu.Lock()
	p.drop = max(n, 0)
	p.mu.Unlock()
}

// Restart sets seq back to 0 and forgets the replay buffer, as a restarted engine does.
func (p *Publisher) Restart() {
	p.mu.Lock()
	p.seq = 0
	p.ring = p.ring[:0]
	p.next = 0
	p.drop = 0
	p.mu.Unlock()
}

// Stats returns the next seq, the batches sent on the PUB socket and the batches dropped
// by the fault injector, since the publisher started.
func (p *Publisher) Stats() (nextSeq, sent, dropped uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seq, p.sent, p.dropd
}

// Close stops the replay server and closes both sockets.
func (p *Publisher) Close() error {
	p.cancel()
	err := p.pub.Close()
	if p.router != nil {
		err = errors.Join(err, p.router.Close())
	}
	<-p.done
	return err
}

// endMarker is seq -1 as a signed 8-byte big-endian int.
var endMarker = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func (p *Publisher) serveReplay(ctx context.Context) {
	defer close(p.done)
	for {
		msg, err := p.router.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			continue
		}
		// [identity, "", start] from a DEALER; tolerate a missing delimiter.
		if len(msg.Frames) < 2 {
			continue
		}
		id := msg.Frames[0]
		last := msg.Frames[len(msg.Frames)-1]
		if len(last) != 8 {
			continue
		}
		start := binary.BigEndian.Uint64(last)
		for _, e := range p.since(start) {
			var sb [8]byte
			binary.BigEndian.PutUint64(sb[:], e.seq)
			if p.router.SendMulti(zmq4.NewMsgFrom(id, nil, sb[:], e.payload)) != nil {
				break
			}
		}
		_ = p.router.SendMulti(zmq4.NewMsgFrom(id, nil, endMarker, nil))
	}
}

// since returns the buffered entries with seq >= start, oldest first.
func (p *Publisher) since(start uint64) []entry {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]entry, 0, len(p.ring))
	n := len(p.ring)
	for i := range n {
		e := p.ring[(p.next+i)%n]
		if e.seq >= start {
			out = append(out, e)
		}
	}
	return out
}
