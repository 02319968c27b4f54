package main

import (
	"bytes"
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/upstream/kvevents/kvtest"
	"github.com/kvroute/kvroute/upstream/kvevents/natsbus"
)

// TestBridgeCommand runs `kvroute bridge` against a real vLLM-format ZMQ publisher and an
// embedded NATS server, and checks a router-side consumer ends up with the engine's cache.
func TestBridgeCommand(t *testing.T) {
	srv, err := natsbus.StartEmbedded(natsbus.EmbeddedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	got := kvtest.NewRecorder()
	c, err := natsbus.NewConsumer(nc, got, natsbus.ConsumerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.Run(ctx) }()
	<-c.Ready()

	// A raw subscriber sees the bridge's heartbeats.
	var heartbeats atomic.Int64
	hbSub, err := nc.Subscribe(natsbus.DefaultPrefix+".>", func(m *nats.Msg) {
		var e proto.Envelope
		if proto.DecodeEnvelope(m.Data, &e) == nil && e.Kind == proto.EnvelopeHeartbeat && e.Worker == "http://w1:8000" {
			heartbeats.Add(1)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = hbSub.Unsubscribe() }()

	pub := kvtest.NewPub(t, true, 100, prototest.Style{MapEvents: true})
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	bctx, stopBridge := context.WithCancel(ctx)
	go func() {
		done <- bridgeMain(bctx, []string{"--worker", "http://w1:8000", "--model", "m", "--events", pub.Endpoint(),
			"--replay", pub.ReplayEndpoint(), "--nats", srv.ClientURL(), "--jetstream", "--heartbeat", "20ms", "--log-level", "error"}, &stdout, &stderr)
	}()
	poll.CheckFor(t, 10*time.Second, "bridge subscription", pub.Subscribed)
	for range 3 {
		pub.Store(2)
	}
	w := proto.WorkerKey{ID: "http://w1:8000"}
	poll.CheckFor(t, 10*time.Second, "batches through NATS", func() bool {
		s, ok := got.LastSeq(w)
		return ok && s == 2
	})
	if !kvtest.SameSet(got.Cache(w), pub.Truth()) {
		t.Fatalf("consumer cache %v, engine %v", got.Cache(w), pub.Truth())
	}
	poll.CheckFor(t, 10*time.Second, "bridge heartbeats", func() bool { return heartbeats.Load() >= 2 })
	stopBridge()
	if code := <-done; code != 0 {
		t.Fatalf("bridge exit %d: %s", code, stderr.String())
	}
}

func TestBridgeFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--worker", "w", "--events", "tcp://*:5557"},
		{"--worker", "w", "--embedded-nats", "nope"},
		{"--worker", "w", "extra"},
	} {
		var out, errb bytes.Buffer
		if code := bridgeMain(context.Background(), args, &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2 (%s)", args, code, errb.String())
		}
		if !strings.Contains(errb.String(), "kvroute bridge") && !strings.Contains(errb.String(), "flag") {
			t.Errorf("%q: no error message: %q", args, errb.String())
		}
	}
}
