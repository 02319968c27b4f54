package stack

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/router/replica"
	"github.com/kvroute/kvroute/upstream/kvevents/natsbus"
)

// replicaSet is n router Stacks in front of one kvsim fleet, on loopback; with share
// they share an embedded nats-server as one cluster.
type replicaSet struct {
	ctx     context.Context
	fleet   *sim.Fleet
	natsURL string // "" without sync
	events  bool
	stacks  []*Stack
	urls    []string
	stops   []func() error
}

// startReplicaSet starts a kvsim fleet of workers and n routers in front of it. With
// events each router reads every worker's ZMQ feed; with share they exchange load and
// predictions (replica.*), waiting until each hears from every other.
func startReplicaSet(t *testing.T, workers, n int, events, share bool, mutate func(i int, cfg *configs.Config)) *replicaSet {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	fc := sim.DefaultFleetConfig()
	fc.Workers, fc.Worker.Model = workers, "m"
	fleet, err := sim.StartFleet(ctx, fc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fleet.Close() })
	natsURL := ""
	if share {
		srv, err := natsbus.StartEmbedded(natsbus.EmbeddedOptions{NoJetStream: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Shutdown)
		natsURL = srv.ClientURL()
	}
	rs := &replicaSet{ctx: ctx, fleet: fleet, natsURL: natsURL, events: events}
	for i := range n {
		rs.start(t, i, mutate)
	}
	if events {
		poll.CheckFor(t, 10*time.Second, "event feeds subscribed", func() bool {
			for _, w := range fleet.Workers() {
				if !w.EventsSubscribed() {
					return false
				}
			}
			return true
		})
	}
	if share {
		poll.CheckFor(t, 10*time.Second, "every replica hears from every other", func() bool {
			for _, st := range rs.stacks {
				if len(st.Replica.Peers()) != n-1 {
					return false
				}
			}
			return true
		})
	}
	return rs
}

// start starts router i (replica id ri) and adds it to the set once it serves.
func (rs *replicaSet) start(t *testing.T, i int, mutate func(i int, cfg *configs.Config)) {
	t.Helper()
	cfg := configs.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Admin.Listen = ""
	cfg.Health.Interval = 100 * time.Millisecond
	cfg.Timeouts.Shutdown = 30 * time.Second
	cfg.Tokenize.Timeout = 10 * time.Second
	if rs.natsURL != "" {
		cfg.Replica = configs.Replica{NATSURL: rs.natsURL, ID: fmt.Sprintf("r%d", i), Cluster: "test",
			FlushInterval: time.Millisecond, Heartbeat: 100 * time.Millisecond, ExpireAfter: 400 * time.Millisecond}
	}
	if mutate != nil {
		mutate(i, &cfg)
	}
	for _, info := range rs.fleet.Infos() {
		w := configs.Worker{ID: info.ID, URL: info.URL, MaxConns: 256, DPRanks: 1}
		if rs.events {
			w.Events, w.Replay = info.Events, info.Replay
		}
		cfg.Workers = append(cfg.Workers, w)
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
	rctx, stop := context.WithCancel(rs.ctx)
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- st.Run(rctx, ln, func() { close(ready) }) }()
	<-ready
	var once sync.Once
	var runErr error
	stopFn := func() error { once.Do(func() { stop(); runErr = <-done }); return runErr }
	t.Cleanup(func() {
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
		if err := stopFn(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("router %d: %v", i, err)
		}
	})
	rs.stacks = append(rs.stacks, st)
	rs.urls = append(rs.urls, "http://"+ln.Addr().String())
	rs.stops = append(rs.stops, stopFn)
}

// chatFixed streams one chat completion of exactly maxTokens tokens (ignore_eos), and
// returns when it has been read to the end.
func chatFixed(ctx context.Context, client *http.Client, url string, msgs []chatMsg, maxTokens int) chatResult {
	body, _ := json.Marshal(map[string]any{"model": "m", "messages": msgs, "max_tokens": maxTokens, "ignore_eos": true, "stream": true})
	res := chatResult{started: time.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions", strings.NewReader(string(body)))
	if err != nil {
		res.err = err
		return res
	}
	resp, err := client.Do(req)
	if err != nil {
		res.err = err
		return res
	}
	defer resp.Body.Close()
	res.status, res.worker = resp.StatusCode, resp.Header.Get("x-kvroute-worker")
	b, err := io.ReadAll(resp.Body)
	res.ended = time.Now()
	if err == nil && (resp.StatusCode != 200 || !strings.HasSuffix(string(b), "data: [DONE]\n\n")) {
		err = fmt.Errorf("status %d, stream %.200q", resp.StatusCode, b)
	}
	res.err = err
	return res
}

// burst sends n requests sharing system, round-robin over the replicas as an L4
// balancer would, each long enough that all of them overlap, and returns how many each
// worker took, in order. Each request is sent once the one before is in flight and, with replica
// sync, once every replica's view of the fleet's load (its own plus the peers') counts
// it: so each decision sees the load it would see at a gentle arrival rate, whatever the
// machine's scheduling. It fails the test if they did not all overlap (the counts are
// then not simultaneous in-flight figures).
func (rs *replicaSet) burst(t *testing.T, system string, n int) []string {
	t.Helper()
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	results := make([]chatResult, n)
	var finished atomic.Int64
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer finished.Add(1)
			rng := rand.New(rand.NewPCG(uint64(i), 17))
			msgs := []chatMsg{{Role: "system", Content: system}, {Role: "user", Content: someWords(rng, 20)}}
			results[i] = chatFixed(context.Background(), client, rs.urls[i%len(rs.urls)], msgs, 400)
		}()
		poll.CheckFor(t, 20*time.Second, fmt.Sprintf("request %d in flight and seen by every replica", i), func() bool {
			return rs.loadSettled(int64(i + 1 - int(finished.Load())))
		})
	}
	wg.Wait()
	order := make([]string, n)
	var lastStart, firstEnd time.Time
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("request %d: %v", i, r.err)
		}
		order[i] = r.worker
		if r.started.After(lastStart) {
			lastStart = r.started
		}
		if firstEnd.IsZero() || r.ended.Before(firstEnd) {
			firstEnd = r.ended
		}
	}
	if !lastStart.Before(firstEnd) {
		t.Fatalf("the burst's requests did not all overlap (first end %v before last start %v): machine too slow for this test", firstEnd, lastStart)
	}
	return order
}

// loadSettled reports whether the replicas have want requests in flight in all and,
// with replica sync, whether each replica's own plus remote in-flight count is want.
func (rs *replicaSet) loadSettled(want int64) bool {
	var total int64
	own := make([]int64, len(rs.stacks))
	for i, st := range rs.stacks {
		for _, w := range st.Pool.Workers() {
			own[i] += int64(w.InFlight())
		}
		total += own[i]
	}
	if total < want {
		return false
	}
	if rs.natsURL == "" {
		return true
	}
	for i, st := range rs.stacks {
		seen := own[i]
		for _, w := range st.Pool.Workers() {
			seen += st.Replica.Remote(w.ID).InFlight
		}
		if seen != total {
			return false
		}
	}
	return true
}

// A burst of requests sharing a long system prompt that one worker caches, spread over
// three replicas, each sent once the ones before are in flight (and, with sync, seen by
// every replica). With replica sync every decision obeys the load guard computed over
// the fleet's in-flight requests; without it (the control) each replica applies the
// guard to its own third of the load, so the third request, arriving at the third
// replica, which has nothing in flight, herds onto the worker holding the prefix past
// the fleet-wide bound.
func TestReplicasBurstRespectsFleetWideGuard(t *testing.T) {
	const workers, replicas, n = 4, 3, 12
	system := someWords(rand.New(rand.NewPCG(4, 4)), 1500)
	mi := configs.Default().CacheAware.MaxImbalance
	for _, share := range []bool{true, false} {
		t.Run(fmt.Sprintf("share=%v", share), func(t *testing.T) {
			// The prefix's worth dwarfs every load term of the cost, so only the load
			// guard keeps requests off a worker holding it.
			rs := startReplicaSet(t, workers, replicas, true, share, func(_ int, cfg *configs.Config) { cfg.CacheAware.OverlapWeight = 1000 })
			// Warm one worker with the system prompt, known to every replica by its events.
			warm := chatOnce(http.DefaultClient, rs.urls[0], []chatMsg{{Role: "system", Content: system}, {Role: "user", Content: "hello"}}, 4)
			if warm.err != nil {
				t.Fatal(warm.err)
			}
			for i, st := range rs.stacks {
				poll.CheckFor(t, 10*time.Second, fmt.Sprintf("replica %d indexed %s's blocks", i, warm.worker), func() bool { return gpuBlocks(st.Index, warm.worker) > 0 })
			}
			order := rs.burst(t, system, n)
			// Every request was in flight until the burst's end (burst checks), so request
			// i met exactly the i before it: the guard admits a worker with k of them
			// when k+1 <= MaxImbalance*((i+1)/workers + 1).
			prior := map[string]int{}
			var over []string
			for i, w := range order {
				if bar := mi * (float64(i+1)/workers + 1); float64(prior[w]+1) > bar {
					over = append(over, fmt.Sprintf("request %d onto %s with %d in flight (bar %.2f)", i, w, prior[w], bar))
				}
				prior[w]++
			}
			t.Logf("share=%v: requests in order %v (holder %s); past the fleet-wide guard: %v", share, order, warm.worker, over)
			if share && len(over) > 0 {
				t.Errorf("with replica sync %d decisions went past the fleet-wide load guard: %v", len(over), over)
			}
			if !share && len(over) == 0 {
				t.Errorf("control without sync never went past the fleet-wide guard: the test no longer distinguishes: %v", order)
			}
		})
	}
}

// With KV events off the index holds only routing decisions: a conversation's second
// turn, arriving at another replica than its first, goes to the worker the first turn
// went to, because the replicas share their decisions. The control without sync
// scatters.
func TestReplicasShareRoutingDecisions(t *testing.T) {
	const convs = 8
	for _, share := range []bool{true, false} {
		t.Run(fmt.Sprintf("share=%v", share), func(t *testing.T) {
			rs := startReplicaSet(t, 4, 3, false, share, nil)
			client := &http.Client{Timeout: 30 * time.Second}
			followed, lastWorker := 0, ""
			var msgs []chatMsg
			for c := range convs {
				rng := rand.New(rand.NewPCG(uint64(c), 23))
				msgs = []chatMsg{{Role: "system", Content: someWords(rng, 400)}, {Role: "user", Content: someWords(rng, 30)}}
				first := chatOnce(client, rs.urls[c%3], msgs, 8)
				if first.err != nil {
					t.Fatal(first.err)
				}
				msgs = append(msgs, chatMsg{Role: "assistant", Content: first.reply}, chatMsg{Role: "user", Content: someWords(rng, 30)})
				if share {
					// The decision reaches the next replica's index within the flush
					// interval; wait for it rather than race it.
					poll.CheckFor(t, 5*time.Second, "decisions shared", func() bool { return rs.predictionsSettled(t) })
				}
				second := chatOnce(client, rs.urls[(c+1)%3], msgs, 8)
				if second.err != nil {
					t.Fatal(second.err)
				}
				lastWorker = first.worker
				msgs = append(msgs, chatMsg{Role: "assistant", Content: second.reply})
				if second.worker == first.worker {
					followed++
				} else if share {
					t.Errorf("conversation %d: first turn on %s via replica %d, second on %s via replica %d", c, first.worker, c%3, second.worker, (c+1)%3)
				}
				if share && second.cached == 0 {
					t.Errorf("conversation %d: second turn hit no cache on %s", c, second.worker)
				}
			}
			t.Logf("share=%v: %d of %d second turns on their first turn's worker", share, followed, convs)
			if share {
				// A fourth replica starting now restores a peer's index before it serves:
				// it routes a third turn of the last conversation to where the others
				// sent the first two, with no event feeds and no routing of its own.
				rs.start(t, 3, func(_ int, cfg *configs.Config) { cfg.Replica.WarmTimeout = 5 * time.Second })
				if n := rs.stacks[3].Index.Stats().PredictedEntries; n == 0 {
					t.Fatal("the new replica restored no predictions")
				}
				msgs = append(msgs, chatMsg{Role: "assistant", Content: "ok"}, chatMsg{Role: "user", Content: "and then?"})
				third := chatOnce(client, rs.urls[3], msgs, 8)
				if third.err != nil || third.worker != lastWorker || third.cached == 0 {
					t.Errorf("third turn via the restarted replica: worker %s (want %s), cached %d, err %v", third.worker, lastWorker, third.cached, third.err)
				}
			}
			if !share && followed == convs {
				t.Errorf("control without sync: all %d second turns still followed their first (chance 4^-%d): the test no longer distinguishes", convs, convs)
			}
		})
	}
}

// predictionsSettled reports whether every replica has applied every prediction the
// others sent.
func (rs *replicaSet) predictionsSettled(t *testing.T) bool {
	var sent []float64
	total := 0.0
	for _, st := range rs.stacks {
		v := counterValue(t, st, "kvroute_replica_predictions_sent_total")
		sent, total = append(sent, v), total+v
	}
	for i, st := range rs.stacks {
		if counterValue(t, st, "kvroute_replica_predictions_received_total") != total-sent[i] {
			return false
		}
	}
	return true
}

// counterValue returns the value of the unlabelled counter name in st's registry (0
// when it is not registered, as without replica sync).
func counterValue(t *testing.T, st *Stack, name string) float64 {
	t.Helper()
	mfs, err := st.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// A replica that dies with a request in flight: the others counted its load on the
// worker, and stop counting it within replica.expire_after of its last message.
func TestReplicaKilledLoadExpires(t *testing.T) {
	rs := startReplicaSet(t, 2, 3, false, true, func(i int, cfg *configs.Config) {
		if i == 2 {
			cfg.Timeouts.Shutdown = 100 * time.Millisecond // its drain gives up on the stream
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	done := make(chan chatResult, 1)
	go func() {
		// About 10 s of decoding on the test profile: in flight for the whole test.
		done <- chatFixed(ctx, client, rs.urls[2], []chatMsg{{Role: "user", Content: "a long answer please"}}, 5000)
	}()
	var worker string
	poll.CheckFor(t, 5*time.Second, "replicas 0 and 1 count replica 2's request", func() bool {
		for _, w := range rs.fleet.Workers() {
			if rs.stacks[0].Replica.Remote(w.ID()).InFlight == 1 && rs.stacks[1].Replica.Remote(w.ID()).InFlight == 1 {
				worker = w.ID()
				return true
			}
		}
		return false
	})
	expire := rs.stacks[0].Config.Replica.ExpireAfter
	// Several heartbeats later it still counts: only silence expires it.
	time.Sleep(3 * rs.stacks[0].Config.Replica.Heartbeat)
	if n := rs.stacks[0].Replica.Remote(worker).InFlight; n != 1 {
		t.Fatalf("replica 0 counts %d of replica 2's requests on %s before the kill, want 1", n, worker)
	}
	if err := rs.stops[2](); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("replica 2 stopped with %v, want its drain to give up", err)
	}
	killed := time.Now()
	for i := range 2 {
		poll.CheckFor(t, 5*time.Second, fmt.Sprintf("replica %d drops replica 2's load", i), func() bool {
			return rs.stacks[i].Replica.Remote(worker) == (replica.Load{})
		})
	}
	took := time.Since(killed)
	// The reaper runs every expire_after/4; allow scheduling slack on a loaded machine.
	if limit := expire + expire/4 + 250*time.Millisecond; took > limit {
		t.Errorf("replica 2's load disappeared after %v, want within %v", took, limit)
	}
	t.Logf("killed replica's load gone from the others after %v (expire_after %v)", took.Round(time.Millisecond), expire)
	select {
	case r := <-done:
		t.Fatalf("the request ended before the end of the test: %+v", r)
	default:
	}
}
