package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/upstream/kvevents"
	"github.com/kvroute/kvroute/upstream/kvevents/natsbus"
)

// eventsApplied returns how many events the router's index has applied.
func eventsApplied(e *Env) uint64 {
	var n uint64
	for _, c := range e.Stack.Index.Stats().Events {
		n += c
	}
	return n
}

// The NATS server restarts (same port, same JetStream store) under load: routing never
// depends on it, so every request completes; the bridge and the router's durable
// consumer reconnect by themselves, events flow again, and the index ends equal to the
// workers' caches.
func TestNATSServerRestart(t *testing.T) {
	port, dir := freePort(t), t.TempDir()
	var mu sync.Mutex
	var srv *natsbus.Embedded
	startNATS := func() {
		s, err := natsbus.StartEmbedded(natsbus.EmbeddedOptions{Port: port, StoreDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		srv = s
		mu.Unlock()
	}
	startNATS()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		srv.Shutdown()
	})
	url := srv.ClientURL()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nc, err := nats.Connect(url, nats.Name("chaos-bridge"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if err := natsbus.EnsureStream(ctx, nc, natsbus.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	e := startEnv(t, EnvOptions{NATSURL: url})

	// The bridge: every worker's ZMQ feed republished to NATS, as `kvroute bridge` does.
	bridge, err := kvevents.NewManager(kvevents.Options{Sink: natsbus.NewPublisher(nc, natsbus.PublisherOptions{Model: Model})})
	if err != nil {
		t.Fatal(err)
	}
	var feeds []kvevents.WorkerConfig
	for _, info := range e.Fleet.Infos() {
		feeds = append(feeds, kvevents.WorkerConfig{Worker: info.ID, Model: Model, Endpoint: info.Events, ReplayEndpoint: info.Replay})
	}
	if err := bridge.Set(feeds); err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithCancel(ctx)
	bdone := make(chan struct{})
	go func() { defer close(bdone); _ = bridge.Run(bctx) }()
	t.Cleanup(func() { bcancel(); <-bdone })
	if !poll.Until(10*time.Second, func() bool {
		for _, w := range e.Fleet.Workers() {
			if !w.EventsSubscribed() {
				return false
			}
		}
		return true
	}) {
		t.Fatal("bridge not subscribed to every worker")
	}

	l := startLoad(LoadConfig{URL: e.URL, Concurrency: 6, StreamFraction: 0.5, Pause: 20 * time.Millisecond})
	if !poll.Until(10*time.Second, func() bool { return eventsApplied(e) > 20 }) {
		t.Fatalf("router applied %d events from NATS before the restart", eventsApplied(e))
	}
	mu.Lock()
	srv.Shutdown()
	mu.Unlock()
	down := phase(500*time.Millisecond, 5*time.Second)
	time.Sleep(down) // the load goes on without NATS
	startNATS()
	restarted := time.Now()
	atRestart := eventsApplied(e)
	if !poll.Until(15*time.Second, func() bool { return eventsApplied(e) > atRestart }) {
		t.Error("no event reached the router's index after the NATS restart")
	}
	resumed := time.Since(restarted)
	time.Sleep(phase(time.Second, 10*time.Second))
	tally := l.stop()
	// Batches the bridge published while the server went down are lost (core NATS); the
	// consumer sees the seq gap and resets that worker. Nothing stale may remain: the
	// index never holds more of a worker than its cache.
	if ok, why := untilExplained(15*time.Second, e.indexWithinCaches); !ok {
		t.Errorf("stale index entries after the NATS restart: %s", why)
	}
	// New prefixes are indexed again: a fresh long prompt's blocks show up.
	before := e.totalIndexed()
	client := &http.Client{}
	body := requestBody(LoadConfig{Model: Model, MaxTokens: 4}, words(rand.New(rand.NewPCG(99, 99)), 400), "fresh", false)
	if o, _, detail := Send(client, e.URL, body, false, 10*time.Second); o != Completed {
		t.Fatalf("probe request after the restart: %s (%s)", o, detail)
	}
	if !poll.Until(5*time.Second, func() bool { return e.totalIndexed() >= before+20 }) {
		t.Errorf("a fresh 400-word prompt added %d indexed blocks after the NATS restart, want >= 20", e.totalIndexed()-before)
	}
	var resets uint64
	for _, s := range e.Stack.NATS.States() {
		resets += s.Resets
	}
	var indexed, cached int
	for _, w := range e.Fleet.Workers() {
		indexed += int(e.IndexedBlocks(w.ID()))
		cached += CachedBlocks(w)
	}
	t.Logf("after the restart the index holds %d of the %d cached blocks (%d worker resets)", indexed, cached, resets)
	checkContract(t, e, fmt.Sprintf("NATS server restart (down %s, JetStream store kept)", down), tally,
		fmt.Sprintf("events flowing again %s after the restart; %d worker resets (batches lost in the outage); no stale entries; index holds %d of %d cached blocks after",
			resumed.Round(10*time.Millisecond), resets, indexed, cached))
}
