package kvevents_test

import (
	"context"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/kvroute/kvroute/proto/prototest"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	ingest "github.com/kvroute/kvroute/upstream/kvevents"
	"github.com/kvroute/kvroute/upstream/kvevents/kvtest"
)

// silentPeer accepts TCP connections and never answers: not a ZMQ peer.
func silentPeer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-done
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return "tcp://" + l.Addr().String()
}

// TestSilentPeerDoesNotHang: an endpoint that accepts TCP but never speaks ZMTP must not
// block the source: the handshake times out, the source retries, and removing the worker
// returns promptly.
func TestSilentPeerDoesNotHang(t *testing.T) {
	ep := silentPeer(t)
	sink := kvtest.NewRecorder()
	m, err := ingest.NewManager(ingest.Options{Sink: sink, DialTimeout: 100 * time.Millisecond,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond, DeadAfter: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Add(ingest.WorkerConfig{Worker: w1.ID, Endpoint: ep}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = m.Run(ctx) }()
	poll.CheckFor(t, wait, "handshake timeouts and retries", func() bool {
		st := m.States()
		return len(st) == 1 && st[0].Reconnects >= 2 && st[0].LastError != "" && !st[0].Connected
	})
	removed := make(chan struct{})
	go func() {
		m.Remove(w1.ID)
		close(removed)
	}()
	select {
	case <-removed:
	case <-time.After(5 * time.Second):
		t.Fatal("Remove blocked on a silent peer")
	}
}

// TestSilentReplayEndpointResets: a gap whose replay endpoint never answers resets the
// worker after the handshake deadline, and the stream goes on.
func TestSilentReplayEndpointResets(t *testing.T) {
	p := kvtest.NewPub(t, false, 100, prototest.Style{})
	sink := kvtest.NewRecorder()
	m, err := ingest.NewManager(ingest.Options{Sink: sink, DialTimeout: 100 * time.Millisecond, DeadAfter: -1,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Add(ingest.WorkerConfig{Worker: w1.ID, Endpoint: p.Endpoint(), ReplayEndpoint: silentPeer(t)}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = m.Run(ctx) }()
	poll.CheckFor(t, wait, "subscription", p.Subscribed)
	p.Store(1) // seq 0 (the start replay from 0 is not needed)
	waitSeq(t, sink, w1, 0)
	p.DropNext(1)
	p.Store(1)
	p.Store(1) // seq 2: gap, replay times out
	waitSeq(t, sink, w1, 2)
	want := []string{"reset:start", "apply:0", "reset:gap", "apply:2"}
	if got := sink.Log(w1); !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
	if st := m.States()[0]; st.LastError == "" {
		t.Fatalf("replay failure not recorded: %+v", st)
	}
}

// TestPublisherNotUpAtStart: the worker is configured before its engine listens; the
// source keeps retrying with backoff and connects once it does.
func TestPublisherNotUpAtStart(t *testing.T) {
	port, rport := kvtest.FreePort(t), kvtest.FreePort(t)
	sink := kvtest.NewRecorder()
	m := startManager(t, sink, nil, ingest.WorkerConfig{Worker: w1.ID,
		Endpoint: "tcp://127.0.0.1:" + strconv.Itoa(port), ReplayEndpoint: "tcp://127.0.0.1:" + strconv.Itoa(rport)})
	poll.CheckFor(t, wait, "failed attempts", func() bool { return stateOf(m, w1).Reconnects >= 2 })
	p := kvtest.NewPubAt(t, port, rport, 100, prototest.Style{})
	poll.CheckFor(t, wait, "subscription", p.Subscribed)
	p.Store(2)
	waitSeq(t, sink, w1, 0)
	if !stateOf(m, w1).Connected {
		t.Fatal("not connected after the publisher came up")
	}
}
