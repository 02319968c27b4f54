package kvevents

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest"
)

// checkFor polls cond until it holds or d passes (nats-server's checkFor).
func checkFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testPub is a real vLLM-format publisher: a zmq4 PUB socket sending
// [topic, seq, payload] and a ROUTER answering replay requests from a ring buffer,
// exactly as vllm/distributed/kv_events.py ZmqEventPublisher does. Its cache model (the
// blocks it has stored and not removed) is the truth the sink is compared against.
type testPub struct {
	t       *testing.T
	style   prototest.Style
	topic   string
	pubPort int
	repPort int // 0: no replay endpoint

	// mu guards everything below.
	mu      sync.Mutex
	pub     zmq4.Socket
	router  zmq4.Socket
	cancel  context.CancelFunc
	done    chan struct{}
	seq     uint64
	ring    []ringEntry
	ringCap int
	drop    int // the next drop publishes are kept in the ring but not sent
	cache   map[proto.EngineHash]bool
	next    proto.EngineHash
}

type ringEntry struct {
	seq     uint64
	payload []byte
}

func newTestPub(t *testing.T, replay bool, ringCap int, style prototest.Style) *testPub {
	t.Helper()
	p := &testPub{t: t, style: style, ringCap: ringCap, cache: map[proto.EngineHash]bool{}, next: 1 << 63}
	p.pubPort = freePort(t)
	if replay {
		p.repPort = freePort(t)
	}
	p.up()
	t.Cleanup(p.down)
	return p
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

func (p *testPub) endpoint() string { return "tcp://127.0.0.1:" + strconv.Itoa(p.pubPort) }

func (p *testPub) replayEndpoint() string {
	if p.repPort == 0 {
		return ""
	}
	return "tcp://127.0.0.1:" + strconv.Itoa(p.repPort)
}

// up binds the sockets (again, after down) on the same ports.
func (p *testPub) up() {
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.pub = zmq4.NewPub(ctx, zmq4.WithLogger(zmqLogger))
	var err error
	for range 100 { // the old listener may take a moment to release the port
		if err = p.pub.Listen(p.endpoint()); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		p.t.Fatalf("listen pub: %v", err)
	}
	p.done = make(chan struct{})
	if p.repPort == 0 {
		close(p.done)
		return
	}
	p.router = zmq4.NewRouter(ctx, zmq4.WithLogger(zmqLogger))
	for range 100 {
		if err = p.router.Listen(p.replayEndpoint()); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		p.t.Fatalf("listen router: %v", err)
	}
	go p.serveReplay(ctx, p.router, p.done)
}

// down closes the sockets: subscribers see the connection drop.
func (p *testPub) down() {
	p.mu.Lock()
	cancel, pub, router, done := p.cancel, p.pub, p.router, p.done
	p.pub, p.router = nil, nil
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

func (p *testPub) serveReplay(ctx context.Context, router zmq4.Socket, done chan struct{}) {
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
		start := uint64(msg.Frames[2][0])<<56 | uint64(msg.Frames[2][1])<<48 | uint64(msg.Frames[2][2])<<40 |
			uint64(msg.Frames[2][3])<<32 | uint64(msg.Frames[2][4])<<24 | uint64(msg.Frames[2][5])<<16 |
			uint64(msg.Frames[2][6])<<8 | uint64(msg.Frames[2][7])
		p.mu.Lock()
		ring := append([]ringEntry(nil), p.ring...)
		p.mu.Unlock()
		for _, e := range ring {
			if e.seq >= start {
				if err := router.SendMulti(zmq4.NewMsgFrom(id, nil, proto.SeqBytes(e.seq), e.payload)); err != nil {
					return
				}
			}
		}
		end := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		if err := router.SendMulti(zmq4.NewMsgFrom(id, nil, end, nil)); err != nil {
			return
		}
	}
}

// subscribed reports whether a subscriber's subscription has reached the PUB socket.
func (p *testPub) subscribed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pub == nil {
		return false
	}
	tp, ok := p.pub.(zmq4.Topics)
	return ok && len(tp.Topics()) > 0
}

// publish sends one batch of events (assigning the next seq) and returns its seq.
func (p *testPub) publish(events ...proto.Event) uint64 {
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
		if err := p.pub.SendMulti(zmq4.NewMsgFrom([]byte(p.topic), proto.SeqBytes(seq), payload)); err != nil {
			p.t.Logf("publish %d: %v", seq, err)
		}
	}
	return seq
}

// store publishes one BlockStored of n fresh blocks and returns their hashes.
func (p *testPub) store(n int) []proto.EngineHash {
	p.mu.Lock()
	hs := make([]proto.EngineHash, n)
	for i := range hs {
		hs[i] = p.next
		p.next++
	}
	p.mu.Unlock()
	tokens := make([]uint32, 4*n)
	for i := range tokens {
		tokens[i] = uint32(i)
	}
	p.publish(proto.Event{Kind: proto.BlockStored, BlockHashes: hs, TokenIDs: tokens, BlockSize: 4, Medium: "GPU"})
	return hs
}

// restart models an engine restart: empty cache, seq back to 0, ring emptied.
func (p *testPub) restart() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq, p.ring = 0, nil
	clear(p.cache)
}

func (p *testPub) dropNext(n int) {
	p.mu.Lock()
	p.drop = n
	p.mu.Unlock()
}

func (p *testPub) truth() map[proto.EngineHash]bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[proto.EngineHash]bool, len(p.cache))
	for h := range p.cache {
		out[h] = true
	}
	return out
}

// recSink is a Sink that keeps, per worker, the log of calls and the cache it implies.
type recSink struct {
	mu    sync.Mutex
	log   map[WorkerKey][]string
	cache map[WorkerKey]map[proto.EngineHash]bool
	seqs  map[WorkerKey][]uint64
	model map[WorkerKey]string
}

func newRecSink() *recSink {
	return &recSink{log: map[WorkerKey][]string{}, cache: map[WorkerKey]map[proto.EngineHash]bool{},
		seqs: map[WorkerKey][]uint64{}, model: map[WorkerKey]string{}}
}

func (s *recSink) Apply(w WorkerKey, model string, b *proto.Batch) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log[w] = append(s.log[w], fmt.Sprintf("apply:%d", b.Seq))
	s.seqs[w] = append(s.seqs[w], b.Seq)
	s.model[w] = model
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

func (s *recSink) Reset(w WorkerKey, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log[w] = append(s.log[w], "reset:"+reason)
	delete(s.cache, w)
}

func (s *recSink) lastSeq(w WorkerKey) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.seqs[w]
	if len(q) == 0 {
		return 0, false
	}
	return q[len(q)-1], true
}

func (s *recSink) resets(w WorkerKey) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, l := range s.log[w] {
		if len(l) > 6 && l[:6] == "reset:" {
			out = append(out, l[6:])
		}
	}
	return out
}

func (s *recSink) logOf(w WorkerKey) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log[w]...)
}

func (s *recSink) cacheOf(w WorkerKey) map[proto.EngineHash]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[proto.EngineHash]bool{}
	for h := range s.cache[w] {
		out[h] = true
	}
	return out
}

func sameSet(a, b map[proto.EngineHash]bool) bool {
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

func portFree(port int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
}
