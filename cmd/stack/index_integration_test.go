package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/upstream/kvevents"
	"github.com/kvroute/kvroute/upstream/kvevents/natsbus"
)

// The index-exactness tests compare, per worker, the set of kvroute own hashes the index
// holds on GPU (confirmed by events, predictions excluded) with the own hashes of the
// blocks kvsim's engine actually caches. kvsim reports its cache as engine hashes
// (CachedBlockHashes); the test knows the token ids of every prompt it sent, so it maps
// each engine hash back to the own hash of the same block (Rank.EngineBlockHashes and
// proto.HashBlocks over the same tokens). Prompts are token-id arrays of whole blocks and
// ask for one output token, so no generated token completes a block.

const itBlockSize = 16

// blockOracle maps the engine hashes of every block the test sent to own hashes.
type blockOracle struct {
	mu       sync.Mutex
	fleet    *sim.Fleet
	own      map[string]map[uint64]proto.BlockHash // worker id -> engine hash -> own hash
	universe map[proto.BlockHash]struct{}
	rng      *rand.Rand
	prefixes [][]uint32 // shared leading blocks some prompts start with
}

func newBlockOracle(fleet *sim.Fleet, seed uint64) *blockOracle {
	o := &blockOracle{fleet: fleet, own: map[string]map[uint64]proto.BlockHash{},
		universe: map[proto.BlockHash]struct{}{}, rng: rand.New(rand.NewPCG(seed, seed))}
	for _, w := range fleet.Workers() {
		o.own[w.ID()] = map[uint64]proto.BlockHash{}
	}
	for range 3 {
		o.prefixes = append(o.prefixes, o.tokens(2*itBlockSize))
	}
	return o
}

func (o *blockOracle) tokens(n int) []uint32 {
	t := make([]uint32, n)
	for i := range t {
		t[i] = 100 + uint32(o.rng.IntN(30000))
	}
	return t
}

// prompt returns a new prompt of the given number of blocks (half of them starting with a
// shared two-block prefix) and records its blocks.
func (o *blockOracle) prompt(blocks int) []uint32 {
	o.mu.Lock()
	defer o.mu.Unlock()
	var toks []uint32
	if blocks > 2 && o.rng.IntN(2) == 0 {
		toks = append(toks, o.prefixes[o.rng.IntN(len(o.prefixes))]...)
	}
	toks = append(toks, o.tokens(blocks*itBlockSize-len(toks))...)
	own := proto.HashBlocks(nil, proto.Seed("m", "", ""), toks, itBlockSize)
	for _, w := range o.fleet.Workers() {
		for _, rk := range w.Ranks() {
			eng := rk.EngineBlockHashes("", toks)
			for i, h := range own {
				o.own[w.ID()][eng[i]] = h
			}
		}
	}
	for _, h := range own {
		o.universe[h] = struct{}{}
	}
	return toks
}

// diff returns "" when, for every worker, the index's confirmed blocks are exactly the
// worker's cached blocks, and otherwise a description of the first difference.
func (o *blockOracle) diff(ix *indexer.Index) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var dst []indexer.WorkerMatch
	for _, w := range o.fleet.Workers() {
		want := map[proto.BlockHash]bool{}
		for _, e := range w.CachedBlockHashes() {
			h, ok := o.own[w.ID()][e]
			if !ok {
				return fmt.Sprintf("%s caches engine block %#x the test never sent", w.ID(), e)
			}
			want[h] = true
		}
		got := map[proto.BlockHash]bool{}
		for h := range o.universe {
			dst = ix.Match([]proto.BlockHash{h}, dst)
			for _, m := range dst {
				if m.Worker.ID == w.ID() && m.Confirmed == 1 {
					got[h] = true
				}
			}
		}
		var missing, extra int
		for h := range want {
			if !got[h] {
				missing++
			}
		}
		for h := range got {
			if !want[h] {
				extra++
			}
		}
		if n := gpuBlocks(ix, w.ID()); missing != 0 || extra != 0 || n != int64(len(got)) {
			return fmt.Sprintf("%s: worker caches %d blocks; index holds %d on GPU, %d of them sent by the test; %d cached blocks missing, %d stale",
				w.ID(), len(want), n, len(got), missing, extra)
		}
	}
	return ""
}

// cached returns how many distinct blocks worker w caches.
func (o *blockOracle) cached(w *sim.Worker) int {
	seen := map[uint64]bool{}
	for _, e := range w.CachedBlockHashes() {
		seen[e] = true
	}
	return len(seen)
}

// requireExact polls until the index matches every worker's cache, failing after timeout
// with the last difference.
func requireExact(t *testing.T, o *blockOracle, ix *indexer.Index, timeout time.Duration, what string) {
	t.Helper()
	var d string
	if !poll.Until(timeout, func() bool { d = o.diff(ix); return d == "" }) {
		t.Fatalf("%s: index not exact after %s: %s", what, timeout, d)
	}
}

// feedState returns the Stack's event-feed state of worker id.
func feedState(t *testing.T, st *Stack, id string) kvevents.WorkerState {
	t.Helper()
	for _, s := range st.Events.States() {
		if s.Key.ID == id {
			return s
		}
	}
	t.Fatalf("no event feed for %s", id)
	return kvevents.WorkerState{}
}

// complete sends a one-output-token completion with a token-id prompt to base (a router
// or a worker) and returns the worker the router chose (empty when sent to a worker).
func complete(t *testing.T, client *http.Client, base string, toks []uint32) string {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"model": "m", "prompt": toks, "max_tokens": 1, "ignore_eos": true})
	resp, err := client.Post(base+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("completion via %s: %d %s", base, resp.StatusCode, b)
	}
	return resp.Header.Get("x-kvroute-worker")
}

// The index holds exactly the blocks the simulated workers hold, through the Stack's ZMQ
// feeds: after routed traffic, after eviction, after dropped event batches (gap, replay),
// after engine restarts (the sequence restarts; stale entries gone within 1 s of the new
// stream's first batch), and after AllBlocksCleared.
func TestIndexMatchesWorkerCacheZMQ(t *testing.T) {
	const kvBlocks = 64
	ss := startSimStack(t, 2, func(fc *sim.FleetConfig, _ *configs.Config) {
		fc.Worker.BlockSize, fc.Worker.KVBlocks = itBlockSize, kvBlocks
	})
	ix := ss.stack.Index
	o := newBlockOracle(ss.fleet, 11)
	client := &http.Client{Timeout: 30 * time.Second}
	w0, w1 := ss.fleet.Workers()[0], ss.fleet.Workers()[1]

	routed := map[string]int{}
	for range 10 {
		routed[complete(t, client, ss.url, o.prompt(3+o.rng.IntN(5)))]++
	}
	t.Logf("routed: %v", routed)
	requireExact(t, o, ix, 5*time.Second, "routed traffic")
	// The capacity each worker's metrics report sizes its engine-hash table.
	poll.CheckFor(t, 5*time.Second, "engine tables reserved for the workers' caches", func() bool {
		ws := ix.Stats().Workers
		for _, w := range ws {
			if w.Reserved != kvBlocks {
				return false
			}
		}
		return len(ws) == 2
	})

	// Eviction: far more distinct blocks than w0's cache holds.
	sent := 0
	for range 20 {
		n := 6 + o.rng.IntN(5)
		sent += n
		complete(t, client, w0.URL(), o.prompt(n))
	}
	if c := o.cached(w0); c > kvBlocks || sent <= kvBlocks {
		t.Fatalf("eviction not exercised: %d blocks sent, %d cached, capacity %d", sent, c, kvBlocks)
	}
	requireExact(t, o, ix, 5*time.Second, "after eviction")

	// Dropped batches: the next batch shows a gap, the feed replays the missing ones.
	dropped := w0.Stats().EventBatchesDropped
	before := feedState(t, ss.stack, w0.ID())
	if err := w0.SetFaults(sim.Faults{DropEventBatches: 2}); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		complete(t, client, w0.URL(), o.prompt(4))
	}
	if d := w0.Stats().EventBatchesDropped - dropped; d != 2 {
		t.Fatalf("kvsim dropped %d batches, want 2", d)
	}
	requireExact(t, o, ix, 5*time.Second, "after dropped batches")
	if after := feedState(t, ss.stack, w0.ID()); after.Replays == before.Replays || after.Resets != before.Resets {
		t.Fatalf("gap handling: replays %d -> %d, resets %d -> %d; want a replay and no reset",
			before.Replays, after.Replays, before.Resets, after.Resets)
	}

	// Engine restart: the cache empties silently and the sequence restarts at 0. The
	// router learns it from the new stream's first batch.
	if err := w0.Restart(sim.RestartOptions{}); err != nil {
		t.Fatal(err)
	}
	// Nothing told the router yet: the index is stale, and the oracle must see it.
	if d := o.diff(ix); d == "" {
		t.Fatal("index matches a worker whose cache was just emptied: the comparison is blind")
	} else {
		t.Logf("right after the restart, before any new batch: %s", d)
	}
	resets := feedState(t, ss.stack, w0.ID()).Resets
	complete(t, client, w0.URL(), o.prompt(3))
	requireExact(t, o, ix, time.Second, "after engine restart")
	if st := feedState(t, ss.stack, w0.ID()); st.Resets == resets {
		t.Fatalf("engine restart not seen as a reset (last reset %q)", st.LastReset)
	}

	// A restart that also rebinds the event sockets (a new process): the feed reconnects.
	if err := w1.Restart(sim.RestartOptions{Rebind: true}); err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, 10*time.Second, "feed resubscribed after rebind", w1.EventsSubscribed)
	complete(t, client, w1.URL(), o.prompt(3))
	requireExact(t, o, ix, time.Second, "after engine restart with rebind")

	// AllBlocksCleared (reset_prefix_cache).
	complete(t, client, w1.URL(), o.prompt(5))
	requireExact(t, o, ix, 5*time.Second, "before reset")
	if gpuBlocks(ix, w1.ID()) == 0 {
		t.Fatal("nothing indexed for w1 before the reset")
	}
	if err := w1.ResetPrefixCache(); err != nil {
		t.Fatal(err)
	}
	requireExact(t, o, ix, time.Second, "after AllBlocksCleared")
	if n := gpuBlocks(ix, w1.ID()); n != 0 {
		t.Fatalf("%d blocks indexed for w1 after its cache was reset", n)
	}

	for range 6 {
		complete(t, client, ss.url, o.prompt(2+o.rng.IntN(6)))
	}
	requireExact(t, o, ix, 5*time.Second, "traffic after the faults")
}

// natsRouter is a router Stack consuming events from NATS.
type natsRouter struct {
	st   *Stack
	url  string
	stop func()
}

// The same through NATS JetStream: workers' events go through a bridge to a stream; the
// router is stopped, the workers keep caching and evicting (and one resets its cache),
// and a restarted router is exact again: (1) with the same durable consumer, restoring
// the index the first router dumped at shutdown (the durable consumer resumes after what
// it acknowledged), and (2) with no durable consumer, replaying the whole stream.
func TestIndexMatchesWorkerCacheNATSRestart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fc := sim.DefaultFleetConfig()
	fc.Workers, fc.Worker.Model = 2, "m"
	fc.Worker.BlockSize, fc.Worker.KVBlocks = itBlockSize, 64
	natsURL, fleet := startBridgedFleet(t, ctx, fc)
	w0, w1 := fleet.Workers()[0], fleet.Workers()[1]

	// start builds a router; restore, if not nil, is loaded into its index before it runs.
	start := func(durable string, restore []byte) natsRouter {
		cfg := configs.Default()
		cfg.Listen = "127.0.0.1:0"
		cfg.Timeouts.Shutdown = 15 * time.Second
		cfg.Events.Source = "nats"
		cfg.Events.NATS = configs.NATSEvents{URL: natsURL, JetStream: true, Durable: durable, SubjectPrefix: natsbus.DefaultPrefix}
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
		if restore != nil {
			if err := st.Index.Restore(bytes.NewReader(restore)); err != nil {
				t.Fatal(err)
			}
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
		return natsRouter{st: st, url: "http://" + ln.Addr().String(), stop: func() {
			rcancel()
			if err := <-done; err != nil {
				t.Errorf("router: %v", err)
			}
		}}
	}

	o := newBlockOracle(fleet, 12)
	client := &http.Client{Timeout: 30 * time.Second}
	r1 := start("router-exact", nil)
	for range 8 {
		complete(t, client, r1.url, o.prompt(3+o.rng.IntN(5)))
	}
	requireExact(t, o, r1.st.Index, 5*time.Second, "router 1")
	r1.stop()
	var dump bytes.Buffer
	if err := r1.st.Index.Dump(&dump); err != nil {
		t.Fatal(err)
	}

	// While no router runs: eviction on w0, a reset and new blocks on w1.
	for range 12 {
		complete(t, client, w0.URL(), o.prompt(6+o.rng.IntN(4)))
	}
	if err := w1.ResetPrefixCache(); err != nil {
		t.Fatal(err)
	}
	complete(t, client, w1.URL(), o.prompt(4))

	r2 := start("router-exact", dump.Bytes())
	defer r2.stop()
	requireExact(t, o, r2.st.Index, 5*time.Second, "router 2 (same durable consumer, restored dump)")
	r3 := start("", nil)
	defer r3.stop()
	requireExact(t, o, r3.st.Index, 5*time.Second, "router 3 (whole stream replayed)")

	for range 4 {
		complete(t, client, r2.url, o.prompt(3+o.rng.IntN(4)))
	}
	requireExact(t, o, r2.st.Index, 5*time.Second, "router 2 after more traffic")
	requireExact(t, o, r3.st.Index, 5*time.Second, "router 3 after more traffic")
}

// A worker whose event feed is removed (what a reload without the worker does through
// kvevents.Manager.Set) is removed from the index, not only cleared: it no longer appears
// among the index's workers, and the other worker's entries stay.
func TestIndexRemovesWorkerWhoseFeedIsRemoved(t *testing.T) {
	ss := startSimStack(t, 2, func(fc *sim.FleetConfig, _ *configs.Config) { fc.Worker.BlockSize = itBlockSize })
	ix := ss.stack.Index
	o := newBlockOracle(ss.fleet, 13)
	client := &http.Client{Timeout: 30 * time.Second}
	w0, w1 := ss.fleet.Workers()[0], ss.fleet.Workers()[1]
	complete(t, client, w0.URL(), o.prompt(4))
	complete(t, client, w1.URL(), o.prompt(4))
	requireExact(t, o, ix, 5*time.Second, "before the removal")
	known := func(id string) bool {
		for _, w := range ix.Stats().Workers {
			if w.Worker.ID == id {
				return true
			}
		}
		return false
	}
	if !known(w1.ID()) {
		t.Fatalf("%s not among the index's workers", w1.ID())
	}
	if err := ss.stack.Events.Set([]kvevents.WorkerConfig{{Worker: w0.ID(), Model: "m", Endpoint: w0.EventsEndpoint(), ReplayEndpoint: w0.ReplayEndpoint()}}); err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, 5*time.Second, w1.ID()+" removed from the index", func() bool { return !known(w1.ID()) })
	if gpuBlocks(ix, w0.ID()) != 4 {
		t.Fatalf("%s holds %d blocks in the index after the other worker's removal, want 4", w0.ID(), gpuBlocks(ix, w0.ID()))
	}
}

// kvsim, like vLLM releases before extra_keys were published, sends no extra keys, so the
// index cannot know a request's cache_salt: a salted request's blocks are indexed under
// the unsalted seed, and the same salted request, hashed with its salt by the router,
// matches only the router's own prediction (indexer.eventSalt recovers the salt when the
// engine publishes it; see indexer/salt_test.go).
func TestSaltedRequestWithoutExtraKeysMatchesOnlyPredictions(t *testing.T) {
	// Two workers: with one, the router has no choice to make and hashes nothing.
	ss := startSimStack(t, 2, func(fc *sim.FleetConfig, _ *configs.Config) { fc.Worker.BlockSize = itBlockSize })
	ix := ss.stack.Index
	toks := make([]uint32, 4*itBlockSize)
	for i := range toks {
		toks[i] = uint32(500 + i)
	}
	// A worker's first event batch resets its entries (kvevents ResetOnStart), predictions
	// included: let every worker publish once before the request under test.
	o := newBlockOracle(ss.fleet, 14)
	for _, fw := range ss.fleet.Workers() {
		complete(t, &http.Client{Timeout: 30 * time.Second}, fw.URL(), o.prompt(2))
	}
	requireExact(t, o, ix, 5*time.Second, "warm-up")
	body, _ := json.Marshal(map[string]any{"model": "m", "prompt": toks, "max_tokens": 1, "cache_salt": "tenant-a"})
	resp, err := http.Post(ss.url+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("salted completion: %d", resp.StatusCode)
	}
	var w *sim.Worker
	for _, fw := range ss.fleet.Workers() {
		if fw.ID() == resp.Header.Get("x-kvroute-worker") {
			w = fw
		}
	}
	if w == nil {
		t.Fatalf("routed to unknown worker %q", resp.Header.Get("x-kvroute-worker"))
	}
	unsalted := proto.HashBlocks(nil, proto.Seed("m", "", ""), toks, itBlockSize)
	salted := proto.HashBlocks(nil, proto.Seed("m", "", "tenant-a"), toks, itBlockSize)
	held := func(hs []proto.BlockHash) indexer.WorkerMatch {
		for _, m := range ix.Match(hs, nil) {
			if m.Worker.ID == w.ID() {
				return m
			}
		}
		return indexer.WorkerMatch{}
	}
	poll.CheckFor(t, 5*time.Second, "salted blocks indexed", func() bool { return held(unsalted).Confirmed == 4 })
	if m := held(salted); m.Confirmed != 0 || m.Blocks != 4 {
		t.Fatalf("salted request: %d blocks, %d confirmed; want the 4 predicted by the router, none confirmed", m.Blocks, m.Confirmed)
	}
}
