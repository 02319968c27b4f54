package stack

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/indexer/valkeyindex/valkeytest"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/router/admin"
)

// startSimFleet starts n kvsim workers serving model "m".
func startSimFleet(t *testing.T, n int) *sim.Fleet {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	fc := sim.DefaultFleetConfig()
	fc.Workers, fc.Worker.Model = n, "m"
	fleet, err := sim.StartFleet(ctx, fc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fleet.Close() })
	return fleet
}

// startValkeyRouter runs a router on every worker of fleet with index.backend valkey at
// url, reading the KV events of the workers for which events says so.
func startValkeyRouter(t *testing.T, fleet *sim.Fleet, url string, events func(i int) bool) (*Stack, string) {
	t.Helper()
	cfg := configs.Default()
	cfg.Listen, cfg.Admin.Listen = "127.0.0.1:0", ""
	cfg.Health.Interval = 100 * time.Millisecond
	cfg.Timeouts.Shutdown = 30 * time.Second
	cfg.Tokenize.Timeout = 10 * time.Second
	cfg.Index.Backend, cfg.Index.Valkey.URL = "valkey", url
	cfg.Index.Valkey.Timeout = 5 * time.Second // generous: CI machines are loaded
	for i, info := range fleet.Infos() {
		w := configs.Worker{ID: info.ID, URL: info.URL, MaxConns: 256, DPRanks: 1}
		if events(i) {
			w.Events, w.Replay = info.Events, info.Replay
		}
		cfg.Workers = append(cfg.Workers, w)
	}
	return startStackOn(t, &cfg)
}

// confirmedOn returns the blocks of msgs that st's index says worker holds confirmed.
func confirmedOn(t *testing.T, st *Stack, msgs []chatMsg, worker string) int {
	t.Helper()
	raw, _ := json.Marshal(msgs)
	a, err := st.Server.QueryIndex(context.Background(), &admin.IndexQuery{Model: "m", Messages: raw})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range a.Workers {
		if w.ID == worker {
			return w.Confirmed
		}
	}
	return 0
}

// Two routers share one Valkey, each reading the KV events of half of the fleet: each
// one's index shows as confirmed the blocks of workers whose events only the other
// one reads.
func TestValkeyRoutersShareEvents(t *testing.T) {
	srv := valkeytest.Start(t)
	fleet := startSimFleet(t, 4)
	a, urlA := startValkeyRouter(t, fleet, srv.URL(), func(i int) bool { return i < 2 })
	b, urlB := startValkeyRouter(t, fleet, srv.URL(), func(i int) bool { return i >= 2 })
	poll.CheckFor(t, 20*time.Second, "event feeds subscribed", func() bool {
		for _, w := range fleet.Workers() {
			if !w.EventsSubscribed() {
				return false
			}
		}
		return true
	})
	owner := map[string]int{} // worker id -> router reading its events (0 a, 1 b)
	for i, info := range fleet.Infos() {
		owner[info.ID] = i / 2
	}
	stacks, urls := []*Stack{a, b}, []string{urlA, urlB}
	crossed := [2]bool{} // crossed[r]: router r saw a worker of the other router confirmed
	client := &http.Client{Timeout: 60 * time.Second}
	for c := 0; c < 24 && (!crossed[0] || !crossed[1]); c++ {
		rng := rand.New(rand.NewPCG(uint64(c), 31))
		msgs := []chatMsg{{Role: "system", Content: someWords(rng, 300)}, {Role: "user", Content: someWords(rng, 20)}}
		res := chatOnce(client, urls[c%2], msgs, 4)
		if res.err != nil {
			t.Fatal(res.err)
		}
		other := 1 - owner[res.worker]
		poll.CheckFor(t, 20*time.Second, fmt.Sprintf("router %d sees %s's events (read by router %d)", other, res.worker, owner[res.worker]), func() bool {
			return confirmedOn(t, stacks[other], msgs, res.worker) > 0
		})
		crossed[other] = true
	}
	if !crossed[0] || !crossed[1] {
		t.Fatalf("24 conversations never reached both halves of the fleet: %v", crossed)
	}
}

// backendErrors is kvroute_index_backend_errors_total{op} in st's registry.
func backendErrors(t *testing.T, st *Stack, op string) float64 {
	t.Helper()
	mfs, err := st.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "kvroute_index_backend_errors_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "op" && l.GetValue() == op {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// The Valkey server killed in the middle of traffic, then restarted empty: no request
// fails, the errors are counted, and once the server is back the router writes its
// entries again, so the shared copy again shows the workers' blocks.
func TestValkeyOutage(t *testing.T) {
	srv := valkeytest.Start(t)
	fleet := startSimFleet(t, 3)
	st, url := startValkeyRouter(t, fleet, srv.URL(), func(int) bool { return true })
	poll.CheckFor(t, 20*time.Second, "event feeds subscribed", func() bool {
		for _, w := range fleet.Workers() {
			if !w.EventsSubscribed() {
				return false
			}
		}
		return true
	})
	var sent, failed atomic.Int64
	var lastErr atomic.Value
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 60 * time.Second}
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				rng := rand.New(rand.NewPCG(uint64(g), uint64(i%8)))
				msgs := []chatMsg{{Role: "system", Content: someWords(rng, 200)}, {Role: "user", Content: fmt.Sprintf("turn %d", i)}}
				res := chatOnce(client, url, msgs, 2)
				sent.Add(1)
				if res.err != nil {
					failed.Add(1)
					lastErr.Store(res.err.Error())
				}
			}
		}()
	}
	atLeast := func(n int64, what string) {
		start := sent.Load()
		poll.CheckFor(t, 60*time.Second, what, func() bool { return sent.Load() >= start+n })
	}
	atLeast(20, "20 requests before the outage")
	probe := []chatMsg{{Role: "system", Content: someWords(rand.New(rand.NewPCG(99, 1)), 200)}, {Role: "user", Content: "probe"}}
	res := chatOnce(client, url, probe, 2)
	if res.err != nil {
		t.Fatal(res.err)
	}
	poll.CheckFor(t, 20*time.Second, "the probe's blocks in the shared index", func() bool { return confirmedOn(t, st, probe, res.worker) > 0 })

	srv.Stop()
	atLeast(40, "40 requests during the outage")
	// Whichever call meets the dead server first (a request's match or the writer's
	// batch) counts the error and marks the backend down; matches then go local.
	poll.CheckFor(t, 20*time.Second, "the outage counted", func() bool {
		return backendErrors(t, st, "match")+backendErrors(t, st, "write")+backendErrors(t, st, "resync") > 0 && st.Shared.Down()
	})
	if n := confirmedOn(t, st, probe, res.worker); n == 0 {
		t.Errorf("during the outage the router's own entries should still answer: probe confirmed %d", n)
	}
	srv.Restart() // empty: nothing persisted
	poll.CheckFor(t, 30*time.Second, "the router writes its entries again", func() bool { return !st.Shared.Down() })
	atLeast(20, "20 requests after the outage")
	cancel()
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d requests failed; last: %v", f, sent.Load(), lastErr.Load())
	}
	// Answered by the restarted server: the probe's blocks were rewritten from the
	// router's own index.
	if st.Shared.Down() {
		t.Fatal("backend down again")
	}
	if n := confirmedOn(t, st, probe, res.worker); n == 0 || st.Shared.Down() {
		t.Errorf("after the restart the shared index lacks the probe's blocks (confirmed %d, down %v)", n, st.Shared.Down())
	}
	t.Logf("%d requests, 0 failed; match errors %.0f, resync errors %.0f", sent.Load(),
		backendErrors(t, st, "match"), backendErrors(t, st, "resync"))
}
