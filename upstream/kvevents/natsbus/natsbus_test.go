package natsbus_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/upstream/kvevents"
	"github.com/kvroute/kvroute/upstream/kvevents/kvtest"
	"github.com/kvroute/kvroute/upstream/kvevents/natsbus"
)

const wait = 10 * time.Second

var w1 = proto.WorkerKey{ID: "http://w1:8000"}

func embedded(t *testing.T) *natsbus.Embedded {
	t.Helper()
	e, err := natsbus.StartEmbedded(natsbus.EmbeddedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	return e
}

func connect(t *testing.T, e *natsbus.Embedded) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(e.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// tee is a Sink feeding two sinks.
type tee [2]kvevents.Sink

func (t tee) Apply(w proto.WorkerKey, model string, b *proto.Batch) {
	t[0].Apply(w, model, b)
	t[1].Apply(w, model, b)
}

func (t tee) Reset(w proto.WorkerKey, reason string) {
	t[0].Reset(w, reason)
	t[1].Reset(w, reason)
}

// bridge runs what `kvroute bridge` runs: a kvevents.Manager on pub whose sink
// republishes to NATS, and records what it saw in seen.
func bridge(t *testing.T, nc *nats.Conn, pub *kvtest.Pub, seen *kvtest.Recorder) {
	t.Helper()
	m, err := kvevents.NewManager(kvevents.Options{Sink: tee{natsbus.NewPublisher(nc, natsbus.PublisherOptions{}), seen},
		BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Add(kvevents.WorkerConfig{Worker: w1.ID, Model: "org/model-1.5", Endpoint: pub.Endpoint(), ReplayEndpoint: pub.ReplayEndpoint()}); err != nil {
		t.Fatal(err)
	}
	run(t, m.Run)
	poll.CheckFor(t, wait, "bridge subscription", pub.Subscribed)
}

// run runs fn until the test ends.
func run(t *testing.T, fn func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func consumer(t *testing.T, nc *nats.Conn, sink kvevents.Sink, opts natsbus.ConsumerOptions) (*natsbus.Consumer, func()) {
	t.Helper()
	c, err := natsbus.NewConsumer(nc, sink, opts)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c.Run)
	select {
	case <-c.Ready():
	case <-time.After(wait):
		t.Fatal("consumer not ready")
	}
	return c, stop
}

func waitSeq(t *testing.T, r *kvtest.Recorder, seq uint64) {
	t.Helper()
	poll.CheckFor(t, wait, "seq applied", func() bool {
		got, ok := r.LastSeq(w1)
		return ok && got == seq
	})
}

// applies returns the apply entries of a recorder's log.
func applies(log []string) []string {
	var out []string
	for _, l := range log {
		if l[:6] == "apply:" {
			out = append(out, l)
		}
	}
	return out
}

// sameBatches checks that two recorders hold identical batches for w1.
func sameBatches(t *testing.T, got, want *kvtest.Recorder) {
	t.Helper()
	g, w := got.Batches(w1), want.Batches(w1)
	if len(g) != len(w) {
		t.Fatalf("consumer got %d batches, bridge saw %d", len(g), len(w))
	}
	for i := range g {
		if d := prototest.Diff(&g[i], &w[i]); d != "" {
			t.Fatalf("batch %d: %s", i, d)
		}
	}
}

func TestBridgeThroughNATSCore(t *testing.T) {
	e := embedded(t)
	pub := kvtest.NewPub(t, true, 100, prototest.Style{MapEvents: true, MapBatch: true})
	seen, got := kvtest.NewRecorder(), kvtest.NewRecorder()
	c, _ := consumer(t, connect(t, e), got, natsbus.ConsumerOptions{})
	bridge(t, connect(t, e), pub, seen)

	for range 5 {
		pub.Store(2)
	}
	pub.DropNext(2) // a gap the bridge fills by replay; the consumer never sees it
	pub.Store(1)
	pub.Store(1)
	pub.Store(1)
	waitSeq(t, got, 7)
	pub.Restart() // engine restart: the bridge resets, the reset travels to the consumer
	pub.Store(3)
	waitSeq(t, got, 0)

	sameBatches(t, got, seen)
	if g, w := applies(got.Log(w1)), applies(seen.Log(w1)); !slices.Equal(g, w) {
		t.Fatalf("consumer applied %v, bridge %v", g, w)
	}
	if r := got.Resets(w1); !slices.Equal(r, []string{kvevents.ReasonUpstream, kvevents.ReasonUpstream}) {
		t.Fatalf("consumer resets %v, want upstream twice (start, restart)", r)
	}
	if !kvtest.SameSet(got.Cache(w1), pub.Truth()) {
		t.Fatalf("consumer cache %v, engine %v", got.Cache(w1), pub.Truth())
	}
	if got.Model(w1) != "org/model-1.5" {
		t.Fatalf("model %q", got.Model(w1))
	}
	st := c.States()
	if len(st) != 1 || st[0].Key != w1 || st[0].LastSeq != 0 || st[0].Resets != 2 {
		t.Fatalf("consumer states %+v", st)
	}
	c.Forget(w1.ID)
	if r := got.Resets(w1); r[len(r)-1] != kvevents.ReasonRemoved || len(got.Cache(w1)) != 0 {
		t.Fatalf("after Forget resets %v cache %v", r, got.Cache(w1))
	}
}

// TestConsumerGapResets: messages lost between bridge and router (core NATS drops) reset
// the worker, since the router cannot replay them.
func TestConsumerGapResets(t *testing.T) {
	e := embedded(t)
	got := kvtest.NewRecorder()
	consumer(t, connect(t, e), got, natsbus.ConsumerOptions{})
	p := natsbus.NewPublisher(connect(t, e), natsbus.PublisherOptions{})
	for _, seq := range []uint64{10, 11, 14, 15, 3} {
		p.Apply(w1, "m", &proto.Batch{Seq: seq, DPRank: -1, Events: []proto.Event{{Kind: proto.AllBlocksCleared, Medium: "GPU"}}})
	}
	waitSeq(t, got, 3)
	want := []string{"apply:10", "apply:11", "reset:gap", "apply:14", "apply:15", "reset:restart", "apply:3"}
	if g := got.Log(w1); !slices.Equal(g, want) {
		t.Fatalf("log %v, want %v", g, want)
	}
}

func TestJetStreamDurableResume(t *testing.T) {
	e := embedded(t)
	ncB := connect(t, e)
	ctx := context.Background()
	if err := natsbus.EnsureStream(ctx, ncB, natsbus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	pub := kvtest.NewPub(t, true, 100, prototest.Style{})
	seen := kvtest.NewRecorder()
	bridge(t, ncB, pub, seen)

	ncR := connect(t, e)
	first := kvtest.NewRecorder()
	opts := natsbus.ConsumerOptions{JetStream: true, Durable: "router-1"}
	_, stop := consumer(t, ncR, first, opts)
	for range 5 {
		pub.Store(1)
	}
	waitSeq(t, first, 4)
	// Every delivered message is acknowledged before the router "dies".
	js, err := jetstream.New(ncR)
	if err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, wait, "acks", func() bool {
		cons, err := js.Consumer(ctx, natsbus.DefaultStream, "router-1")
		if err != nil {
			return false
		}
		info, err := cons.Info(ctx)
		return err == nil && info.NumAckPending == 0 && info.AckFloor.Stream == 6 // reset + 5 batches
	})
	stop()

	for range 5 { // published while the router is down
		pub.Store(1)
	}
	waitSeq(t, seen, 9)
	second := kvtest.NewRecorder()
	consumer(t, ncR, second, opts)
	waitSeq(t, second, 9)
	if g, w := applies(second.Log(w1)), []string{"apply:5", "apply:6", "apply:7", "apply:8", "apply:9"}; !slices.Equal(g, w) {
		t.Fatalf("restarted durable consumer applied %v, want %v", g, w)
	}
	if r := second.Resets(w1); len(r) != 0 {
		t.Fatalf("restarted durable consumer reset %v; it must resume, not clear", r)
	}
	all := append(first.Batches(w1), second.Batches(w1)...)
	want := seen.Batches(w1)
	if len(all) != len(want) {
		t.Fatalf("%d batches over both runs, bridge saw %d", len(all), len(want))
	}
	for i := range all {
		if d := prototest.Diff(&all[i], &want[i]); d != "" {
			t.Fatalf("batch %d: %s", i, d)
		}
	}

	// An ephemeral consumer (no durable name) rebuilds from everything the stream holds.
	fresh := kvtest.NewRecorder()
	consumer(t, connect(t, e), fresh, natsbus.ConsumerOptions{JetStream: true})
	waitSeq(t, fresh, 9)
	sameBatches(t, fresh, seen)
	if !kvtest.SameSet(fresh.Cache(w1), pub.Truth()) {
		t.Fatal("ephemeral consumer's cache differs from the engine's")
	}
}

func TestSubject(t *testing.T) {
	for _, c := range []struct {
		model string
		key   proto.WorkerKey
		want  string
	}{
		{"meta-llama/Llama-3.1-8B", proto.WorkerKey{ID: "http://10.0.0.1:8000"}, "kvroute.events.meta-llama_Llama-3_1-8B.http___10_0_0_1_8000.dp0"},
		{"", proto.WorkerKey{ID: "a b*>", DPRank: 3}, "kvroute.events._.a_b__.dp3"},
	} {
		if got := natsbus.Subject(natsbus.DefaultPrefix, c.model, c.key); got != c.want {
			t.Errorf("Subject(%q, %v) = %q, want %q", c.model, c.key, got, c.want)
		}
	}
}

// TestConsumerDeadAfter: a worker whose bridge keeps sending heartbeats stays; once the
// bridge goes silent for DeadAfter, the worker is reset ("dead") once.
func TestConsumerDeadAfter(t *testing.T) {
	e := embedded(t)
	got := kvtest.NewRecorder()
	c, _ := consumer(t, connect(t, e), got, natsbus.ConsumerOptions{DeadAfter: 200 * time.Millisecond})
	p := natsbus.NewPublisher(connect(t, e), natsbus.PublisherOptions{Model: "m"})
	p.Apply(w1, "m", &proto.Batch{Seq: 0, DPRank: -1, Events: []proto.Event{{Kind: proto.AllBlocksCleared, Medium: "GPU"}}})
	waitSeq(t, got, 0)
	start := time.Now()
	for time.Since(start) < 800*time.Millisecond { // heartbeats keep it alive
		p.Heartbeat(w1)
		time.Sleep(40 * time.Millisecond)
	}
	if r := got.Resets(w1); len(r) != 0 {
		t.Fatalf("reset %v while the bridge sent heartbeats", r)
	}
	poll.CheckFor(t, wait, "dead reset", func() bool { return slices.Contains(got.Resets(w1), kvevents.ReasonDead) })
	if n := len(got.Resets(w1)); n != 1 {
		t.Fatalf("resets %v, want one", got.Resets(w1))
	}
	if st := c.States(); st[0].LastReset != kvevents.ReasonDead {
		t.Fatalf("state %+v", st[0])
	}
	// The bridge comes back: its next batch is accepted whatever its seq.
	p.Apply(w1, "m", &proto.Batch{Seq: 57, DPRank: -1})
	waitSeq(t, got, 57)
}
