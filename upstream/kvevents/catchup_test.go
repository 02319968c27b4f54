package kvevents_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	ingest "github.com/kvroute/kvroute/upstream/kvevents"
	"github.com/kvroute/kvroute/upstream/kvevents/kvtest"
)

// TestCatchUpIdlePublisher: an engine that has published and then gone idle is known as
// soon as the feed connects, from its replay buffer alone, without a new batch.
func TestCatchUpIdlePublisher(t *testing.T) {
	p := kvtest.NewPub(t, true, 100, prototest.Style{MapEvents: true})
	hs := p.Store(3)
	p.Store(2)
	p.Publish(proto.Event{Kind: proto.BlockRemoved, BlockHashes: hs[:1], Medium: "GPU"})
	p.Store(1) // seq 3; nothing is published after this
	sink := kvtest.NewRecorder()
	reg := prometheus.NewRegistry()
	start := time.Now()
	m := startManager(t, sink, reg, cfgFor(p))
	poll.CheckFor(t, 2*time.Second, "the idle publisher's buffer applied", func() bool {
		return kvtest.SameSet(sink.Cache(w1), p.Truth())
	})
	t.Logf("idle publisher's cache known %v after the manager started", time.Since(start).Round(time.Millisecond))
	want := []string{"reset:start", "apply:0", "apply:1", "apply:2", "apply:3"}
	if got := sink.Log(w1); !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
	// The replay is counted once it is over, just after its last batch was applied.
	poll.CheckFor(t, wait, "catch-up counted", func() bool { return stateOf(m, w1).Replays >= 1 })
	st := stateOf(m, w1)
	if st.Replays != 1 || st.ReplayedBatches != 4 || st.Resets != 1 || !st.HaveSeq || st.LastSeq != 3 {
		t.Fatalf("state %+v", st)
	}
	if v := metricValue(t, reg, "kvroute_events_replays_total", w1.String(), "ok"); v != 1 {
		t.Fatalf("replays{ok} = %v, want 1", v)
	}
	// The stream goes on from there: the next live batch is in sequence. (The catch-up can
	// be over before the publisher has taken the subscription in.)
	poll.CheckFor(t, wait, "subscription", p.Subscribed)
	p.Store(1)
	waitSeq(t, sink, w1, 4)
	if got := sink.Log(w1); !slices.Equal(got, append(want, "apply:4")) {
		t.Fatalf("log %v", got)
	}
}

// TestCatchUpWithoutReplayEndpointWaits: without a replay endpoint nothing is known until
// the first live batch, which resets the worker as before.
func TestCatchUpWithoutReplayEndpointWaits(t *testing.T) {
	p := kvtest.NewPub(t, false, 100, prototest.Style{})
	p.Store(2)
	sink := kvtest.NewRecorder()
	m := startManager(t, sink, nil, cfgFor(p))
	poll.CheckFor(t, wait, "subscription", p.Subscribed)
	poll.CheckFor(t, wait, "connected", func() bool { return stateOf(m, w1).Connected })
	if got := sink.Log(w1); len(got) != 0 {
		t.Fatalf("log %v before any live batch, want nothing", got)
	}
	p.Store(1)
	waitSeq(t, sink, w1, 1)
	if got, want := sink.Log(w1), []string{"reset:start", "apply:1"}; !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
	if st := stateOf(m, w1); st.Replays != 0 {
		t.Fatalf("%d replays without a replay endpoint", st.Replays)
	}
}

// TestCatchUpRacingLiveBatches: the publisher keeps publishing while the feed connects
// and catches up, so batches arrive through the replay, live, or both. Whatever the
// interleaving, the sink sees one start reset and then every seq exactly once, in order,
// and ends with the publisher's cache. Several rounds, each with a fresh manager, vary
// the timing.
func TestCatchUpRacingLiveBatches(t *testing.T) {
	for round := range 6 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			p := kvtest.NewPub(t, true, 100000, prototest.Style{})
			for range 20 * round {
				p.Store(1)
			}
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { // publishes until told to stop
				defer wg.Done()
				for i := 0; ctx.Err() == nil; i++ {
					hs := p.Store(2)
					if i%4 == 3 {
						p.Publish(proto.Event{Kind: proto.BlockRemoved, BlockHashes: hs[:1], Medium: "GPU"})
					}
					if i%16 == 0 {
						time.Sleep(time.Millisecond) // let the subscriber breathe, not a wait for it
					}
				}
			}()
			sink := kvtest.NewRecorder()
			m := startManager(t, sink, nil, cfgFor(p))
			poll.CheckFor(t, wait, "catch-up over", func() bool { return stateOf(m, w1).Replays >= 1 })
			poll.CheckFor(t, wait, "live batches after the catch-up", func() bool {
				st := stateOf(m, w1)
				return st.Batches > st.ReplayedBatches+50
			})
			cancel()
			wg.Wait()
			last := p.Publish() // the final batch, after which the publisher is idle
			waitSeq(t, sink, w1, last)
			log := sink.Log(w1)
			want := []string{"reset:start"}
			for s := range last + 1 {
				want = append(want, fmt.Sprintf("apply:%d", s))
			}
			if !slices.Equal(log, want) {
				t.Fatalf("log has %d entries, want reset:start and apply:0..%d once each, in order; first difference at %d",
					len(log), last, firstDiff(log, want))
			}
			if got, want := sink.Cache(w1), p.Truth(); !kvtest.SameSet(got, want) {
				t.Fatalf("sink holds %d blocks, publisher %d", len(got), len(want))
			}
			st := stateOf(m, w1)
			t.Logf("%d batches: %d replayed (%d replays), %d live", last+1, st.ReplayedBatches, st.Replays, st.Batches-st.ReplayedBatches)
		})
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestCatchUpAfterDeadReset: a publisher that comes back after its worker was purged is
// known again from its buffer as soon as the feed reconnects, without a new batch.
func TestCatchUpAfterDeadReset(t *testing.T) {
	p := kvtest.NewPub(t, true, 100, prototest.Style{})
	sink := kvtest.NewRecorder()
	m, err := ingest.NewManager(ingest.Options{Sink: sink, BackoffMin: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond,
		DeadAfter: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Add(cfgFor(p)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = m.Run(ctx)
	}()
	defer func() { cancel(); <-done }()
	poll.CheckFor(t, wait, "subscription", p.Subscribed)
	p.Store(2)
	p.Store(1)
	waitSeq(t, sink, w1, 1)
	p.Down()
	poll.CheckFor(t, wait, "dead purge", func() bool { return slices.Contains(sink.Resets(w1), ingest.ReasonDead) })
	p.Up()
	poll.CheckFor(t, 2*time.Second, "cache known again without a new batch", func() bool {
		return len(sink.Cache(w1)) > 0 && kvtest.SameSet(sink.Cache(w1), p.Truth())
	})
	want := []string{"reset:start", "apply:0", "apply:1", "reset:dead", "reset:start", "apply:0", "apply:1"}
	if got := sink.Log(w1); !slices.Equal(got, want) {
		t.Fatalf("log %v, want %v", got, want)
	}
}
