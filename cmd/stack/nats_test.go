package stack

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/upstream/kvevents"
	"github.com/kvroute/kvroute/upstream/kvevents/natsbus"
)

// gpuBlocks returns how many confirmed GPU blocks the index holds for worker id.
func gpuBlocks(ix *indexer.Index, id string) int64 {
	for _, w := range ix.Stats().Workers {
		if w.Worker.ID == id {
			return w.Blocks[indexer.TierGPU]
		}
	}
	return 0
}

// Workers' events reach the router through a bridge and NATS JetStream; a router
// restarted with the same durable consumer catches up on the events it missed.
func TestStackConsumesNATSAndCatchesUpAfterRestart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fc := sim.DefaultFleetConfig()
	fc.Workers, fc.Worker.Model = 2, "m"
	natsURL, fleet := startBridgedFleet(t, ctx, fc)

	startRouter := func() (*Stack, string, func()) {
		cfg := configs.Default()
		cfg.Listen = "127.0.0.1:0"
		cfg.Timeouts.Shutdown = 15 * time.Second
		cfg.Events.Source = "nats"
		cfg.Events.NATS = configs.NATSEvents{URL: natsURL, JetStream: true, Durable: "router-a", SubjectPrefix: natsbus.DefaultPrefix}
		for _, info := range fleet.Infos() {
			cfg.Workers = append(cfg.Workers, configs.Worker{ID: info.ID, URL: info.URL, MaxConns: 64})
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
		<-st.NATS.Ready()
		return st, "http://" + ln.Addr().String(), func() {
			rcancel()
			if err := <-done; err != nil {
				t.Errorf("router: %v", err)
			}
		}
	}

	st1, url, stop1 := startRouter()
	client := &http.Client{Timeout: 30 * time.Second}
	rng := rand.New(rand.NewPCG(3, 3))
	r := chatOnce(client, url, []chatMsg{{Role: "user", Content: someWords(rng, 200)}}, 4)
	if r.err != nil {
		t.Fatal(r.err)
	}
	poll.CheckFor(t, 10*time.Second, "router 1 indexed "+r.worker+"'s blocks from NATS", func() bool { return gpuBlocks(st1.Index, r.worker) > 0 })
	stop1()

	// While no router runs, the other worker caches a new prompt.
	other := fleet.Workers()[0]
	if other.ID() == r.worker {
		other = fleet.Workers()[1]
	}
	if d := chatOnce(client, other.URL(), []chatMsg{{Role: "user", Content: someWords(rng, 300)}}, 4); d.err != nil {
		t.Fatal(d.err)
	}
	st2, _, stop2 := startRouter()
	defer stop2()
	poll.CheckFor(t, 10*time.Second, "restarted router replayed "+other.ID()+"'s missed events", func() bool { return gpuBlocks(st2.Index, other.ID()) > 0 })
	// The durable consumer resumed after what router 1 acknowledged: the first worker's
	// earlier blocks are not delivered again.
	if n := gpuBlocks(st2.Index, r.worker); n != 0 {
		t.Errorf("restarted router re-read %d blocks router 1 had already consumed", n)
	}
}

// startBridgedFleet starts an embedded NATS server with the bridges' JetStream stream, a
// kvsim fleet of model "m", and a bridge (a kvevents.Manager publishing every worker's
// batches to NATS), and waits until the bridge follows every worker. Everything stops
// when the test ends or ctx is canceled.
func startBridgedFleet(t *testing.T, ctx context.Context, fc sim.FleetConfig) (natsURL string, fleet *sim.Fleet) {
	t.Helper()
	srv, err := natsbus.StartEmbedded(natsbus.EmbeddedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if err := natsbus.EnsureStream(ctx, nc, natsbus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if fleet, err = sim.StartFleet(ctx, fc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fleet.Close() })
	bridge, err := kvevents.NewManager(kvevents.Options{Sink: natsbus.NewPublisher(nc, natsbus.PublisherOptions{Model: "m"})})
	if err != nil {
		t.Fatal(err)
	}
	var feeds []kvevents.WorkerConfig
	for _, info := range fleet.Infos() {
		feeds = append(feeds, kvevents.WorkerConfig{Worker: info.ID, Model: "m", Endpoint: info.Events, ReplayEndpoint: info.Replay})
	}
	if err := bridge.Set(feeds); err != nil {
		t.Fatal(err)
	}
	bctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = bridge.Run(bctx); close(done) }()
	t.Cleanup(func() { stop(); <-done })
	poll.CheckFor(t, 10*time.Second, "bridge subscribed", func() bool {
		for _, w := range fleet.Workers() {
			if !w.EventsSubscribed() {
				return false
			}
		}
		return true
	})
	return srv.ClientURL(), fleet
}
