package replica

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/upstream"
	"github.com/kvroute/kvroute/upstream/kvevents/natsbus"
)

// startNATS runs an embedded nats-server for the test.
func startNATS(t testing.TB) string {
	t.Helper()
	srv, err := natsbus.StartEmbedded(natsbus.EmbeddedOptions{NoJetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	return srv.ClientURL()
}

// node is one replica's pool, index and Sync, as a router builds them; the workers'
// URLs are never dialed (the pool is not started: the test drives its load counters).
type node struct {
	pool *upstream.Pool
	ix   *indexer.Index
	sync *Sync
	reg  *prometheus.Registry
	stop func() // ends Run without anything else: a crash as far as the peers can tell
}

func startNode(t testing.TB, url, id string, mutate func(*Options)) *node {
	t.Helper()
	cfg := configs.Default()
	for i := range 3 {
		cfg.Workers = append(cfg.Workers, configs.Worker{ID: fmt.Sprintf("gpu-%d", i), URL: fmt.Sprintf("http://127.0.0.1:%d", 1+i), MaxConns: 1, DPRanks: 1})
	}
	reg := prometheus.NewRegistry()
	pool, err := upstream.NewPool(&cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := indexer.New(indexer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	opts := Options{Conn: nc, Pool: pool, Index: ix, ID: id, Heartbeat: 50 * time.Millisecond, ExpireAfter: 200 * time.Millisecond, Registerer: reg}
	if mutate != nil {
		mutate(&opts)
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	n := &node{pool: pool, ix: ix, sync: s, reg: reg}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Subscribed():
	case err := <-done:
		t.Fatalf("replica %s: %v", id, err)
	}
	var stopped bool
	n.stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("replica %s: %v", id, err)
			}
		}
	}
	t.Cleanup(n.stop)
	return n
}

// Loads begun on one replica's workers appear as remote load on the other's, follow
// first tokens and ends, and predictions reach the other's index.
func TestRemoteLoadAndPredictions(t *testing.T) {
	url := startNATS(t)
	a, b := startNode(t, url, "a", nil), startNode(t, url, "b", nil)
	poll.CheckFor(t, 5*time.Second, "peers see each other", func() bool { return len(a.sync.Peers()) == 1 && len(b.sync.Peers()) == 1 })

	w := b.pool.Worker("gpu-1")
	l1 := w.Begin(1000, 70, time.Minute)
	l2 := w.Begin(200, 20, time.Minute)
	b.sync.Changed()
	want := Load{InFlight: 2, PrefillTokens: 1200, Blocks: 90}
	poll.CheckFor(t, 2*time.Second, "a sees b's load", func() bool { return a.sync.Remote("gpu-1") == want })
	if got := a.sync.Remote("gpu-0"); got != (Load{}) {
		t.Errorf("gpu-0 remote %+v, want none", got)
	}
	if got := b.sync.Remote("gpu-1"); got != (Load{}) {
		t.Errorf("b counts its own load as remote: %+v", got)
	}
	// First token and end are not signalled: b publishes them because it has load.
	l1.FirstToken()
	poll.CheckFor(t, 2*time.Second, "a sees the first token", func() bool { return a.sync.Remote("gpu-1").PrefillTokens == 200 })
	l1.End()
	l2.End()
	poll.CheckFor(t, 2*time.Second, "a sees the ends", func() bool { return a.sync.Remote("gpu-1") == (Load{}) })

	hashes := []proto.BlockHash{11, 12, 13, 14}
	b.sync.Predicted("gpu-2", hashes)
	b.sync.Predicted("not-a-worker", hashes) // dropped by a: not in its pool
	poll.CheckFor(t, 2*time.Second, "a's index holds b's prediction", func() bool {
		m := a.ix.Match(hashes, nil)
		return len(m) == 1 && m[0].Worker.ID == "gpu-2" && m[0].Blocks == 4
	})
	poll.CheckFor(t, 2*time.Second, "the unknown worker's prediction counted as dropped", func() bool {
		return testutil.ToFloat64(a.sync.m.dropped.WithLabelValues(dropUnknown)) >= 1
	})
	if n := testutil.ToFloat64(a.sync.m.predRecv); n != 1 {
		t.Errorf("a applied %v predictions, want 1", n)
	}
	if n := testutil.ToFloat64(b.sync.m.sent); n < 3 {
		t.Errorf("b sent %v messages", n)
	}
	if n, err := testutil.GatherAndCount(a.reg, "kvroute_replica_remote_in_flight"); err != nil || n != 3 {
		t.Errorf("remote in-flight series: %d, %v; want one per worker", n, err)
	}
}

// A replica that stops publishing (crashed) with load open: its share disappears from
// the others within ExpireAfter (plus the reaper's period), and not before a heartbeat
// is missed.
func TestCrashedPeerExpires(t *testing.T) {
	url := startNATS(t)
	a, b := startNode(t, url, "a", nil), startNode(t, url, "b", nil)
	b.pool.Worker("gpu-0").Begin(100, 10, time.Minute) // never ended: b "crashes" with it
	b.sync.Changed()
	poll.CheckFor(t, 2*time.Second, "a sees b's load", func() bool { return a.sync.Remote("gpu-0").InFlight == 1 })
	// Heartbeats keep it alive well past ExpireAfter.
	time.Sleep(2 * a.sync.opts.ExpireAfter)
	if a.sync.Remote("gpu-0").InFlight != 1 {
		t.Fatal("a live peer's load expired")
	}
	b.stop()
	crashed := time.Now()
	poll.CheckFor(t, 2*time.Second, "b's load expires on a", func() bool { return a.sync.Remote("gpu-0") == (Load{}) })
	took := time.Since(crashed)
	if limit := a.sync.opts.ExpireAfter + a.sync.opts.ExpireAfter/4 + 100*time.Millisecond; took > limit {
		t.Errorf("expired after %v, want within %v", took, limit)
	}
	if n := testutil.ToFloat64(a.sync.m.expired); n != 1 {
		t.Errorf("expired peers %v, want 1", n)
	}
	if len(a.sync.Peers()) != 0 {
		t.Errorf("peers %v after expiry", a.sync.Peers())
	}
}

// Routing-side calls never block while NATS is down, the pending predictions stay
// bounded, and after the server is back the peers resynchronise.
func TestNATSOutageNeverBlocks(t *testing.T) {
	srv, err := natsbus.StartEmbedded(natsbus.EmbeddedOptions{NoJetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	url := srv.ClientURL()
	a, b := startNode(t, url, "a", nil), startNode(t, url, "b", func(o *Options) { o.MaxPending = 4 << 10 })
	poll.CheckFor(t, 5*time.Second, "peers see each other", func() bool { return len(a.sync.Peers()) == 1 })
	srv.Shutdown()

	hashes := make([]proto.BlockHash, 64)
	start := time.Now()
	for range 20000 {
		b.sync.Predicted("gpu-0", hashes)
		b.sync.Changed()
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("20000 Predicted+Changed calls took %v with NATS down", d)
	}
	if n := testutil.ToFloat64(b.sync.m.dropBuffer); n == 0 {
		t.Error("no prediction dropped with NATS down and a 4 KiB buffer")
	}
	b.sync.mu.Lock()
	pend := len(b.sync.pend)
	b.sync.mu.Unlock()
	if pend > 4<<10 {
		t.Errorf("%d bytes pending, above MaxPending", pend)
	}
	l := b.pool.Worker("gpu-2").Begin(10, 3, time.Minute)
	defer l.End()

	// The same address again: both clients reconnect.
	srv2, err := natsbus.StartEmbedded(natsbus.EmbeddedOptions{NoJetStream: true, Port: portOf(t, url)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Shutdown()
	poll.CheckFor(t, 10*time.Second, "a sees b's load after the outage", func() bool { return a.sync.Remote("gpu-2").InFlight == 1 })
}

func portOf(t *testing.T, url string) int {
	t.Helper()
	var port int
	if _, err := fmt.Sscanf(url[len("nats://127.0.0.1:"):], "%d", &port); err != nil {
		t.Fatalf("port of %q: %v", url, err)
	}
	return port
}

// A starting replica restores a peer's index dump, in several chunks; with no peer it
// starts cold at once.
func TestWarmStart(t *testing.T) {
	url := startNATS(t)
	a := startNode(t, url, "a", nil)
	var want []proto.BlockHash
	for i := range 65000 { // 65000 predictions: a dump of ~1.1 MB, two chunks at NATS's 1 MB
		want = append(want, proto.BlockHash(i+1))
	}
	a.ix.Predict(proto.WorkerKey{ID: "gpu-1"}, want, time.Minute)

	cfg := configs.Default()
	cfg.Workers = []configs.Worker{{ID: "gpu-1", URL: "http://127.0.0.1:2", MaxConns: 1, DPRanks: 1}}
	pool, err := upstream.NewPool(&cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := indexer.New(indexer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	s, err := New(Options{Conn: nc, Pool: pool, Index: ix, ID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	ok, err := s.WarmStart(context.Background(), 5*time.Second)
	if !ok || err != nil {
		t.Fatalf("WarmStart = %v, %v", ok, err)
	}
	if m := ix.Match(want, nil); len(m) != 1 || m[0].Worker.ID != "gpu-1" || m[0].Blocks != len(want) {
		t.Errorf("restored index matches %+v, want gpu-1 with %d blocks", m, len(want))
	}

	// Alone in another cluster: no responder, cold without waiting for the timeout.
	s2, err := New(Options{Conn: nc, Pool: pool, Index: ix, ID: "d", Cluster: "empty"})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if ok, err := s2.WarmStart(context.Background(), 5*time.Second); ok || err == nil {
		t.Errorf("WarmStart without peers = %v, %v", ok, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cold start took %v", d)
	}
}

// A load that ends and is first reported by a heartbeat (a full message listing it at
// zero) is taken off the remote sum once: the peer's next load counts in full. (It was
// subtracted twice, so the sum went negative, read as zero, and hid the next request.)
func TestHeartbeatReportingAnEndSettlesOnce(t *testing.T) {
	url := startNATS(t)
	a := startNode(t, url, "a", func(o *Options) { o.Heartbeat, o.ExpireAfter = time.Hour, 2*time.Hour })
	msg := func(seq uint64, full bool, inFlight int64) []byte {
		m := Message{Sender: "b", Incarnation: 7, Seq: seq, Sent: time.Now().UnixNano(), Full: full}
		for _, id := range []string{"gpu-0", "gpu-1", "gpu-2"} {
			l := Load{}
			if id == "gpu-1" {
				l.InFlight = inFlight
			}
			if full || id == "gpu-1" {
				m.Loads = append(m.Loads, WorkerLoad{Worker: id, Load: l})
			}
		}
		return AppendMessage(nil, &m)
	}
	a.sync.apply(msg(1, false, 1), time.Now()) // a request begins
	if got := a.sync.Remote("gpu-1").InFlight; got != 1 {
		t.Fatalf("after the begin: remote in flight %d, want 1", got)
	}
	a.sync.apply(msg(2, true, 0), time.Now()) // its end, first told by a heartbeat
	if got := a.sync.Remote("gpu-1").InFlight; got != 0 {
		t.Fatalf("after the heartbeat: remote in flight %d, want 0", got)
	}
	a.sync.apply(msg(3, false, 1), time.Now()) // the next request
	if got := a.sync.Remote("gpu-1").InFlight; got != 1 {
		t.Errorf("after the next begin: remote in flight %d, want 1", got)
	}
	// A heartbeat that no longer lists a worker takes its load off, once.
	m := Message{Sender: "b", Incarnation: 7, Seq: 4, Sent: time.Now().UnixNano(), Full: true,
		Loads: []WorkerLoad{{Worker: "gpu-0"}}}
	a.sync.apply(AppendMessage(nil, &m), time.Now())
	a.sync.apply(msg(5, false, 2), time.Now())
	if got := a.sync.Remote("gpu-1").InFlight; got != 2 {
		t.Errorf("after an unlisting heartbeat and two begins: remote in flight %d, want 2", got)
	}
}
