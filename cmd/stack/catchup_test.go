package stack

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// A router started next to a warm, idle engine routes that engine's cached prompt back to
// it within 2 s of being ready, with no new traffic to the engines: the event feed asks
// the replay socket for seq 0 onward as soon as it connects (kvevents catch-up), instead
// of waiting for the engine's next batch, which an idle engine never sends.
//
// Deterministic: three workers and only the middle one warm; the router's index must
// hold the whole prompt as confirmed on it (polled, bounded by the 2 s) before the one
// request under test is sent, and the warm engine's event sequence must not have moved,
// so what the router knows came from the replay. A cold router picks among the three
// idle workers at random; with the catch-up the prompt's four blocks decide.
func TestRouterStartedNextToIdleWarmEngine(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fc := sim.DefaultFleetConfig()
	fc.Workers, fc.Worker.Model = 3, "m"
	fc.Worker.BlockSize = itBlockSize
	fleet, err := sim.StartFleet(ctx, fc)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fleet.Close() }()
	warm := fleet.Workers()[1]
	client := &http.Client{Timeout: 30 * time.Second}

	// Warm-up straight to the engine, before any router exists; then it idles.
	o := newBlockOracle(fleet, 21)
	toks := o.prompt(4)
	complete(t, client, warm.URL(), toks)
	for range 3 {
		complete(t, client, warm.URL(), o.prompt(2))
	}
	own := proto.HashBlocks(nil, proto.Seed("m", "", ""), toks, itBlockSize)
	// A batch gets its seq when the engine makes it and goes out on the PUB socket a
	// moment later: wait until the last one is out, or a router started now can receive
	// it live (a fresh-clone CI run saw 3 replayed batches and the 4th live).
	poll.CheckFor(t, 10*time.Second, "the warm-up's event batches sent", func() bool {
		s := warm.Stats()
		return s.EventBatchesSent+s.EventBatchesDropped == s.NextSeq
	})
	seqBefore := warm.Stats().NextSeq
	if seqBefore == 0 {
		t.Fatal("the warm-up published no event batch")
	}

	cfg := configs.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Timeouts.Shutdown = 30 * time.Second
	cfg.Tokenize.Timeout = 10 * time.Second
	for _, info := range fleet.Infos() {
		cfg.Workers = append(cfg.Workers, configs.Worker{ID: info.ID, URL: info.URL, Events: info.Events, Replay: info.Replay, MaxConns: 64})
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	st, err := NewStack(&cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(ctx)
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- st.Run(rctx, ln, func() { close(ready) }) }()
	<-ready
	readyAt := time.Now()
	defer func() {
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
		client.CloseIdleConnections()
		rcancel()
		if err := <-done; err != nil {
			t.Errorf("router: %v", err)
		}
	}()

	confirmed := func() int {
		for _, m := range st.Index.Match(own, nil) {
			if m.Worker.ID == warm.ID() {
				return m.Confirmed
			}
		}
		return 0
	}
	poll.CheckFor(t, 2*time.Second, "the idle engine's cached prompt indexed", func() bool { return confirmed() == len(own) })
	if n := warm.Stats().NextSeq; n != seqBefore {
		t.Fatalf("the warm engine published %d batches after the warm-up: the test must not need them", n-seqBefore)
	}
	if fs := feedState(t, st, warm.ID()); fs.ReplayedBatches == 0 || fs.Batches != fs.ReplayedBatches {
		t.Fatalf("feed state %+v: want every batch from the replay", fs)
	}
	got := complete(t, client, "http://"+ln.Addr().String(), toks)
	took := time.Since(readyAt)
	if got != warm.ID() {
		t.Fatalf("the cached prompt was routed to %q, want the warm worker %q", got, warm.ID())
	}
	if took > 2*time.Second {
		t.Fatalf("routed back to the warm worker %v after the router was ready, want within 2s", took)
	}
	t.Logf("routed back to the warm worker %v after the router was ready", took.Round(time.Millisecond))
}
