package kvevents_test

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/proto/prototest"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	ingest "github.com/kvroute/kvroute/upstream/kvevents"
	"github.com/kvroute/kvroute/upstream/kvevents/kvtest"
)

// hostilePeer listens on loopback and plays socketType's side of the ZMTP handshake
// with each connection, then hands it to behave (connection number i, from 0), which
// sends what it likes. Connections past the last behaviour are closed at once. It
// returns the listener, closed when the test ends or by the caller.
func hostilePeer(t *testing.T, socketType string, behave ...func(c net.Conn)) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			if i >= len(behave) {
				_ = c.Close()
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if ingest.ZMTPHandshake(c, socketType) != nil {
					return
				}
				behave[i](c)
				_, _ = io.Copy(io.Discard, c) // until kvroute hangs up
			}()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l
}

// totalAlloc returns the bytes allocated by the process so far.
func totalAlloc() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.TotalAlloc
}

// TestOversizeFramesDropped: a publisher that completes the handshake and then announces
// a 2^40-byte frame, a frame of limit+1 bytes (and sends them), or a message whose frames
// together exceed the limit must not make the router allocate them (zmq4 alone would
// allocate the announced size and die: "fatal error: runtime: out of memory"). Each
// is counted as dropped, the source reconnects, and a well-formed publisher that takes
// over the port afterwards is consumed.
func TestOversizeFramesDropped(t *testing.T) {
	const limit = ingest.DefaultMaxMessageBytes
	big := bytes.Repeat([]byte{0x42}, limit+1) // allocated before the measurement starts
	half := big[:limit/2+1]
	send := func(b []byte) func(net.Conn) { return func(c net.Conn) { _, _ = c.Write(b) } }
	behave := []func(net.Conn){
		send(ingest.ZMTPLongHeader(0, 1<<40)),
		send(ingest.ZMTPMessage(big)),
		send(ingest.ZMTPMessage([]byte("kv"), half, half)),
	}
	// Every later connection meets the 2^40 header too, so the feed's last error stays
	// the oversize one however many times it reconnects before the check below.
	for range 100 {
		behave = append(behave, behave[0])
	}
	l := hostilePeer(t, "PUB", behave...)
	port := l.Addr().(*net.TCPAddr).Port
	ep := "tcp://" + l.Addr().String()

	sink := kvtest.NewRecorder()
	reg := prometheus.NewRegistry()
	runtime.GC()
	before := totalAlloc()
	m := startManager(t, sink, reg, ingest.WorkerConfig{Worker: w1.ID, Endpoint: ep})
	poll.CheckFor(t, wait, "three oversize drops", func() bool {
		return metricValue(t, reg, "kvroute_events_dropped_messages_total", w1.String(), ingest.DropOversize) >= 3
	})
	if grew := totalAlloc() - before; grew > limit {
		t.Fatalf("allocated %d bytes while refusing oversize frames, more than the %d-byte limit", grew, limit)
	}
	poll.CheckFor(t, wait, "a last error naming the limit", func() bool {
		return strings.Contains(stateOf(m, w1).LastError, "over the limit")
	})

	// A well-formed publisher on the same port is consumed.
	_ = l.Close()
	p := kvtest.NewPubAt(t, port, 0, 100, prototest.Style{})
	poll.CheckFor(t, wait, "subscription to the good publisher", p.Subscribed)
	p.Store(2)
	waitSeq(t, sink, w1, 0)
	if got, want := sink.Cache(w1), p.Truth(); !kvtest.SameSet(got, want) {
		t.Fatalf("sink %v, publisher %v", got, want)
	}
}

// TestOversizeReplayFailsTheReplay: a replay ROUTER answering the request with a frame
// announcing 2^40 bytes fails that replay (a gap reset, as for any failed replay) and is
// counted as dropped; the live stream goes on.
func TestOversizeReplayFailsTheReplay(t *testing.T) {
	var requests atomic.Int32
	oversize := func(c net.Conn) {
		if _, err := ingest.ZMTPReadFrame(c); err != nil { // the request's delimiter
			return
		}
		if _, err := ingest.ZMTPReadFrame(c); err != nil { // and its start seq
			return
		}
		requests.Add(1)
		_, _ = c.Write(ingest.ZMTPLongHeader(0x01, 0)) // an empty delimiter, LONG-encoded
		_, _ = c.Write(ingest.ZMTPLongHeader(0x01, 1<<40))
	}
	l := hostilePeer(t, "ROUTER", oversize, oversize, oversize)
	p := kvtest.NewPub(t, false, 100, prototest.Style{})
	sink := kvtest.NewRecorder()
	reg := prometheus.NewRegistry()
	m := startManager(t, sink, reg, ingest.WorkerConfig{Worker: w1.ID, Endpoint: p.Endpoint(),
		ReplayEndpoint: "tcp://" + l.Addr().String()})
	// The catch-up at connect meets the oversize frame first: it fails, and the first
	// live batch is taken as before, without a second start reset.
	caughtUp(t, m, p, w1)
	p.Store(1) // seq 0: no replay needed
	waitSeq(t, sink, w1, 0)
	p.DropNext(1)
	p.Store(1)
	p.Store(1) // seq 2: gap, the replay meets the oversize frame
	waitSeq(t, sink, w1, 2)
	if requests.Load() != 2 {
		t.Fatalf("%d replay requests reached the peer, want 2 (catch-up, gap)", requests.Load())
	}
	if v := metricValue(t, reg, "kvroute_events_dropped_messages_total", w1.String(), ingest.DropOversize); v != 2 {
		t.Fatalf("dropped{oversize} = %v, want 2", v)
	}
	if v := metricValue(t, reg, "kvroute_events_replays_total", w1.String(), "failed"); v != 2 {
		t.Fatalf("replays{failed} = %v, want 2", v)
	}
	want := []string{"reset:start", "apply:0", "reset:gap", "apply:2"}
	if got := sink.Log(w1); !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
	p.Store(1)
	waitSeq(t, sink, w1, 3)
	if st := stateOf(m, w1); !st.Connected {
		t.Fatalf("live stream lost: %+v", st)
	}
}
