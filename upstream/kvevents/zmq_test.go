package kvevents_test

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
	"github.com/kvroute/kvroute/proto/prototest/poll"
	. "github.com/kvroute/kvroute/upstream/kvevents"
	"github.com/kvroute/kvroute/upstream/kvevents/kvtest"
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

func cfgFor(p *kvtest.Pub) WorkerConfig {
	return WorkerConfig{Worker: "http://w1:8000", Model: "m1", Endpoint: p.Endpoint(), ReplayEndpoint: p.ReplayEndpoint()}
}

var w1 = proto.WorkerKey{ID: "http://w1:8000"}

// waitSeq waits until the sink has applied seq as the worker's latest batch.
func waitSeq(t *testing.T, s *kvtest.Recorder, w proto.WorkerKey, seq uint64) {
	t.Helper()
	poll.CheckFor(t, wait, "seq applied", func() bool {
		got, ok := s.LastSeq(w)
		return ok && got == seq
	})
}

// caughtUp waits until the worker's feed is subscribed and its catch-up replay at connect
// is over, so that what the test publishes next comes live, in a known order.
func caughtUp(t *testing.T, m *Manager, p interface{ Subscribed() bool }, w proto.WorkerKey) {
	t.Helper()
	poll.CheckFor(t, wait, "subscription", p.Subscribed)
	poll.CheckFor(t, wait, "catch-up replay over", func() bool { return stateOf(m, w).Replays >= 1 })
}

func stateOf(m *Manager, w proto.WorkerKey) WorkerState {
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
			p := kvtest.NewPub(t, true, 100, st)
			sink := kvtest.NewRecorder()
			startManager(t, sink, nil, cfgFor(p))
			poll.CheckFor(t, wait, "subscription", p.Subscribed)
			var last uint64
			for i := range 20 {
				hs := p.Store(2)
				if i%3 == 2 {
					p.Publish(proto.Event{Kind: proto.BlockRemoved, BlockHashes: hs[:1], Medium: "GPU"})
				}
				last = p.Publish()
			}
			waitSeq(t, sink, w1, last)
			want := p.Truth()
			if st.Digest {
				folded := map[proto.EngineHash]bool{}
				for h := range want {
					folded[prototest.Folded(h)] = true
				}
				want = folded
			}
			if got := sink.Cache(w1); !kvtest.SameSet(got, want) {
				t.Fatalf("sink holds %d blocks, publisher %d", len(got), len(want))
			}
			if r := sink.Resets(w1); !slices.Equal(r, []string{ReasonStart}) {
				t.Fatalf("resets %v, want only start", r)
			}
			if sink.Model(w1) != "m1" {
				t.Fatalf("model %q", sink.Model(w1))
			}
		})
	}
}

func TestGapReplayRecoversExactly(t *testing.T) {
	p := kvtest.NewPub(t, true, 100, prototest.Style{MapEvents: true})
	sink := kvtest.NewRecorder()
	reg := prometheus.NewRegistry()
	m := startManager(t, sink, reg, cfgFor(p))
	caughtUp(t, m, p, w1) // an empty buffer: nothing applied
	p.Store(1)
	waitSeq(t, sink, w1, 0)
	p.DropNext(3)
	p.Store(2) // seq 1..3 kept in the ring, never sent
	p.Publish(proto.Event{Kind: proto.BlockRemoved, BlockHashes: []proto.EngineHash{1 << 63}, Medium: "GPU"})
	p.Store(1)
	last := p.Store(1) // seq 4, live: reveals the gap
	_ = last
	waitSeq(t, sink, w1, 4)
	if got, want := sink.Cache(w1), p.Truth(); !kvtest.SameSet(got, want) {
		t.Fatalf("after replay sink holds %v, publisher %v; state %+v", got, want, stateOf(m, w1))
	}
	wantLog := []string{"reset:start", "apply:0", "apply:1", "apply:2", "apply:3", "apply:4"}
	if got := sink.Log(w1); !slices.Equal(got, wantLog) {
		t.Fatalf("log %v, want %v", got, wantLog)
	}
	st := stateOf(m, w1)
	if st.Gaps != 1 || st.Replays != 2 || st.ReplayedBatches != 3 || st.Resets != 1 || st.LastSeq != 4 || !st.Connected {
		t.Fatalf("state %+v", st)
	}
	if v := metricValue(t, reg, "kvroute_events_gaps_total", w1.String(), ""); v != 1 {
		t.Fatalf("gaps metric %v", v)
	}
	if v := metricValue(t, reg, "kvroute_events_replays_total", w1.String(), "ok"); v != 2 {
		t.Fatalf("replays{ok} metric %v", v)
	}
	if n, err := testutil.GatherAndCount(reg, "kvroute_events_events_total"); err != nil || n != 3 {
		t.Fatalf("events_total series %d, %v", n, err)
	}
}

func TestGapWithoutReplayResets(t *testing.T) {
	p := kvtest.NewPub(t, false, 100, prototest.Style{})
	sink := kvtest.NewRecorder()
	startManager(t, sink, nil, cfgFor(p))
	poll.CheckFor(t, wait, "subscription", p.Subscribed)
	old := p.Store(1)
	waitSeq(t, sink, w1, 0)
	p.DropNext(2)
	p.Store(1)
	p.Store(1)
	fresh := p.Store(1)
	waitSeq(t, sink, w1, 3)
	want := []string{"reset:start", "apply:0", "reset:gap", "apply:3"}
	if got := sink.Log(w1); !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
	got := sink.Cache(w1)
	if got[old[0]] || !got[fresh[0]] || len(got) != 1 {
		t.Fatalf("after reset the sink holds %v, want only the block stored after the gap", got)
	}
}

func TestGapBeyondReplayBufferResets(t *testing.T) {
	p := kvtest.NewPub(t, true, 3, prototest.Style{})
	sink := kvtest.NewRecorder()
	reg := prometheus.NewRegistry()
	startManager(t, sink, reg, cfgFor(p))
	poll.CheckFor(t, wait, "subscription", p.Subscribed)
	p.Store(1)
	waitSeq(t, sink, w1, 0)
	p.DropNext(6) // seq 1..6; the ring keeps only 4..6 (and then 5..7 when 7 is sent)
	for range 6 {
		p.Store(1)
	}
	p.Store(1) // seq 7
	waitSeq(t, sink, w1, 7)
	want := []string{"reset:start", "apply:0", "reset:gap", "apply:5", "apply:6", "apply:7"}
	if got := sink.Log(w1); !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
	if v := metricValue(t, reg, "kvroute_events_replays_total", w1.String(), "partial"); v != 1 {
		t.Fatalf("replays{partial} = %v", v)
	}
}

func TestSequenceRestartResets(t *testing.T) {
	p := kvtest.NewPub(t, true, 100, prototest.Style{})
	sink := kvtest.NewRecorder()
	startManager(t, sink, nil, cfgFor(p))
	poll.CheckFor(t, wait, "subscription", p.Subscribed)
	for range 5 {
		p.Store(1)
	}
	waitSeq(t, sink, w1, 4)
	p.Restart()
	p.Store(1) // seq 0 again
	p.Store(1)
	waitSeq(t, sink, w1, 1)
	want := []string{"reset:start", "apply:0", "apply:1", "apply:2", "apply:3", "apply:4", "reset:restart", "apply:0", "apply:1"}
	if got := sink.Log(w1); !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
	if got, want := sink.Cache(w1), p.Truth(); !kvtest.SameSet(got, want) {
		t.Fatalf("sink %v, publisher %v", got, want)
	}
}

// TestRestartMissedWhileDown: the engine restarts and publishes a few batches while the
// router is disconnected; on reconnect the lower seq reveals the restart and the new
// engine's first batches come back by replay.
func TestRestartMissedWhileDown(t *testing.T) {
	p := kvtest.NewPub(t, true, 100, prototest.Style{})
	sink := kvtest.NewRecorder()
	startManager(t, sink, nil, cfgFor(p))
	poll.CheckFor(t, wait, "subscription", p.Subscribed)
	for range 10 {
		p.Store(1)
	}
	waitSeq(t, sink, w1, 9)
	p.Down()
	p.Restart()
	p.Store(1) // seq 0, 1 while down: only in the ring
	p.Store(1)
	p.Up()
	poll.CheckFor(t, wait, "resubscription", p.Subscribed)
	p.Store(1) // seq 2
	waitSeq(t, sink, w1, 2)
	log := sink.Log(w1)
	tail := log[len(log)-4:]
	if want := []string{"reset:restart", "apply:0", "apply:1", "apply:2"}; !slices.Equal(tail, want) {
		t.Fatalf("log ends %v, want %v", tail, want)
	}
	if got, want := sink.Cache(w1), p.Truth(); !kvtest.SameSet(got, want) {
		t.Fatalf("sink %v, publisher %v", got, want)
	}
}

func TestReconnectAfterPublisherDown(t *testing.T) {
	p := kvtest.NewPub(t, true, 100, prototest.Style{})
	sink := kvtest.NewRecorder()
	m := startManager(t, sink, nil, cfgFor(p))
	poll.CheckFor(t, wait, "subscription", p.Subscribed)
	p.Store(1)
	waitSeq(t, sink, w1, 0)
	p.Down()
	poll.CheckFor(t, wait, "disconnect noticed", func() bool { return !stateOf(m, w1).Connected })
	p.Store(1) // seq 1, 2 published while nobody listens: kept in the ring
	p.Store(1)
	p.Up()
	poll.CheckFor(t, wait, "reconnect", func() bool { return stateOf(m, w1).Connected && p.Subscribed() })
	p.Store(1) // seq 3 reveals the gap 1..2, replayed
	waitSeq(t, sink, w1, 3)
	want := []string{"reset:start", "apply:0", "apply:1", "apply:2", "apply:3"}
	if got := sink.Log(w1); !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
	if st := stateOf(m, w1); st.Reconnects == 0 || !st.DownSince.IsZero() {
		t.Fatalf("state after reconnect %+v", st)
	}
}

func TestDeadWorkerPurged(t *testing.T) {
	p := kvtest.NewPub(t, true, 100, prototest.Style{})
	sink := kvtest.NewRecorder()
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
	poll.CheckFor(t, wait, "subscription", p.Subscribed)
	p.Store(3)
	waitSeq(t, sink, w1, 0)
	p.Down()
	poll.CheckFor(t, wait, "dead purge", func() bool { return slices.Contains(sink.Resets(w1), ReasonDead) })
	if got := sink.Cache(w1); len(got) != 0 {
		t.Fatalf("dead worker still holds %v", got)
	}
	if n := strings.Count(strings.Join(sink.Resets(w1), ","), ReasonDead); n != 1 {
		t.Fatalf("dead reset %d times, want once", n)
	}
	// When it comes back, the ring is replayed from 0: the index is whole again.
	p.Up()
	poll.CheckFor(t, wait, "resubscription", p.Subscribed)
	p.Store(1)
	waitSeq(t, sink, w1, 1)
	if got, want := sink.Cache(w1), p.Truth(); !kvtest.SameSet(got, want) {
		t.Fatalf("after return sink %v, publisher %v", got, want)
	}
}

// TestJoinMidStream: kvroute starts after the engine has published; the ring is
// replayed from 0 so the index holds what the engine buffered.
func TestJoinMidStream(t *testing.T) {
	p := kvtest.NewPub(t, true, 100, prototest.Style{})
	for range 5 {
		p.Store(1)
	}
	sink := kvtest.NewRecorder()
	startManager(t, sink, nil, cfgFor(p))
	poll.CheckFor(t, wait, "subscription", p.Subscribed)
	p.Store(1)
	waitSeq(t, sink, w1, 5)
	want := []string{"reset:start", "apply:0", "apply:1", "apply:2", "apply:3", "apply:4", "apply:5"}
	if got := sink.Log(w1); !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
}

func TestManagerAddRemoveAndDPRanks(t *testing.T) {
	p := kvtest.NewPub(t, true, 100, prototest.Style{})
	// Rank 1 publishes on the rank-0 ports + 1, as vLLM does.
	var p1 *kvtest.Pub
	for range 20 {
		pp, rp := p.Ports()
		if kvtest.PortFree(pp+1) && kvtest.PortFree(rp+1) {
			p1 = kvtest.NewPubAt(t, pp+1, rp+1, 100, prototest.Style{})
		}
		if p1 != nil {
			break
		}
		p.Down()
		p = kvtest.NewPub(t, true, 100, prototest.Style{})
	}
	if p1 == nil {
		t.Fatal("could not bind consecutive ports for two DP ranks")
	}
	sink := kvtest.NewRecorder()
	m := startManager(t, sink, nil)
	cfg := cfgFor(p)
	cfg.DPRanks = 2
	if err := m.Add(cfg); err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, wait, "subscriptions", func() bool { return p.Subscribed() && p1.Subscribed() })
	p.Store(1)
	p1.Store(2)
	p1.Store(1)
	r1 := proto.WorkerKey{ID: w1.ID, DPRank: 1}
	waitSeq(t, sink, w1, 0)
	waitSeq(t, sink, r1, 1)
	if len(sink.Cache(w1)) != 1 || len(sink.Cache(r1)) != 3 {
		t.Fatalf("rank 0 holds %d, rank 1 holds %d", len(sink.Cache(w1)), len(sink.Cache(r1)))
	}
	if n := len(m.States()); n != 2 {
		t.Fatalf("%d states, want 2", n)
	}
	m.Remove(w1.ID)
	for _, k := range []proto.WorkerKey{w1, r1} {
		if r := sink.Resets(k); r[len(r)-1] != ReasonRemoved {
			t.Fatalf("%v resets %v, want removed last", k, r)
		}
	}
	if n := len(m.States()); n != 0 {
		t.Fatalf("%d states after remove", n)
	}
	// Publishing after removal reaches nobody.
	before := len(sink.Log(w1))
	p.Store(1)
	if err := m.Set([]WorkerConfig{{Worker: "other", Endpoint: p.Endpoint()}}); err != nil {
		t.Fatal(err)
	}
	if len(sink.Log(w1)) != before {
		t.Fatal("removed worker still applied")
	}
}

func TestValidate(t *testing.T) {
	bad := []WorkerConfig{
		{Endpoint: "tcp://h:1"},
		{Worker: "w", Endpoint: "tcp://*:5557"},
		{Worker: "w", Endpoint: "ipc:///tmp/x"},
		{Worker: "w", Endpoint: "tcp://h:x"},
		{Worker: "w", Endpoint: "tcp://h:1", ReplayEndpoint: "h:2"},
		{Worker: "w", Endpoint: "tcp://h:65535", DPRanks: -1},
		{Worker: "w", Endpoint: "tcp://h:65535", DPRanks: 2},
		{Worker: "w", Endpoint: "tcp://h:5557", ReplayEndpoint: "tcp://h:65535", DPRanks: 2},
	}
	for _, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
	if err := (WorkerConfig{Worker: "w", Endpoint: "tcp://h:65534", ReplayEndpoint: "tcp://h:65533", DPRanks: 2}).Validate(); err != nil {
		t.Errorf("last rank on port 65535: %v", err)
	}
}

// metricValue returns the value of the series of name whose worker label is worker and,
// when second is not empty, whose other label is second.
func metricValue(t *testing.T, reg *prometheus.Registry, name, worker, second string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "worker" && l.GetValue() != worker || l.GetName() != "worker" && second != "" && l.GetValue() != second {
					continue series
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// TestMalformedBatchSkipped: a batch that does not decode, in sequence, is skipped and
// counted; the worker's entries from earlier batches stay (issue #15: it used to reset
// the worker and clear them all), and the stream goes on.
func TestMalformedBatchSkipped(t *testing.T) {
	p := kvtest.NewPub(t, true, 100, prototest.Style{})
	sink := kvtest.NewRecorder()
	reg := prometheus.NewRegistry()
	m := startManager(t, sink, reg, cfgFor(p))
	// Caught up before the bad batch is published, else the catch-up may meet it too.
	caughtUp(t, m, p, w1)
	p.Store(2)                          // seq 0
	p.PublishRaw([]byte{0xc1, 0xff, 0}) // seq 1: 0xc1 is never used in msgpack
	p.Store(1)                          // seq 2
	waitSeq(t, sink, w1, 2)
	want := []string{"reset:start", "apply:0", "apply:2"}
	if got := sink.Log(w1); !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
	if got, want := sink.Cache(w1), p.Truth(); !kvtest.SameSet(got, want) {
		t.Fatalf("sink holds %v, publisher %v: the malformed batch cost the earlier entries", got, want)
	}
	if v := metricValue(t, reg, "kvroute_events_dropped_messages_total", w1.String(), DropMalformed); v != 1 {
		t.Fatalf("dropped{malformed} = %v, want 1", v)
	}
	if st := stateOf(m, w1); st.DecodeErrors != 1 || st.Resets != 1 || st.Gaps != 0 || st.LastError == "" {
		t.Fatalf("state %+v", st)
	}
	// After the skip, a real gap is still found and replayed.
	p.DropNext(1)
	p.Store(1) // seq 3: only in the ring
	p.Store(1) // seq 4
	waitSeq(t, sink, w1, 4)
	if got := sink.Log(w1); !slices.Equal(got, append(want, "apply:3", "apply:4")) {
		t.Fatalf("log %v", got)
	}
}
