// Package kvtest provides real-socket test doubles for KV event ingestion: a
// vLLM-format ZMQ publisher with a replay ROUTER ([Pub]) whose cache model is the truth
// to compare against, and a recording [kvevents.Sink] ([Recorder]). Tests only.
package kvtest

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest"
	"github.com/kvroute/kvroute/upstream/kvevents"
)

var quiet = log.New(io.Discard, "", 0)

// Pub is a real vLLM-format publisher: a zmq4 PUB socket sending [topic, seq, payload]
// and a ROUTER answering replay requests from a ring buffer, as
// vllm/distributed/kv_events.py ZmqEventPublisher does. Its cache model (the blocks
// stored and not removed) is the truth a sink is compared against. Safe for concurrent
// use.
type Pub struct {
	t       testing.TB
	style   prototest.Style
	pubPort int
	repPort int // 0: no replay endpoint
	// Topic is the topic frame of every message; vLLM's default is "".
	Topic string

	// mu guards everything below.
	mu      sync.Mutex
	pub     zmq4.Socket
	router  zmq4.Socket
	cancel  context.CancelFunc
	done    chan struct{}
	seq     uint64
	ring    []ringEntry
	ringCap int
	drop    int // the next drop batches are kept in the ring but not sent
	cache   map[proto.EngineHash]bool
	next    proto.EngineHash
}

type ringEntry struct {
	seq     uint64
	payload []byte
}

// NewPub binds a publisher on free loopback ports, with a replay endpoint when replay
// is set, keeping the last ringCap batches for replay, encoding batches in style. It is
// closed when the test ends.
func NewPub(t testing.TB, replay bool, ringCap int, style prototest.Style) *Pub {
	t.Helper()
	rep := 0
	if replay {
		rep = FreePort(t)
	}
	return NewPubAt(t, FreePort(t), rep, ringCap, style)
}

// NewPubAt is NewPub on given ports (repPort 0: no replay), e.g. a DP rank's port + N.
func NewPubAt(t testing.TB, pubPort, repPort, ringCap int, style prototest.Style) *Pub {
	t.Helper()
	p := &Pub{t: t, style: style, ringCap: ringCap, cache: map[proto.EngineHash]bool{},
		next: proto.EngineHash(1<<63 + uint64(pubPort)<<32), pubPort: pubPort, repPort: repPort}
	p.Up()
	t.Cleanup(p.Down)
	return p
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

// PortFree reports whether port can be bound on loopback now.
func PortFree(port int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}

// Ports returns the PUB and replay ports (0 without replay).
func (p *Pub) Ports() (pub, replay int) { return p.pubPort, p.repPort }

// Endpoint returns the PUB endpoint.
func (p *Pub) Endpoint() string { return "tcp://127.0.0.1:" + strconv.Itoa(p.pubPort) }

// ReplayEndpoint returns the replay endpoint, "" without replay.
func (p *Pub) ReplayEndpoint() string {
	if p.repPort == 0 {
		return ""
	}
	return "tcp://127.0.0.1:" + strconv.Itoa(p.repPort)
}

func listen(s zmq4.Socket, ep string) error {
	var err error
	for range 200 { // a closed listener may take a moment to release its port
		if err = s.Listen(ep); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return err
}

// Up binds the sockets (again, after Down) on the same ports; the sequence and the ring
// survive, as they do across a network outage.
func (p *Pub) Up() {
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.pub = zmq4.NewPub(ctx, zmq4.WithLogger(quiet))
	if err := listen(p.pub, p.Endpoint()); err != nil {
		p.t.Fatalf("listen pub: %v", err)
	}
	p.done = make(chan struct{})
	if p.repPort == 0 {
		close(p.done)
		return
	}
	p.router = zmq4.NewRouter(ctx, zmq4.WithLogger(quiet))
	if err := listen(p.router, p.ReplayEndpoint()); err != nil {
		p.t.Fatalf("listen router: %v", err)
	}
	go p.serveReplay(ctx, p.router, p.done)
}

// Down closes the sockets: subscribers see their connection drop.
func (p *Pub) Down() {
	p.mu.Lock()
	cancel, pub, router, done := p.cancel, p.pub, p.router, p.done
	p.pub, p.router, p.cancel = nil, nil, nil
	p.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	if pub != nil {
		_ = pub.Close()
	}
	if router != nil {
		_ = router.Close()
	}
	<-done
}

func (p *Pub) serveReplay(ctx context.Context, router zmq4.Socket, done chan struct{}) {
	defer close(done)
	for ctx.Err() == nil {
		msg, err := router.Recv()
		if err != nil {
			return
		}
		if len(msg.Frames) != 3 || len(msg.Frames[2]) != 8 {
			continue // vLLM logs and ignores invalid requests
		}
		id := msg.Frames[0]
		start := binary.BigEndian.Uint64(msg.Frames[2])
		p.mu.Lock()
		ring := append([]ringEntry(nil), p.ring...)
		p.mu.Unlock()
		// A failed send ends this answer only, as in vLLM: the requester has gone (zmq4
		// may even report the end marker's empty last frame as failed when the requester
		// hung up right after reading its header), and the next requester is served.
		sent := true
		for _, e := range ring {
			if e.seq >= start && sent {
				sent = router.SendMulti(zmq4.NewMsgFrom(id, nil, proto.SeqBytes(e.seq), e.payload)) == nil
			}
		}
		if sent {
			end := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff} // (-1).to_bytes(8, "big", signed=True)
			_ = router.SendMulti(zmq4.NewMsgFrom(id, nil, end, nil))
		}
	}
}

// Subscribed reports whether a subscriber's subscription has reached the PUB socket
// (publishing before that loses messages: ZMQ's slow joiner).
func (p *Pub) Subscribed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pub == nil {
		return false
	}
	tp, ok := p.pub.(zmq4.Topics)
	return ok && len(tp.Topics()) > 0
}

// Publish sends one batch of events with the next seq and returns the seq. The batch is
// kept in the ring even when the publisher is down or told to drop it.
func (p *Pub) Publish(events ...proto.Event) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := proto.Batch{TS: float64(time.Now().UnixNano()) / 1e9, DPRank: 0, Events: events}
	payload := prototest.EncodeBatch(&b, p.style)
	for _, ev := range events {
		switch ev.Kind {
		case proto.BlockStored:
			for _, h := range ev.BlockHashes {
				p.cache[h] = true
			}
		case proto.BlockRemoved:
			for _, h := range ev.BlockHashes {
				delete(p.cache, h)
			}
		case proto.AllBlocksCleared:
			clear(p.cache)
		}
	}
	return p.send(payload)
}

// PublishRaw publishes payload as the next batch, as it is: e.g. bytes that do not
// decode as a batch, to play an engine sending a corrupt one. The cache model is not
// changed.
func (p *Pub) PublishRaw(payload []byte) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.send(payload)
}

// send publishes payload with the next seq and keeps it in the ring. mu must be held.
func (p *Pub) send(payload []byte) uint64 {
	seq := p.seq
	p.seq++
	p.ring = append(p.ring, ringEntry{seq, payload})
	if len(p.ring) > p.ringCap {
		p.ring = p.ring[1:]
	}
	if p.drop > 0 {
		p.drop--
		return seq
	}
	if p.pub != nil {
		if err := p.pub.SendMulti(zmq4.NewMsgFrom([]byte(p.Topic), proto.SeqBytes(seq), payload)); err != nil {
			p.t.Logf("publish %d: %v", seq, err)
		}
	}
	return seq
}

// Store publishes one BlockStored of n fresh blocks of 4 tokens and returns their hashes.
func (p *Pub) Store(n int) []proto.EngineHash {
	p.mu.Lock()
	hs := make([]proto.EngineHash, n)
	for i := range hs {
		hs[i] = p.next
		p.next++
	}
	p.mu.Unlock()
	tokens := make([]uint32, 4*n)
	for i := range tokens {
		tokens[i] = uint32(hs[i/4]) + uint32(i%4)
	}
	p.Publish(proto.Event{Kind: proto.BlockStored, BlockHashes: hs, TokenIDs: tokens, BlockSize: 4, Medium: "GPU"})
	return hs
}

// Restart models an engine restart: empty cache, seq back to 0, ring emptied.
func (p *Pub) Restart() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq, p.ring = 0, nil
	clear(p.cache)
}

// DropNext keeps the next n batches in the ring without sending them: a gap.
func (p *Pub) DropNext(n int) {
	p.mu.Lock()
	p.drop = n
	p.mu.Unlock()
}

// Truth returns the blocks the publisher's engine holds.
func (p *Pub) Truth() map[proto.EngineHash]bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[proto.EngineHash]bool, len(p.cache))
	for h := range p.cache {
		out[h] = true
	}
	return out
}

// Recorder is a [kvevents.Sink] that keeps, per worker, the log of calls ("apply:SEQ",
// "reset:REASON"), the applied batches, and the cache they imply. Safe for concurrent
// use.
type Recorder struct {
	mu      sync.Mutex
	log     map[proto.WorkerKey][]string
	cache   map[proto.WorkerKey]map[proto.EngineHash]bool
	seqs    map[proto.WorkerKey][]uint64
	model   map[proto.WorkerKey]string
	batches map[proto.WorkerKey][]proto.Batch
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder {
	return &Recorder{log: map[proto.WorkerKey][]string{}, cache: map[proto.WorkerKey]map[proto.EngineHash]bool{},
		seqs: map[proto.WorkerKey][]uint64{}, model: map[proto.WorkerKey]string{},
		batches: map[proto.WorkerKey][]proto.Batch{}}
}

// Apply records b (deep-copied) and applies it to w's cache.
func (s *Recorder) Apply(w proto.WorkerKey, model string, b *proto.Batch) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log[w] = append(s.log[w], fmt.Sprintf("apply:%d", b.Seq))
	s.seqs[w] = append(s.seqs[w], b.Seq)
	s.model[w] = model
	s.batches[w] = append(s.batches[w], deepCopy(b))
	c := s.cache[w]
	if c == nil {
		c = map[proto.EngineHash]bool{}
		s.cache[w] = c
	}
	for _, ev := range b.Events {
		switch ev.Kind {
		case proto.BlockStored:
			for _, h := range ev.BlockHashes {
				c[h] = true
			}
		case proto.BlockRemoved:
			for _, h := range ev.BlockHashes {
				delete(c, h)
			}
		case proto.AllBlocksCleared:
			clear(c)
		}
	}
}

func deepCopy(b *proto.Batch) proto.Batch {
	out := *b
	out.Events = make([]proto.Event, len(b.Events))
	for i, ev := range b.Events {
		ev.BlockHashes = append([]proto.EngineHash(nil), ev.BlockHashes...)
		ev.TokenIDs = append([]uint32(nil), ev.TokenIDs...)
		ev.ExtraKeys = append([][]string(nil), ev.ExtraKeys...)
		out.Events[i] = ev
	}
	return out
}

// Reset records the reset and clears w's cache.
func (s *Recorder) Reset(w proto.WorkerKey, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log[w] = append(s.log[w], "reset:"+reason)
	delete(s.cache, w)
}

// LastSeq returns the seq of w's last applied batch.
func (s *Recorder) LastSeq(w proto.WorkerKey) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.seqs[w]
	if len(q) == 0 {
		return 0, false
	}
	return q[len(q)-1], true
}

// Resets returns the reasons of w's resets, in order.
func (s *Recorder) Resets(w proto.WorkerKey) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, l := range s.log[w] {
		if r, ok := strings.CutPrefix(l, "reset:"); ok {
			out = append(out, r)
		}
	}
	return out
}

// Log returns w's call log.
func (s *Recorder) Log(w proto.WorkerKey) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log[w]...)
}

// Model returns the model passed with w's last batch.
func (s *Recorder) Model(w proto.WorkerKey) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.model[w]
}

// Batches returns copies of w's applied batches, in order.
func (s *Recorder) Batches(w proto.WorkerKey) []proto.Batch {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]proto.Batch(nil), s.batches[w]...)
}

// Cache returns the blocks w's applied batches imply since its last reset.
func (s *Recorder) Cache(w proto.WorkerKey) map[proto.EngineHash]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[proto.EngineHash]bool{}
	for h := range s.cache[w] {
		out[h] = true
	}
	return out
}

// SameSet reports whether a and b hold the same hashes.
func SameSet(a, b map[proto.EngineHash]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for h := range a {
		if !b[h] {
			return false
		}
	}
	return true
}

var _ kvevents.Sink = (*Recorder)(nil)
