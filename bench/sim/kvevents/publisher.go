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

// sockets are one generation of bound sockets and their replay server.
type sockets struct {
	pub    zmq4.Socket
	router zmq4.Socket // nil without replay
	cancel context.CancelFunc
	done   chan struct{} // closed when the replay server returned
}

func (s *sockets) close() error {
	s.cancel()
	err := s.pub.Close()
	if s.router != nil {
		err = errors.Join(err, s.router.Close())
	}
	<-s.done
	return err
}

// Publisher sends payloads on a ZMQ PUB socket with vLLM's framing and serves replay
// requests from a ring of the last BufferSteps payloads. Its methods are safe for
// concurrent use.
type Publisher struct {
	parent         context.Context
	topic          []byte
	endpoint       string
	replayEndpoint string

	// mu guards the fields below.
	mu      sync.Mutex
	socks   *sockets // nil while rebinding
	seq     uint64
	ring    []entry // circular once len == ringCap
	ringCap int
	next    int // ring index of the oldest entry (and next overwrite) once full
	drop    int
	sent    uint64
	dropd   uint64
	delayQ  delayQueue // see delay.go
}

// Listen binds the PUB socket and, when configured, the replay ROUTER socket, and starts
// the replay server. It stops when ctx ends or [Publisher.Close] is called.
func Listen(ctx context.Context, cfg Config) (*Publisher, error) {
	if cfg.BufferSteps <= 0 {
		return nil, fmt.Errorf("buffer_steps must be positive, got %d", cfg.BufferSteps)
	}
	p := &Publisher{parent: ctx, topic: []byte(cfg.Topic), ringCap: cfg.BufferSteps}
	p.ring = make([]entry, 0, min(cfg.BufferSteps, 1024))
	socks, err := p.bind(cfg.Endpoint, cfg.ReplayEndpoint)
	if err != nil {
		return nil, err
	}
	p.socks = socks
	p.endpoint = "tcp://" + socks.pub.Addr().String()
	if socks.router != nil {
		p.replayEndpoint = "tcp://" + socks.router.Addr().String()
	}
	return p, nil
}

func (p *Publisher) bind(endpoint, replayEndpoint string) (*sockets, error) {
	ctx, cancel := context.WithCancel(p.parent)
	s := &sockets{pub: zmq4.NewPub(ctx), cancel: cancel, done: make(chan struct{})}
	if err := s.pub.Listen(endpoint); err != nil {
		cancel()
		_ = s.pub.Close()
		return nil, fmt.Errorf("bind kv events %q: %w", endpoint, err)
	}
	if replayEndpoint == "" {
		close(s.done)
		return s, nil
	}
	s.router = zmq4.NewRouter(ctx)
	if err := s.router.Listen(replayEndpoint); err != nil {
		cancel()
		_ = s.pub.Close()
		_ = s.router.Close()
		return nil, fmt.Errorf("bind kv events replay %q: %w", replayEndpoint, err)
	}
	go p.serveReplay(ctx, s)
	return s, nil
}

// Endpoint returns the PUB socket's bound address as "tcp://host:port".
func (p *Publisher) Endpoint() string { return p.endpoint }

// ReplayEndpoint returns the ROUTER socket's bound address, or "" without replay.
func (p *Publisher) ReplayEndpoint() string { return p.replayEndpoint }

// Subscribed reports whether at least one subscriber has subscribed to a topic that
// matches this publisher's topic. Tests use it to avoid ZMQ's slow-joiner loss.
func (p *Publisher) Subscribed() bool {
	p.mu.Lock()
	socks := p.socks
	p.mu.Unlock()
	if socks == nil {
		return false
	}
	t, ok := socks.pub.(zmq4.Topics)
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
	if p.delayQ.hold(seq, buf) {
		return seq
	}
	p.sendLocked(seq, buf)
	return seq
}

// sendLocked sends one numbered payload on the PUB socket, or drops it as the fault
// injector asked. mu must be held.
func (p *Publisher) sendLocked(seq uint64, buf []byte) {
	if p.drop > 0 || p.socks == nil {
		p.drop = max(p.drop-1, 0)
		p.dropd++
		return
	}
	var sb [8]byte
	binary.BigEndian.PutUint64(sb[:], seq)
	// The PUB socket queues the message and returns at once (no high-water mark set).
	_ = p.socks.pub.SendMulti(zmq4.NewMsgFrom(p.topic, sb[:], buf))
	p.sent++
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
	p.delayQ.clear()
	p.mu.Unlock()
}

// Stats returns the next seq, the batches sent on the PUB socket and the batches dropped
// by the fault injector, since the publisher started.
func (p *Publisher) Stats() (nextSeq, sent, dropped uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seq, p.sent, p.dropd
}

// Rebind restarts like [Publisher.Restart] and also closes both sockets and binds new
// ones on the same addresses, as a restarted engine process does: subscribers and replay
// clients see their TCP connections drop and must reconnect.
func (p *Publisher) Rebind() error {
	p.mu.Lock()
	old := p.socks
	p.socks = nil
	p.mu.Unlock()
	p.Restart()
	var err error
	if old != nil {
		err = old.close()
	}
	socks, berr := p.bind(p.endpoint, p.replayEndpoint)
	if berr != nil {
		return errors.Join(err, berr)
	}
	p.mu.Lock()
	p.socks = socks
	p.mu.Unlock()
	return err
}

// Close stops the replay server and closes both sockets.
func (p *Publisher) Close() error {
	p.mu.Lock()
	old := p.socks
	p.socks = nil
	p.mu.Unlock()
	if old == nil {
		return nil
	}
	return old.close()
}

// endMarker is seq -1 as a signed 8-byte big-endian int.
var endMarker = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func (p *Publisher) serveReplay(ctx context.Context, s *sockets) {
	defer close(s.done)
	for {
		msg, err := s.router.Recv()
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
			if s.router.SendMulti(zmq4.NewMsgFrom(id, nil, sb[:], e.payload)) != nil {
				break
			}
		}
		_ = s.router.SendMulti(zmq4.NewMsgFrom(id, nil, endMarker, nil))
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
