package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/cmd/stack"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/upstream/kvevents/natsbus"
)

// Model is the model name every simulated worker serves.
const Model = "m"

// EnvOptions describe an [Env].
type EnvOptions struct {
	// Workers is the fleet size. Default 3.
	Workers int
	// NATSURL, when set, makes the router read KV events from NATS JetStream (events.source
	// nats, durable consumer "chaos") instead of the workers' ZMQ sockets.
	NATSURL string
	// Mutate, when not nil, adjusts the fleet and router configs before they start.
	Mutate func(*sim.FleetConfig, *configs.Config)
	// ConfigFile, when set, is where the router's config (workers included) is written
	// as YAML; the router is then started from that file (configs.LoadFile), as `kvroute
	// serve --config` is, so that it can reload it.
	ConfigFile string
	// Logger receives the router's logs; nil discards them.
	Logger *slog.Logger
}

// Env is a router [stack.Stack] in front of a kvsim fleet, both on loopback.
type Env struct {
	Fleet  *sim.Fleet
	Stack  *stack.Stack
	Config *configs.Config
	// URL is the router's base URL.
	URL string

	cancel context.CancelFunc
	done   chan error
	ln     net.Listener
}

// ChaosConfig returns the router config the suite runs with: the defaults with every
// timeout short enough that a fault shows within a second or two, and fast health
// checks so ejection and re-admission fit in a test.
func ChaosConfig() configs.Config {
	cfg := configs.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Health.Interval = 100 * time.Millisecond
	cfg.Health.EjectBase = 300 * time.Millisecond
	cfg.Health.EjectMax = 2 * time.Second
	cfg.Timeouts.Connect = time.Second
	cfg.Timeouts.FirstByte = time.Second
	cfg.Timeouts.Idle = 2 * time.Second
	cfg.Timeouts.Total = 8 * time.Second
	// fasthttp counts a connection that has not carried a request yet as busy for 5 s
	// after accepting it, so a drain can take that long with idle client connections.
	cfg.Timeouts.Shutdown = 15 * time.Second
	// No admin listener on the default fixed port: tests run side by side.
	cfg.Admin.Listen = ""
	// KVROUTE_TEST_DATA_PLANE=event_loop runs the suite on the event-loop data plane
	// (make test runs the quick subset both ways).
	if dp := os.Getenv("KVROUTE_TEST_DATA_PLANE"); dp != "" {
		cfg.DataPlane = dp
	}
	return cfg
}

// StartEnv starts a fleet and a router in front of it, and returns once the router
// serves and (with ZMQ events) every worker's event feed is subscribed. Stop it with
// [Env.Close].
func StartEnv(opts EnvOptions) (*Env, error) {
	if opts.Workers <= 0 {
		opts.Workers = 3
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	fc := sim.DefaultFleetConfig()
	fc.Workers = opts.Workers
	fc.Worker.Model = Model
	cfg := ChaosConfig()
	if opts.NATSURL != "" {
		cfg.Events.Source = "nats"
		cfg.Events.NATS = configs.NATSEvents{URL: opts.NATSURL, JetStream: true, Durable: "chaos", SubjectPrefix: natsbus.DefaultPrefix}
	}
	if opts.Mutate != nil {
		opts.Mutate(&fc, &cfg)
	}
	fleet, err := sim.StartFleet(context.Background(), fc)
	if err != nil {
		return nil, fmt.Errorf("start fleet: %w", err)
	}
	for _, info := range fleet.Infos() {
		wc := configs.Worker{ID: info.ID, URL: info.URL, MaxConns: 256}
		if opts.NATSURL == "" {
			wc.Events, wc.Replay = info.Events, info.Replay
		}
		cfg.Workers = append(cfg.Workers, wc)
	}
	if opts.ConfigFile != "" {
		loaded, err := writeAndLoad(opts.ConfigFile, &cfg)
		if err != nil {
			_ = fleet.Close()
			return nil, err
		}
		cfg = *loaded
	}
	e := &Env{Fleet: fleet, Config: &cfg}
	if err := e.startRouter(log); err != nil {
		_ = fleet.Close()
		return nil, err
	}
	if opts.NATSURL == "" {
		if !poll.Until(10*time.Second, func() bool {
			for _, w := range fleet.Workers() {
				if !w.EventsSubscribed() {
					return false
				}
			}
			return true
		}) {
			e.Close()
			return nil, errors.New("event feeds not subscribed after 10s")
		}
	}
	return e, nil
}

// writeAndLoad writes cfg to path as YAML and loads it back.
func writeAndLoad(path string, cfg *configs.Config) (*configs.Config, error) {
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("marshal router config: %w", err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("write router config: %w", err)
	}
	loaded, err := configs.LoadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load router config: %w", err)
	}
	return loaded, nil
}

func (e *Env) startRouter(log *slog.Logger) error {
	if err := e.Config.Validate(); err != nil {
		return fmt.Errorf("router config: %w", err)
	}
	st, err := stack.NewStack(e.Config, log)
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	ln, err := net.Listen("tcp", e.Config.Listen)
	if err != nil {
		return fmt.Errorf("router listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- st.Run(ctx, ln, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		return fmt.Errorf("router run: %w", err)
	}
	if st.NATS != nil {
		select {
		case <-st.NATS.Ready():
		case <-time.After(10 * time.Second):
			cancel()
			<-done
			return errors.New("router NATS consumer not ready after 10s")
		}
	}
	e.Stack, e.URL, e.cancel, e.done, e.ln = st, "http://"+ln.Addr().String(), cancel, done, ln
	return nil
}

// Stop cancels the router's context (what SIGTERM does in `kvroute serve`) and returns
// what Stack.Run returned once it has drained. Only the first call stops; later ones
// return nil.
func (e *Env) Stop() error {
	if e.cancel == nil {
		return nil
	}
	e.cancel()
	e.cancel = nil
	return <-e.done
}

// Close stops the router, then the fleet.
func (e *Env) Close() {
	_ = e.Stop()
	_ = e.Fleet.Close()
}

// Worker returns the simulated worker with the given id, or nil.
func (e *Env) Worker(id string) *sim.Worker {
	for _, w := range e.Fleet.Workers() {
		if w.ID() == id {
			return w
		}
	}
	return nil
}

// Bookkeeping is the router's load accounting summed over every worker.
type Bookkeeping struct {
	InFlight, PendingPrefillTokens, ActiveBlocks int64
}

// Zero reports whether nothing is accounted.
func (b Bookkeeping) Zero() bool { return b == Bookkeeping{} }

// Bookkeeping returns the router's current load accounting, summed over the workers.
func (e *Env) Bookkeeping() Bookkeeping {
	var b Bookkeeping
	for _, w := range e.Stack.Pool.Workers() {
		b.InFlight += w.InFlight()
		b.PendingPrefillTokens += w.PendingPrefillTokens()
		b.ActiveBlocks += w.ActiveBlocks()
	}
	return b
}

// Metric returns the sum of every sample of the named counter or gauge in the router's
// registry (0 when absent).
func (e *Env) Metric(name string) float64 {
	mfs, err := e.Stack.Registry.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// IndexedBlocks returns how many confirmed GPU blocks the router's index holds for the
// worker.
func (e *Env) IndexedBlocks(id string) int64 {
	for _, w := range e.Stack.Index.Stats().Workers {
		if w.Worker.ID == id {
			return w.Blocks[indexer.TierGPU]
		}
	}
	return 0
}

// IndexMatchesCaches reports whether, for every worker, the router's index holds as
// many confirmed blocks as the worker's KV cache has distinct blocks, and describes the
// first mismatch.
func (e *Env) IndexMatchesCaches() (bool, string) {
	for _, w := range e.Fleet.Workers() {
		want := int64(CachedBlocks(w))
		if got := e.IndexedBlocks(w.ID()); got != want {
			why := fmt.Sprintf("worker %s: index holds %d blocks, its cache %d", w.ID(), got, want)
			if e.Stack.Events != nil {
				for _, s := range e.Stack.Events.States() {
					if s.Key.ID == w.ID() {
						why += fmt.Sprintf(" (feed: seq %d, batches %d, gaps %d, replays %d, resets %d, reconnects %d, last reset %q, last error %q; worker next seq %d)",
							s.LastSeq, s.Batches, s.Gaps, s.Replays, s.Resets, s.Reconnects, s.LastReset, s.LastError, w.Stats().NextSeq)
					}
				}
			}
			st := e.Stack.Index.Stats()
			why += fmt.Sprintf(" (index: dropped %v, evictions %v, clears %d)", st.Dropped, st.Evictions, st.Clears)
			return false, why
		}
	}
	return true, ""
}

// CachedBlocks returns the number of distinct blocks in w's KV cache. kvsim, like vLLM,
// may cache two copies of a block that two requests computed at the same time; the index
// holds it once.
func CachedBlocks(w *sim.Worker) int {
	hs := w.CachedBlockHashes()
	seen := make(map[uint64]struct{}, len(hs))
	for _, h := range hs {
		seen[h] = struct{}{}
	}
	return len(seen)
}

// indexWithinCaches reports whether, for every worker, the router's index holds no more
// confirmed blocks than the worker's cache (no stale entries), and describes the first
// worker where it does.
func (e *Env) indexWithinCaches() (bool, string) {
	for _, w := range e.Fleet.Workers() {
		have := int64(CachedBlocks(w))
		if got := e.IndexedBlocks(w.ID()); got > have {
			return false, fmt.Sprintf("worker %s: index holds %d blocks, its cache only %d", w.ID(), got, have)
		}
	}
	return true, ""
}

// totalIndexed returns the confirmed GPU blocks the index holds over all workers.
func (e *Env) totalIndexed() int64 {
	var n int64
	for _, w := range e.Fleet.Workers() {
		n += e.IndexedBlocks(w.ID())
	}
	return n
}
