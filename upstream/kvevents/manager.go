package kvevents

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvroute/kvroute/proto"
	"github.com/prometheus/client_golang/prometheus"
)

// WorkerConfig is one worker's event feed.
type WorkerConfig struct {
	// Worker is the worker's id (its URL or name); required and unique per Manager.
	Worker string
	// Model is the model the worker serves, passed to the sink; may be empty.
	Model string
	// Endpoint is the engine's ZMQ PUB endpoint, e.g. "tcp://10.0.0.5:5557"; required.
	// A bind-style endpoint ("tcp://*:5557") is not accepted: kvroute connects.
	Endpoint string
	// ReplayEndpoint is the engine's replay ROUTER endpoint, e.g. "tcp://10.0.0.5:5558";
	// empty means gaps cannot be replayed and reset the worker instead.
	ReplayEndpoint string
	// Topic is the ZMQ subscription prefix; vLLM's default topic is "" (everything).
	Topic string
	// DPRanks is how many data-parallel ranks the engine runs (default 1). vLLM publishes
	// rank N on Endpoint's port + N (and ReplayEndpoint's port + N); each rank is followed
	// as its own proto.WorkerKey.
	DPRanks int
}

// Options configure a [Manager].
type Options struct {
	// Sink receives every worker's batches and resets; required.
	Sink Sink
	// Registerer registers the kvroute_events_* metrics; nil disables registration.
	Registerer prometheus.Registerer
	// Metrics, when set, is used instead of building metrics from Registerer.
	Metrics *Metrics
	// Logger logs connections, gaps and resets; nil discards.
	Logger *slog.Logger
	// BackoffMin and BackoffMax bound the reconnect backoff, which doubles per failed
	// attempt with jitter; defaults 100ms and 10s.
	BackoffMin, BackoffMax time.Duration
	// DialTimeout bounds one TCP connect; default 2s.
	DialTimeout time.Duration
	// ReplayTimeout bounds one whole replay exchange; default 10s.
	ReplayTimeout time.Duration
	// DeadAfter is how long a publisher may stay unreachable before its worker's entries
	// are purged; default 30s, negative disables purging.
	DeadAfter time.Duration
	// MaxMessageBytes bounds one ZMQ message (the sum of its frames) read from an events
	// or replay endpoint, in bytes; a larger frame or message closes the connection
	// before anything of it is allocated and counts as dropped (reason "oversize").
	// Default DefaultMaxMessageBytes (4 MiB); negative is an error.
	MaxMessageBytes int64
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (o *Options) setDefaults() error {
	if o.Sink == nil {
		return errors.New("kvevents: Options.Sink is required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.BackoffMin, 100*time.Millisecond)
	def(&o.BackoffMax, 10*time.Second)
	def(&o.DialTimeout, 2*time.Second)
	def(&o.ReplayTimeout, 10*time.Second)
	def(&o.DeadAfter, 30*time.Second)
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if o.MaxMessageBytes < 0 {
		return fmt.Errorf("kvevents: invalid MaxMessageBytes %d", o.MaxMessageBytes)
	}
	if o.BackoffMin < 0 || o.BackoffMax < o.BackoffMin {
		return fmt.Errorf("kvevents: invalid backoff %v..%v", o.BackoffMin, o.BackoffMax)
	}
	if o.Metrics == nil {
		m, err := NewMetrics(o.Registerer)
		if err != nil {
			return err
		}
		o.Metrics = m
	}
	return nil
}

// Manager runs one ZMQ source per configured worker and DP rank, feeding one [Sink].
// Workers can be added, replaced and removed while it runs; a removed worker is reset in
// the sink after its source has stopped, so no batch of it arrives after the reset.
// All methods are safe for concurrent use.
type Manager struct {
	opts Options

	// mu guards every field below.
	mu      sync.Mutex
	ctx     context.Context // nil until Run
	stopped bool            // Run's context has ended: nothing new starts
	workers map[string]*managed
	wg      sync.WaitGroup
}

// managed is one configured worker: its config and one running source per rank.
type managed struct {
	cfg     WorkerConfig
	sources []*source
	cancel  context.CancelFunc // nil while not started
	done    chan struct{}      // closed when every source goroutine has returned
}

// NewManager returns a Manager; call [Manager.Run] to start it.
func NewManager(opts Options) (*Manager, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	return &Manager{opts: opts, workers: map[string]*managed{}}, nil
}

// Validate checks a worker config: an id, dp ranks in [0, 1024], and tcp://host:port
// endpoints with a port for every rank.
func (c WorkerConfig) Validate() error {
	if c.Worker == "" {
		return errors.New("worker id is empty")
	}
	if c.DPRanks < 0 || c.DPRanks > 1024 {
		return fmt.Errorf("worker %q dp ranks %d out of range [0, 1024]", c.Worker, c.DPRanks)
	}
	// The last rank's port is the highest: when it exists, every rank's does ([Manager.Add]
	// relies on it).
	last := max(c.DPRanks, 1) - 1
	if _, err := rankEndpoint(c.Endpoint, last); err != nil {
		return fmt.Errorf("worker %q events endpoint: %w", c.Worker, err)
	}
	if c.ReplayEndpoint != "" {
		if _, err := rankEndpoint(c.ReplayEndpoint, last); err != nil {
			return fmt.Errorf("worker %q replay endpoint: %w", c.Worker, err)
		}
	}
	return nil
}

// rankEndpoint returns ep with its port shifted by rank, as vLLM's
// offset_endpoint_port does. Only tcp endpoints with a host and a numeric port are
// accepted.
func rankEndpoint(ep string, rank int) (string, error) {
	rest, ok := strings.CutPrefix(ep, "tcp://")
	if !ok {
		return "", fmt.Errorf("%q: want tcp://host:port", ep)
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil {
		return "", fmt.Errorf("%q: %w", ep, err)
	}
	if host == "" || host == "*" {
		return "", fmt.Errorf("%q: a bind address; kvroute connects, give the engine's host", ep)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p+rank > 65535 {
		return "", fmt.Errorf("%q: bad port for rank %d", ep, rank)
	}
	return "tcp://" + net.JoinHostPort(host, strconv.Itoa(p+rank)), nil
}

// Set makes the running workers exactly cfgs: new ones are added, missing ones removed
// (and reset in the sink), changed ones restarted (and reset). It validates every config
// before changing anything.
func (m *Manager) Set(cfgs []WorkerConfig) error {
	seen := map[string]bool{}
	for _, c := range cfgs {
		if err := c.Validate(); err != nil {
			return err
		}
		if seen[c.Worker] {
			return fmt.Errorf("worker %q configured twice", c.Worker)
		}
		seen[c.Worker] = true
	}
	m.mu.Lock()
	var gone []string
	for id := range m.workers {
		if !seen[id] {
			gone = append(gone, id)
		}
	}
	m.mu.Unlock()
	for _, id := range gone {
		m.Remove(id)
	}
	for _, c := range cfgs {
		if err := m.Add(c); err != nil {
			return err
		}
	}
	return nil
}

// Add starts following a worker (now if the Manager runs, else when Run starts). Adding
// an id that exists with the same config does nothing; with a different config the old
// feed is removed (and reset) first.
func (m *Manager) Add(c WorkerConfig) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if c.DPRanks == 0 {
		c.DPRanks = 1
	}
	m.mu.Lock()
	old, ok := m.workers[c.Worker]
	m.mu.Unlock()
	if ok {
		if old.cfg == c {
			return nil
		}
		m.Remove(c.Worker)
	}
	w := &managed{cfg: c}
	for r := range c.DPRanks {
		rc := c
		rc.Endpoint, _ = rankEndpoint(c.Endpoint, r)
		if c.ReplayEndpoint != "" {
			rc.ReplayEndpoint, _ = rankEndpoint(c.ReplayEndpoint, r)
		}
		w.sources = append(w.sources, newSource(proto.WorkerKey{ID: c.Worker, DPRank: r}, rc, &m.opts))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, dup := m.workers[c.Worker]; dup {
		return fmt.Errorf("worker %q added concurrently", c.Worker)
	}
	m.workers[c.Worker] = w
	if m.ctx != nil && !m.stopped {
		m.start(w)
	}
	return nil
}

// start launches w's sources under m.ctx. mu must be held.
func (m *Manager) start(w *managed) {
	ctx, cancel := context.WithCancel(m.ctx)
	w.cancel = cancel
	w.done = make(chan struct{})
	var wg sync.WaitGroup
	for _, s := range w.sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.run(ctx)
		}()
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		wg.Wait()
		close(w.done)
	}()
}

// Remove stops following a worker, waits for its sources to stop, resets it in the sink
// ("removed") and drops its metric series. Unknown ids are ignored.
func (m *Manager) Remove(worker string) {
	m.mu.Lock()
	w, ok := m.workers[worker]
	delete(m.workers, worker)
	m.mu.Unlock()
	if !ok {
		return
	}
	if w.cancel != nil {
		w.cancel()
		<-w.done
	}
	for _, s := range w.sources {
		s.tracker.reset(ReasonRemoved)
		s.tracker.wm.forget()
	}
}

// Run starts every added worker and blocks until ctx ends, then stops them all and
// returns nil. Run may be called once.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.ctx != nil {
		m.mu.Unlock()
		return errors.New("kvevents: Manager.Run called twice")
	}
	m.ctx = ctx
	for _, w := range m.workers {
		m.start(w)
	}
	m.mu.Unlock()
	<-ctx.Done()
	m.mu.Lock()
	m.stopped = true // after this no start adds to m.wg, so Wait cannot race with Add
	m.mu.Unlock()
	m.wg.Wait()
	return nil
}

// States returns a snapshot of every worker's feed (one entry per DP rank), sorted by
// worker and rank.
func (m *Manager) States() []WorkerState {
	m.mu.Lock()
	var out []WorkerState
	for _, w := range m.workers {
		for _, s := range w.sources {
			out = append(out, s.state())
		}
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Key.ID != out[j].Key.ID {
			return out[i].Key.ID < out[j].Key.ID
		}
		return out[i].Key.DPRank < out[j].Key.DPRank
	})
	return out
}
