package kvevents

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest"
)

const wait = 10 * time.Second

// startManager runs a Manager with fast backoff for the test's lifetime.
func startManager(t *testing.T, sink Sink, reg prometheus.Registerer, cfgs ...WorkerConfig) *Manager {
	t.Helper()
	m, err := NewManager(Options{Sink: sink, Registerer: reg, BackoffMin: 10 * time.Millisecond,
		BackoffMax: 50 * time.Millisecond, ReplayTimeout: 5 * time.Second, DeadAfter: -1})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cfgs {
		if err := m.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = m.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return m
}

func cfgFor(p *testPub) WorkerConfig {
	return WorkerConfig{Worker: "http://w1:8000", Model: "m1", Endpoint: p.endpoint(), ReplayEndpoint: p.replayEndpoint()}
}

var w1 = WorkerKey{Worker: "http://w1:8000"}

// waitSeq waits until the sink has applied seq as the worker's latest batch.
func waitSeq(t *testing.T, s *recSink, w WorkerKey, seq uint64) {
	t.Helper()
	checkFor(t, wait, "seq applied", func() bool {
		got, ok := s.lastSeq(w)
		return ok && got == seq
	})
}

func stateOf(m *Manager, w WorkerKey) WorkerState {
	for _, st := range m.States() {
		if st.Key == w {
			return st
		}
	}
	return WorkerState{}
}

func TestStreamInOrderEveryStyle(t *testing.T) {
	for name, st := range map[string]prototest.Style{
		"vllm-array": {}, "vllm-map": {MapEvents: true, MapBatch: true},
		"vllm-digest": {Digest: true, MapEvents: true}, "sglang": {SGLang: true, StoredFields: 5},
	} {
		t.Run(name, func(t *testing.T) {
			p := newTestPub(t, true, 100, st)
			sink := newRecSink()
			startManager(t, sink, nil, cfgFor(p))
			checkFor(t, wait, "subscription", p.subscribed)
			var last uint64
			for i := range 20 {
				hs := p.store(2)
				if i%3 == 2 {
					p.publish(proto.Event{Kind: proto.BlockRemoved, BlockHashes: hs[:1], Medium: "GPU"})
				}
				last = p.publish()
			}
			waitSeq(t, sink, w1, last)
			want := p.truth()
			if st.Digest {
				folded := map[proto.EngineHash]bool{}
				for h := range want {
					folded[prototest.Folded(h)] = true
				}
				want = folded
			}
			if got := sink.cacheOf(w1); !sameSet(got, want) {
				t.Fatalf("sink holds %d blocks, publisher %d", len(got), len(want))
			}
			if r := sink.resets(w1); !slices.Equal(r, []string{ReasonStart}) {
				t.Fatalf("resets %v, want only start", r)
			}
			if sink.model[w1] != "m1" {
				t.Fatalf("model %q", sink.model[w1])
			}
		})
	}
}

func TestGapReplayRecoversExactly(t *testing.T) {
	p := newTestPub(t, true, 100, prototest.Style{MapEvents: true})
	sink := newRecSink()
	reg := prometheus.NewRegistry()
	m := startManager(t, sink, reg, cfgFor(p))
	checkFor(t, wait, "subscription", p.subscribed)
	p.store(1)
	waitSeq(t, sink, w1, 0)
	p.dropNext(3)
	p.store(2) // seq 1..3 kept in the ring, never sent
	p.publish(proto.Event{Kind: proto.BlockRemoved, BlockHashes: []proto.EngineHash{1 << 63}, Medium: "GPU"})
	p.store(1)
	last := p.store(1) // seq 4, live: reveals the gap
	_ = last
	waitSeq(t, sink, w1, 4)
	if got, want := sink.cacheOf(w1), p.truth(); !sameSet(got, want) {
		t.Fatalf("after replay sink holds %v, publisher %v", got, want)
	}
	wantLog := []string{"reset:start", "apply:0", "apply:1", "apply:2", "apply:3", "apply:4"}
	if got := sink.logOf(w1); !slices.Equal(got, wantLog) {
		t.Fatalf("log %v, want %v", got, wantLog)
	}
	st := stateOf(m, w1)
	if st.Gaps != 1 || st.Replays != 1 || st.ReplayedBatches != 3 || st.Resets != 1 || st.LastSeq != 4 || !st.Connected {
		t.Fatalf("state %+v", st)
	}
	if v := testutil.ToFloat64(m.opts.Metrics.gaps.WithLabelValues(w1.String())); v != 1 {
		t.Fatalf("gaps metric %v", v)
	}
	if v := testutil.ToFloat64(m.opts.Metrics.replays.WithLabelValues(w1.String(), "ok")); v != 1 {
		t.Fatalf("replays{ok} metric %v", v)
	}
	if n, err := testutil.GatherAndCount(reg, "kvroute_events_events_total"); err != nil || n != 3 {
		t.Fatalf("events_total series %d, %v", n, err)
	}
}

func TestGapWithoutReplayResets(t *testing.T) {
	p := newTestPub(t, false, 100, prototest.Style{})
	sink := newRecSink()
	startManager(t, sink, nil, cfgFor(p))
	checkFor(t, wait, "subscription", p.subscribed)
	old := p.store(1)
	waitSeq(t, sink, w1, 0)
	p.dropNext(2)
	p.store(1)
	p.store(1)
	fresh := p.store(1)
	waitSeq(t, sink, w1, 3)
	want := []string{"reset:start", "apply:0", "reset:gap", "apply:3"}
	if got := sink.logOf(w1); !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
	got := sink.cacheOf(w1)
	if got[old[0]] || !got[fresh[0]] || len(got) != 1 {
		t.Fatalf("after reset the sink holds %v, want only the block stored after the gap", got)
	}
}

func TestGapBeyondReplayBufferResets(t *testing.T) {
	p := newTestPub(t, true, 3, prototest.Style{})
	sink := newRecSink()
	m := startManager(t, sink, nil, cfgFor(p))
	checkFor(t, wait, "subscription", p.subscribed)
	p.store(1)
	waitSeq(t, sink, w1, 0)
	p.dropNext(6) // seq 1..6; the ring keeps only 4..6 (and then 5..7 when 7 is sent)
	for range 6 {
		p.store(1)
	}
	p.store(1) // seq 7
	waitSeq(t, sink, w1, 7)
	want := []string{"reset:start", "apply:0", "reset:gap", "apply:5", "apply:6", "apply:7"}
	if got := sink.logOf(w1); !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
	if v := testutil.ToFloat64(m.opts.Metrics.replays.WithLabelValues(w1.String(), "partial")); v != 1 {
		t.Fatalf("replays{partial} = %v", v)
	}
}

func TestSequenceRestartResets(t *testing.T) {
	p := newTestPub(t, true, 100, prototest.Style{})
	sink := newRecSink()
	startManager(t, sink, nil, cfgFor(p))
	checkFor(t, wait, "subscription", p.subscribed)
	for range 5 {
		p.store(1)
	}
	waitSeq(t, sink, w1, 4)
	p.restart()
	p.store(1) // seq 0 again
	p.store(1)
	waitSeq(t, sink, w1, 1)
	want := []string{"reset:start", "apply:0", "apply:1", "apply:2", "apply:3", "apply:4", "reset:restart", "apply:0", "apply:1"}
	if got := sink.logOf(w1); !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
	if got, want := sink.cacheOf(w1), p.truth(); !sameSet(got, want) {
		t.Fatalf("sink %v, publisher %v", got, want)
	}
}

// TestRestartMissedWhileDown: the engine restarts and publishes a few batches while the
// router is disconnected; on reconnect the lower seq reveals the restart and the new
// engine's first batches come back by replay.
func TestRestartMissedWhileDown(t *testing.T) {
	p := newTestPub(t, true, 100, prototest.Style{})
	sink := newRecSink()
	startManager(t, sink, nil, cfgFor(p))
	checkFor(t, wait, "subscription", p.subscribed)
	for range 10 {
		p.store(1)
	}
	waitSeq(t, sink, w1, 9)
	p.down()
	p.restart()
	p.store(1) // seq 0, 1 while down: only in the ring
	p.store(1)
	p.up()
	checkFor(t, wait, "resubscription", p.subscribed)
	p.store(1) // seq 2
	waitSeq(t, sink, w1, 2)
	log := sink.logOf(w1)
	tail := log[len(log)-4:]
	if want := []string{"reset:restart", "apply:0", "apply:1", "apply:2"}; !slices.Equal(tail, want) {
		t.Fatalf("log ends %v, want %v", tail, want)
	}
	if got, want := sink.cacheOf(w1), p.truth(); !sameSet(got, want) {
		t.Fatalf("sink %v, publisher %v", got, want)
	}
}

func TestReconnectAfterPublisherDown(t *testing.T) {
	p := newTestPub(t, true, 100, prototest.Style{})
	sink := newRecSink()
	m := startManager(t, sink, nil, cfgFor(p))
	checkFor(t, wait, "subscription", p.subscribed)
	p.store(1)
	waitSeq(t, sink, w1, 0)
	p.down()
	checkFor(t, wait, "disconnect noticed", func() bool { return !stateOf(m, w1).Connected })
	p.store(1) // seq 1, 2 published while nobody listens: kept in the ring
	p.store(1)
	p.up()
	checkFor(t, wait, "reconnect", func() bool { return stateOf(m, w1).Connected && p.subscribed() })
	p.store(1) // seq 3 reveals the gap 1..2, replayed
	waitSeq(t, sink, w1, 3)
	want := []string{"reset:start", "apply:0", "apply:1", "apply:2", "apply:3"}
	if got := sink.logOf(w1); !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
	if st := stateOf(m, w1); st.Reconnects == 0 || !st.DownSince.IsZero() {
		t.Fatalf("state after reconnect %+v", st)
	}
}

func TestDeadWorkerPurged(t *testing.T) {
	p := newTestPub(t, true, 100, prototest.Style{})
	sink := newRecSink()
	m, err := NewManager(Options{Sink: sink, BackoffMin: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond,
		DeadAfter: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Add(cfgFor(p)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = m.Run(ctx) }()
	checkFor(t, wait, "subscription", p.subscribed)
	p.store(3)
	waitSeq(t, sink, w1, 0)
	p.down()
	checkFor(t, wait, "dead purge", func() bool { return slices.Contains(sink.resets(w1), ReasonDead) })
	if got := sink.cacheOf(w1); len(got) != 0 {
		t.Fatalf("dead worker still holds %v", got)
	}
	if n := strings.Count(strings.Join(sink.resets(w1), ","), ReasonDead); n != 1 {
		t.Fatalf("dead reset %d times, want once", n)
	}
	// When it comes back, the ring is replayed from 0: the index is whole again.
	p.up()
	checkFor(t, wait, "resubscription", p.subscribed)
	p.store(1)
	waitSeq(t, sink, w1, 1)
	if got, want := sink.cacheOf(w1), p.truth(); !sameSet(got, want) {
		t.Fatalf("after return sink %v, publisher %v", got, want)
	}
}

// TestJoinMidStream: kvroute starts after the engine has published; the ring is
// replayed from 0 so the index holds what the engine buffered.
func TestJoinMidStream(t *testing.T) {
	p := newTestPub(t, true, 100, prototest.Style{})
	for range 5 {
		p.store(1)
	}
	sink := newRecSink()
	startManager(t, sink, nil, cfgFor(p))
	checkFor(t, wait, "subscription", p.subscribed)
	p.store(1)
	waitSeq(t, sink, w1, 5)
	want := []string{"reset:start", "apply:0", "apply:1", "apply:2", "apply:3", "apply:4", "apply:5"}
	if got := sink.logOf(w1); !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
}

func TestManagerAddRemoveAndDPRanks(t *testing.T) {
	p := newTestPub(t, true, 100, prototest.Style{})
	// Rank 1 publishes on the rank-0 ports + 1, as vLLM does.
	var p1 *testPub
	for range 20 {
		p1 = tryTestPubAt(t, p.pubPort+1, p.repPort+1)
		if p1 != nil {
			break
		}
		p.down()
		p = newTestPub(t, true, 100, prototest.Style{})
	}
	if p1 == nil {
		t.Fatal("could not bind consecutive ports for two DP ranks")
	}
	sink := newRecSink()
	m := startManager(t, sink, nil)
	cfg := cfgFor(p)
	cfg.DPRanks = 2
	if err := m.Add(cfg); err != nil {
		t.Fatal(err)
	}
	checkFor(t, wait, "subscriptions", func() bool { return p.subscribed() && p1.subscribed() })
	p.store(1)
	p1.store(2)
	p1.store(1)
	r1 := WorkerKey{Worker: w1.Worker, DPRank: 1}
	waitSeq(t, sink, w1, 0)
	waitSeq(t, sink, r1, 1)
	if len(sink.cacheOf(w1)) != 1 || len(sink.cacheOf(r1)) != 3 {
		t.Fatalf("rank 0 holds %d, rank 1 holds %d", len(sink.cacheOf(w1)), len(sink.cacheOf(r1)))
	}
	if n := len(m.States()); n != 2 {
		t.Fatalf("%d states, want 2", n)
	}
	m.Remove(w1.Worker)
	for _, k := range []WorkerKey{w1, r1} {
		if r := sink.resets(k); r[len(r)-1] != ReasonRemoved {
			t.Fatalf("%v resets %v, want removed last", k, r)
		}
	}
	if n := len(m.States()); n != 0 {
		t.Fatalf("%d states after remove", n)
	}
	// Publishing after removal reaches nobody.
	before := len(sink.logOf(w1))
	p.store(1)
	if err := m.Set([]WorkerConfig{{Worker: "other", Endpoint: p.endpoint()}}); err != nil {
		t.Fatal(err)
	}
	if len(sink.logOf(w1)) != before {
		t.Fatal("removed worker still applied")
	}
}

func tryTestPubAt(t *testing.T, pubPort, repPort int) *testPub {
	for _, port := range []int{pubPort, repPort} {
		if !portFree(port) {
			return nil
		}
	}
	p := &testPub{t: t, ringCap: 100, cache: map[proto.EngineHash]bool{}, next: 1 << 62, pubPort: pubPort, repPort: repPort}
	p.up()
	t.Cleanup(p.down)
	return p
}

func TestValidate(t *testing.T) {
	bad := []WorkerConfig{
		{Endpoint: "tcp://h:1"},
		{Worker: "w", Endpoint: "tcp://*:5557"},
		{Worker: "w", Endpoint: "ipc:///tmp/x"},
		{Worker: "w", Endpoint: "tcp://h:x"},
		{Worker: "w", Endpoint: "tcp://h:1", ReplayEndpoint: "h:2"},
		{Worker: "w", Endpoint: "tcp://h:65535", DPRanks: -1},
	}
	for _, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
	if ep, err := rankEndpoint("tcp://[::1]:5557", 3); err != nil || ep != "tcp://[::1]:5560" {
		t.Fatalf("rank endpoint %q %v", ep, err)
	}
}
