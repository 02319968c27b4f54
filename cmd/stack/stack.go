package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/dynamic"
	k8sclient "k8s.io/client-go/kubernetes"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/indexer/valkeyindex"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/router"
	"github.com/kvroute/kvroute/router/blockhash"
	"github.com/kvroute/kvroute/router/replica"
	"github.com/kvroute/kvroute/scorer/registry"
	"github.com/kvroute/kvroute/upstream"
	"github.com/kvroute/kvroute/upstream/discovery"
	"github.com/kvroute/kvroute/upstream/kvevents"
	"github.com/kvroute/kvroute/upstream/kvevents/natsbus"
	"github.com/kvroute/kvroute/upstream/scrape"
)

// Stack is a router with everything it runs: the worker pool, the prefix index, the
// workers' KV-event feeds, the prompt hasher and the HTTP server. Build it with
// [NewStack], run it with [Stack.Run].
type Stack struct {
	Config   *configs.Config
	Registry *prometheus.Registry
	Pool     *upstream.Pool
	Index    *indexer.Index     // this process's index; with index.backend valkey, its part of the shared one (Shared.Index)
	Shared   *valkeyindex.Index // the index shared in Valkey; nil with index.backend memory
	History  *indexer.Index     // routing history for cache_aware.affinity_weight; nil without KV events or with the weight 0
	Events   *kvevents.Manager  // ZMQ feeds (of the workers that publish events); nil when events.source is nats
	NATS     *natsbus.Consumer  // NATS feed; nil unless events.source is nats
	Replica  *replica.Sync      // state shared with other replicas; nil unless replica.nats_url is set
	Scraper  *scrape.Scraper
	Server   *router.Server
	// ReloadOnSIGHUP makes Run reload the config file at each SIGHUP (kvroute serve).
	ReloadOnSIGHUP bool
	// KubeClient is the Kubernetes API client of discovery.kubernetes; nil (the default)
	// builds one from the config (kubeconfig, in-cluster, $KUBECONFIG). Tests set
	// client-go's fake clientset here before Run.
	KubeClient k8sclient.Interface
	// KubeDynamic reads discovery.kubernetes.inference_pool's InferencePool; nil builds
	// one as KubeClient. Tests set client-go's fake dynamic client here.
	KubeDynamic dynamic.Interface
	log         *slog.Logger
	closers     []func()
	admin       adminState // the admin API (admin.go)
	// sources are the discovery sources (fleet.go); feedsOn is set once Run has started
	// the event feeds, from when membership changes update them.
	sources []discovery.Source
	feedsOn atomic.Bool

	// Staleness judges the ZMQ feeds against events.max_staleness (staleness.go); nil
	// without Events.
	Staleness *kvevents.Staleness
}

// NewStack builds every part of a router from cfg; nothing runs until [Stack.Run].
func NewStack(cfg *configs.Config, log *slog.Logger) (*Stack, error) {
	if log == nil {
		log = slog.Default()
	}
	st := &Stack{Config: cfg, Registry: prometheus.NewRegistry(), log: log}
	st.admin.applied, st.admin.workers = cfg.CacheAware, cfg.Workers // what a reload compares with
	reg := st.Registry
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var err error
	if st.Pool, err = upstream.NewPool(cfg, reg); err != nil {
		return nil, err
	}
	st.Pool.SetLogger(log)
	st.Pool.SetHook(st.onMembership)
	st.closers = append(st.closers, st.Pool.CloseIdleConnections)
	for _, w := range cfg.Warnings() {
		log.Warn("config: " + w)
	}
	if err := st.newIndex(reg); err != nil {
		return nil, err
	}
	hasher, err := st.newHasher(reg)
	if err != nil {
		return nil, err
	}
	if err := st.newEvents(reg); err != nil {
		return nil, err
	}
	if err := st.newStaleness(reg); err != nil {
		return nil, err
	}
	if err := st.newReplica(reg); err != nil {
		return nil, err
	}
	if registry.NeedsPrefixes(cfg.Policy) && cfg.CacheAware.AffinityWeight > 0 && st.eventsExpected() {
		// With KV events the index forgets a block when the worker evicts it; the
		// history remembers where the router sent it (predictions only, no metrics).
		if st.History, err = indexer.New(indexer.Options{
			MaxBlocks: cfg.CacheAware.MaxIndexedBlocks, PredictedTTL: cfg.CacheAware.PredictionTTL,
		}); err != nil {
			return nil, fmt.Errorf("routing history: %w", err)
		}
	}
	st.Server, err = router.New(router.Options{
		Config: cfg, Pool: st.Pool, Registerer: reg, Gatherer: reg, Logger: log,
		Index: st.Backend(), History: st.History, Hasher: hasher, Replica: st.Replica,
	})
	if err != nil {
		return nil, err
	}
	st.Scraper, err = scrape.New(scrape.Config{Interval: cfg.CacheAware.MetricsInterval, Timeout: cfg.Health.Timeout, Client: st.Pool.HTTPClient()},
		st.scrapeTargets, st.Server.OnScrape, reg)
	if err != nil {
		return nil, fmt.Errorf("scrape: %w", err)
	}
	return st, nil
}

// eventsExpected reports whether workers publish KV events: through NATS, or over ZMQ
// from a static worker or a discovery source that names an events port. (A worker added
// through the admin API with events does not count: the history is built at start.)
func (st *Stack) eventsExpected() bool {
	cfg := st.Config
	d := cfg.Discovery
	return st.NATS != nil ||
		slices.ContainsFunc(cfg.Workers, func(w configs.Worker) bool { return w.Events != "" }) ||
		d.DNS != nil && d.DNS.EventsPort != 0 || d.Kubernetes != nil && d.Kubernetes.EventsPort != 0
}

// scrapeTargets lists every worker's /metrics for the scraper.
func (st *Stack) scrapeTargets() []scrape.Target {
	ws := st.Pool.Workers()
	out := make([]scrape.Target, len(ws))
	for i, w := range ws {
		out[i] = scrape.Target{ID: w.ID, URL: w.URL}
	}
	return out
}

// newHasher builds the configured tokenize modes: the default one and each model's
// override (tokenize.models), every exact mode wrapped so that a failure falls back to
// approx mode for that request.
func (st *Stack) newHasher(reg prometheus.Registerer) (blockhash.Hasher, error) {
	m, err := blockhash.NewMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("tokenize metrics: %w", err)
	}
	caches := newEncoderCaches()
	if reg != nil {
		if err := reg.Register(caches); err != nil {
			return nil, fmt.Errorf("tokenize cache metrics: %w", err)
		}
	}
	var engine blockhash.Hasher // shared by every model in engine or auto mode
	buildEngine := func() (blockhash.Hasher, error) {
		if engine == nil {
			eng, err := blockhash.NewEngine(blockhash.EngineOptions{
				Pick: st.pickTokenizer, Timeout: st.Config.Tokenize.Timeout, Metrics: m,
				CacheEntries: st.Config.Tokenize.CacheEntries,
				Client:       st.Pool.HTTPClient(), // the workers' API keys and TLS, and only them
			})
			if err != nil {
				return nil, fmt.Errorf("tokenize: %w", err)
			}
			st.closers = append(st.closers, eng.Close)
			engine = blockhash.NewFallback(eng, m)
		}
		return engine, nil
	}
	build := func(spec string) (blockhash.Hasher, error) {
		mode, path, err := blockhash.ParseMode(spec)
		if err != nil {
			return nil, err
		}
		switch mode {
		case blockhash.ModeApprox:
			return blockhash.Approx{}, nil
		case blockhash.ModeLocal:
			enc, err := caches.load(path)
			if err != nil {
				return nil, fmt.Errorf("tokenize mode %q (use engine if the tokenizer cannot be loaded): %w", spec, err)
			}
			return blockhash.NewFallback(blockhash.NewLocal(enc), m), nil
		case blockhash.ModeAuto:
			eng, err := buildEngine()
			if err != nil {
				return nil, err
			}
			return st.newAuto(eng, m, caches.load)
		}
		return buildEngine()
	}
	def, err := build(st.Config.Tokenize.Mode)
	if err != nil {
		return nil, err
	}
	if len(st.Config.Tokenize.Models) == 0 {
		return def, nil
	}
	pm := perModelHasher{def: def, byModel: map[string]blockhash.Hasher{}}
	for model, spec := range st.Config.Tokenize.Models {
		if pm.byModel[model], err = build(spec); err != nil {
			return nil, fmt.Errorf("tokenize.models[%q]: %w", model, err)
		}
	}
	return pm, nil
}

// perModelHasher hashes each request with its model's tokenize mode; an adapter's request
// (Request.Model is its base model) takes its base model's mode, as the adapter shares the
// base model's tokenizer.
type perModelHasher struct {
	def     blockhash.Hasher
	byModel map[string]blockhash.Hasher
}

func (p perModelHasher) Hash(ctx context.Context, req *blockhash.Request, dst []proto.BlockHash) (blockhash.Result, error) {
	if h, ok := p.byModel[req.Model]; ok {
		return h.Hash(ctx, req, dst)
	}
	return p.def.Hash(ctx, req, dst)
}

// pickTokenizer returns the least loaded available worker serving model, for /tokenize.
func (st *Stack) pickTokenizer(model string) (string, bool) {
	var best *upstream.Worker
	for _, w := range st.Pool.Workers() {
		if w.Available() && w.Serves(model) && (best == nil || w.InFlight() < best.InFlight()) {
			best = w
		}
	}
	if best == nil {
		return "", false
	}
	return best.URL, true
}

// indexSink feeds KV events into the index. A feed reset (engine restart, unrecoverable
// gap, dead publisher) clears the worker's entries rather than leaving them stale (a
// feed's first batch clears only the event-backed ones, keeping predictions); a
// removed feed (kvevents.Manager.Set without the worker, natsbus.Consumer.Forget)
// removes the worker from the index.
func (st *Stack) indexSink() kvevents.Sink {
	ix := st.Backend()
	return kvevents.SinkFuncs{
		ApplyFunc: func(w proto.WorkerKey, model string, b *proto.Batch) { ix.Apply(w, model, b) },
		ResetFunc: func(k proto.WorkerKey, reason string) {
			if reason == kvevents.ReasonRemoved {
				// The worker left the feeds for good: free its index id too.
				st.log.Info("worker removed from the index", "worker", k.String())
				ix.RemoveWorker(k)
				return
			}
			st.log.Info("worker index cleared", "worker", k.String(), "reason", reason)
			if reason == kvevents.ReasonStart {
				// A new feed says nothing about the routing decisions of the last
				// seconds: keep the predictions, drop only what the events had said.
				ix.ClearEvents(k)
				return
			}
			ix.ClearWorker(k)
		},
	}
}

// newEvents builds the event source: the manager of the workers' ZMQ feeds (set by
// [Stack.setFeeds] once the workers' models are known), or a NATS consumer.
func (st *Stack) newEvents(reg prometheus.Registerer) error {
	ev := st.Config.Events
	if ev.Source == "nats" {
		nc, err := nats.Connect(ev.NATS.URL, nats.Name("kvroute"), nats.MaxReconnects(-1))
		if err != nil {
			return fmt.Errorf("events: connect to NATS %s: %w", ev.NATS.URL, err)
		}
		st.closers = append(st.closers, nc.Close)
		c, err := natsbus.NewConsumer(nc, st.indexSink(), natsbus.ConsumerOptions{
			Prefix: ev.NATS.SubjectPrefix, JetStream: ev.NATS.JetStream, Durable: ev.NATS.Durable,
			DeadAfter: ev.DeadAfter, Registerer: reg, Logger: st.log,
		})
		if err != nil {
			return fmt.Errorf("events: %w", err)
		}
		st.NATS = c
		return nil
	}
	// Always built: a worker that joins at run time may publish events.
	mgr, err := kvevents.NewManager(kvevents.Options{
		Sink: st.indexSink(), Registerer: reg, Logger: st.log, DeadAfter: ev.DeadAfter,
		MaxMessageBytes: ev.MaxMessageBytes,
	})
	if err != nil {
		return fmt.Errorf("events: %w", err)
	}
	st.Events = mgr
	return nil
}

// newReplica builds the replica sync when replica.nats_url is set. The connection
// retries in the background: a NATS server down at start delays the sync, never the
// router.
func (st *Stack) newReplica(reg prometheus.Registerer) error {
	rc := st.Config.Replica
	if rc.NATSURL == "" {
		return nil
	}
	nc, err := nats.Connect(rc.NATSURL, nats.Name("kvroute-replica"), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true))
	if err != nil {
		return fmt.Errorf("replica: connect to NATS %s: %w", rc.NATSURL, err)
	}
	st.closers = append(st.closers, nc.Close)
	st.Replica, err = replica.New(replica.Options{
		Conn: nc, Pool: st.Pool, Index: st.Backend(), ID: rc.ID, Cluster: rc.Cluster,
		FlushInterval: rc.FlushInterval, Heartbeat: rc.Heartbeat, ExpireAfter: rc.ExpireAfter,
		PredictionTTL: st.Config.CacheAware.PredictionTTL, Registerer: reg, Logger: st.log,
	})
	if err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	return nil
}

// startReplica restores a peer's index (before the event feeds start: the restore
// replaces the dumped workers' entries) and starts the sync.
func (st *Stack) startReplica(ctx context.Context, goRun func(func(context.Context))) {
	if st.Replica == nil {
		return
	}
	if t := st.Config.Replica.WarmTimeout; t > 0 {
		if ok, err := st.Replica.WarmStart(ctx, t); ok {
			st.log.Info("replica: index restored from a peer's dump", "blocks", st.Index.Stats().Blocks)
		} else {
			st.log.Info("replica: starting cold", "reason", err)
		}
	}
	goRun(func(c context.Context) {
		if err := st.Replica.Run(c); err != nil && c.Err() == nil {
			st.log.Error("replica sync stopped", "err", err)
		}
	})
}

// startBackground starts everything but the HTTP listeners: discovery, the pool and
// its health checks, the index's maintenance, the scraper, the snapshot file, the
// replica sync and the event feeds. goRun runs a loop until Run's background context
// ends.
func (st *Stack) startBackground(ctx context.Context, goRun func(func(context.Context))) error {
	log := st.log
	if err := st.newSources(); err != nil {
		return err
	}
	st.Pool.Start(ctx)
	goRun(st.Pool.Run)
	goRun(func(c context.Context) { st.Backend().Run(c, 0) })
	if st.History != nil {
		goRun(func(c context.Context) { st.History.Run(c, 0) })
	}
	goRun(st.Scraper.Run)
	st.restoreSnapshot() // before the replica's warm start and the feeds: both replace what it restores
	goRun(st.runSnapshots)
	st.startReplica(ctx, goRun)
	if st.Events != nil {
		st.feedsOn.Store(true)
		if err := st.setFeeds(); err != nil {
			return err
		}
		goRun(func(c context.Context) { _ = st.Events.Run(c) })
		goRun(st.Staleness.Run)
	}
	st.runDiscovery(goRun)
	if st.ReloadOnSIGHUP {
		st.watchSIGHUP(goRun)
	}
	if st.NATS != nil {
		goRun(func(c context.Context) {
			if err := st.NATS.Run(c); err != nil && c.Err() == nil {
				log.Error("NATS event consumer stopped", "err", err)
			}
		})
	}
	for _, w := range st.Pool.Workers() {
		s := w.State()
		log.Info("worker", "id", s.ID, "url", s.URL, "available", s.Available, "models", s.Models, "events", w.Events, "last_error", s.LastError)
	}

	return nil
}

// background returns goRun, which runs a loop on its own goroutine with a context that
// ends at stop, and stop, which ends them, waits for them and runs the closers: what
// Run and RunIndexer share.
func (st *Stack) background() (goRun func(func(context.Context)), stop func()) {
	bg, stopBG := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	goRun = func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(bg) }()
	}
	return goRun, func() {
		stopBG()
		wg.Wait()
		for _, c := range st.closers {
			c()
		}
	}
}

// Run serves on ln until ctx ends, then drains: it stops accepting, lets in-flight
// requests finish for up to Config.Timeouts.Shutdown, stops the background loops and
// returns. ready, if not nil, is called once the workers have been checked and the
// listener is serving.
func (st *Stack) Run(ctx context.Context, ln net.Listener, ready func()) error {
	cfg, log := st.Config, st.log
	goRun, stop := st.background()
	defer stop()
	if err := st.startBackground(ctx, goRun); err != nil {
		return err
	}
	if err := st.startAdmin(ln); err != nil {
		return err
	}
	defer st.stopAdmin()
	served := make(chan error, 1)
	go func() { served <- st.Server.Serve(ln) }()
	log.Info("kvroute serving", "listen", ln.Addr().String(), "policy", cfg.Policy, "tokenize", cfg.Tokenize.Mode, "workers", len(cfg.Workers))
	if ready != nil {
		ready()
	}
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info("draining", "deadline", cfg.Timeouts.Shutdown.String())
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Timeouts.Shutdown)
	defer cancel()
	if err := st.Server.Shutdown(sctx); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("drain did not finish within %s: %w", cfg.Timeouts.Shutdown, err)
		}
		return err
	}
	if err := <-served; err != nil {
		return err
	}
	log.Info("drained")
	return nil
}

// Run builds a [Stack] from cfg and runs it on ln until ctx ends. It is what
// `kvroute serve` runs.
func Run(ctx context.Context, cfg *configs.Config, ln net.Listener, log *slog.Logger, ready func(*router.Server)) error {
	st, err := NewStack(cfg, log)
	if err != nil {
		return err
	}
	st.ReloadOnSIGHUP = cfg.Source != ""
	return st.Run(ctx, ln, func() {
		if ready != nil {
			ready(st.Server)
		}
	})
}

// Blocking implements blockhash.Blocker: as the model's mode.
func (p perModelHasher) Blocking(model string) bool {
	if h, ok := p.byModel[model]; ok {
		return blockhash.MayBlock(h, model)
	}
	return blockhash.MayBlock(p.def, model)
}
