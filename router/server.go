package router

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/router/blockhash"
	"github.com/kvroute/kvroute/router/replica"
	"github.com/kvroute/kvroute/scorer"
	"github.com/kvroute/kvroute/scorer/registry"
	"github.com/kvroute/kvroute/upstream"
)

// Options are what a Server is built from.
type Options struct {
	Config *configs.Config
	Pool   *upstream.Pool
	// Selector chooses workers; nil means the policy named in Config.
	Selector scorer.Selector
	// Registerer receives the router's metrics and Gatherer serves /metrics; nil means a
	// new private registry for both.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// Logger receives the router's logs; nil means slog.Default().
	Logger *slog.Logger
	// Index is the prefix index consulted for each request (an *indexer.Index, or the
	// shared valkeyindex.Index); nil disables matching.
	Index indexer.Backend
	// History is the router's routing history for cache_aware.affinity_weight: an index
	// fed only with the router's own predictions (never with KV events), consulted
	// beside Index, so a worker's affinity for a prompt survives its evictions. nil
	// means no separate history: the affinity is the overlap (as without KV events,
	// where Index itself holds only routing predictions).
	History *indexer.Index
	// Hasher turns requests into block hashes (the configured tokenize mode, usually
	// wrapped in blockhash.Fallback); nil disables hashing.
	Hasher blockhash.Hasher
	// Replica shares load and routing decisions with the other router replicas; nil
	// when replica sync is off.
	Replica *replica.Sync
}

// Server is the OpenAI-compatible routing proxy.
type Server struct {
	cfg      *configs.Config
	pool     *upstream.Pool
	sel      scorer.Selector
	metrics  *metrics
	truth    *truth // predicted against reported cached tokens (truth.go)
	log      *slog.Logger
	srv      *fasthttp.Server
	metricsH fasthttp.RequestHandler
	draining atomic.Bool
	// lns are the listeners Serve was given; shut is set by Shutdown (both under lnMu):
	// fasthttp's Shutdown closes only the listeners its Serve has registered, so one
	// whose Serve had not got that far would be served forever.
	lnMu sync.Mutex
	lns  []net.Listener
	shut bool

	// seriesCache keeps the metric children of each worker and model (series.go).
	seriesCache seriesCache

	// Cache-aware routing: nil index or hasher disable their part.
	index   indexer.Backend
	history *indexer.Index
	hasher  blockhash.Hasher
	replica *replica.Sync
	// prefixes is true when the policy reads prefix overlap (scorer.PrefixUser): only
	// then are prompts hashed and matched.
	prefixes  bool
	blocks    blockSizes
	decisions *decisionLog
	// mismatchLogged limits the block-size mismatch error to once at info level.
	mismatchLogged atomic.Bool

	// Admin API (stats.go): windowed request statistics, the reloadable policy (nil
	// unless it explains its choices) and the admin handler mounted under
	// Config.Admin.PathPrefix (nil when not mounted; set before Serve).
	traffic *trafficStats
	policy  *swappableSelector
	admin   fasthttp.RequestHandler

	// Inbound security (auth.go with its rate limiter, limits.go): the checks of each request,
	// the listeners' TLS configuration (nil: plain) and the open client connections.
	gate     *gate
	tlsConf  *tls.Config
	openConn atomic.Int64
	// budget bounds the request bodies in memory (framing.go).
	budget bodyBudget
	// queue holds the requests that find every worker full (queue.go).
	queue *waitQueue
	// responses maps stored response ids to their workers (responses.go); passthrough
	// is the set of engine paths forwarded by model (passthrough.go).
	responses   *responseMap
	passthrough map[string]struct{}
	// pd is prefill/decode disaggregation's metrics and decode bookkeeping (pd.go).
	pd *pdState
	// dp is the event-loop data plane (data_plane: event_loop, dataplane.go), started
	// by the first Serve (dpOnce, dpErr); nil with fasthttp alone.
	dpOnce sync.Once
	// dpResolverHook, when set (by a test, before Serve), adjusts the data plane's
	// resolver of worker host names before it is used (dataplane_resolve.go).
	dpResolverHook func(*dpResolver)
	dp             *dataPlane
	dpErr          error
}

// New builds a Server; it does not listen until [Server.Serve].
func New(opts Options) (*Server, error) {
	if opts.Config == nil || opts.Pool == nil {
		return nil, errors.New("router: Config and Pool are required")
	}
	s := &Server{
		cfg: opts.Config, pool: opts.Pool, sel: opts.Selector, log: opts.Logger,
		index: opts.Index, history: opts.History, hasher: opts.Hasher, replica: opts.Replica,
		blocks:      blockSizes{configured: opts.Config.CacheAware.BlockSize},
		decisions:   newDecisionLog(256),
		traffic:     newTrafficStats(time.Now()),
		responses:   newResponseMap(opts.Config.Responses.MaxEntries, opts.Config.Responses.TTL),
		passthrough: newPassthrough(opts.Config.Passthrough),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.replica != nil {
		// The peers' stored responses (responses.go) are routed here too.
		s.replica.SetResponseSink(func(id, worker, model string) { s.responses.put(id, worker, model, time.Now()) })
	}
	if s.sel == nil {
		sel, err := NewSelector(opts.Config)
		if err != nil {
			return nil, err
		}
		s.prefixes = registry.UsesPrefixes(sel)
		s.sel, s.policy = wrapSelector(sel)
	} else {
		s.prefixes = registry.UsesPrefixes(s.sel)
	}
	reg, gat := opts.Registerer, opts.Gatherer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, gat = r, r
	}
	m, err := newMetrics(reg, opts.Pool)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	if s.truth, err = newTruth(reg, s.log); err != nil {
		return nil, fmt.Errorf("register router metrics: %w", err)
	}
	s.budget.max = int64(opts.Config.Limits.MaxInflightBodyBytes)
	if s.gate, err = newGate(opts.Config, reg); err != nil {
		return nil, err
	}
	if s.queue, err = newWaitQueue(opts.Config, reg); err != nil {
		return nil, err
	}
	if s.pd, err = newPDState(reg); err != nil {
		return nil, err
	}
	if err := registerResponseMetrics(reg, s.responses); err != nil {
		return nil, err
	}
	if s.tlsConf, err = opts.Config.TLS.ServerConfig(); err != nil {
		return nil, err
	}
	if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kvroute_router_open_connections",
		Help: "Client connections open on the API listener.",
	}, func() float64 { return float64(s.openConn.Load()) })); err != nil {
		return nil, fmt.Errorf("register connection metric: %w", err)
	}
	if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kvroute_router_inflight_body_bytes",
		Help: "Request body bytes held in memory, counted against limits.max_inflight_body_bytes.",
	}, func() float64 { return float64(s.budget.used.Load()) })); err != nil {
		return nil, fmt.Errorf("register body budget metric: %w", err)
	}
	if gat == nil {
		gat = prometheus.DefaultGatherer
	}
	s.metricsH = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(gat, promhttp.HandlerOpts{}))
	lim := opts.Config.Limits
	bodyTimeout := fasthttp.RequestConfig{ReadTimeout: lim.BodyTimeout}
	s.srv = &fasthttp.Server{
		Handler:            s.handle,
		ErrorHandler:       s.handleParseError,
		Name:               "kvroute",
		MaxRequestBodySize: opts.Config.MaxBodyBytes,
		// The handler reads the body itself (framing.go), after checking the framing and
		// reserving its memory.
		StreamRequestBody: true,
		// Multipart bodies (audio uploads, passthrough.go) too: fasthttp's pre-parsing
		// would read them whole, past max_body_bytes and the in-flight budget.
		DisablePreParseMultipartForm: true,
		// Slow clients: the request line and headers within header_timeout, then the
		// body within body_timeout; writes are bounded by guardConn (limits.go).
		ReadTimeout:    lim.HeaderTimeout,
		HeaderReceived: func(*fasthttp.RequestHeader) fasthttp.RequestConfig { return bodyTimeout },
		IdleTimeout:    lim.IdleTimeout,
		ReadBufferSize: lim.MaxHeaderBytes,
		// The guard listener enforces max_connections with a proper answer first.
		Concurrency:                   lim.MaxConnections + 64,
		DisableHeaderNamesNormalizing: true,
		NoDefaultServerHeader:         true,
		NoDefaultContentType:          true,
		CloseOnShutdown:               true,
		Logger:                        fasthttpLogger{s.log},
	}
	return s, nil
}

// Serve accepts connections on ln until [Server.Shutdown]. It returns nil after a
// shutdown. It applies the connection limits and, when configured, TLS to ln.
func (s *Server) Serve(ln net.Listener) error {
	s.lnMu.Lock()
	if s.shut {
		s.lnMu.Unlock()
		_ = ln.Close()
		return nil // shut down before it started: as if it had served and stopped
	}
	s.lns = append(s.lns, ln)
	s.lnMu.Unlock()
	s.gate.setListener(ln.Addr(), s.cfg.AdminToken())
	ln = newGuardListener(ln, s.cfg.Limits, s.gate, &s.openConn, s.tlsConf)
	if s.tlsConf != nil {
		ln = tls.NewListener(ln, s.tlsConf)
	} else if s.cfg.DataPlane == configs.DataPlaneEventLoop {
		s.dpOnce.Do(func() { s.dp, s.dpErr = newDataPlane(s) })
		if s.dpErr != nil {
			return fmt.Errorf("serve: %w", s.dpErr)
		}
		if err := s.dp.serve(ln); err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		return nil
	}
	if err := s.srv.Serve(ln); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// Shutdown stops accepting connections, marks the router not ready, and waits until
// every in-flight request (including streams) has finished or ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	s.lnMu.Lock()
	s.shut = true
	lns := s.lns
	s.lnMu.Unlock()
	// The event loops' listeners are closed here; fasthttp closes its own (and serves
	// the connections the loops handed it until they are idle).
	s.dpOnce.Do(func() {}) // no data plane starts after this
	if s.dp != nil {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}
	dpDone := make(chan error, 1)
	go func() {
		if s.dp == nil {
			dpDone <- nil
			return
		}
		dpDone <- s.dp.shutdown(ctx)
	}()
	err := s.srv.ShutdownWithContext(ctx)
	if dpErr := <-dpDone; err == nil {
		err = dpErr
	}
	// A Serve that had not registered its listener with fasthttp yet: its Accept fails
	// now and it returns. Closing a listener fasthttp closed already is harmless.
	for _, ln := range lns {
		_ = ln.Close()
	}
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// handle is the endpoint table.
func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	var body inboundBody
	defer s.releaseBody(ctx, &body)
	if err := s.readBody(ctx, &body); err != nil {
		s.fail(ctx, "", err)
		return
	}
	if !s.admit(ctx) {
		return
	}
	switch string(ctx.Path()) {
	case "/v1/chat/completions":
		s.handleInference(ctx, epChat)
	case "/v1/completions":
		s.handleInference(ctx, epCompletions)
	case "/v1/embeddings":
		s.handleInference(ctx, epEmbeddings)
	case "/v1/responses":
		s.handleResponses(ctx)
	case "/v1/models":
		s.onlyGet(ctx, s.handleModels)
	case "/health":
		s.onlyGet(ctx, func(ctx *fasthttp.RequestCtx) { writeJSON(ctx, 200, `{"status":"ok"}`) })
	case "/ready":
		s.onlyGet(ctx, s.handleReady)
	case "/metrics":
		s.onlyGet(ctx, s.metricsH)
	default:
		if s.admin != nil && s.ownedByAdmin(ctx.Path()) {
			s.admin(ctx)
			return
		}
		if _, ok := s.passthrough[string(ctx.Path())]; ok {
			s.handlePassthrough(ctx, string(ctx.Path()))
			return
		}
		if bytes.HasPrefix(ctx.Path(), []byte("/v1/responses/")) {
			s.handleResponseByID(ctx)
			return
		}
		writeError(ctx, fmt.Errorf("%w: %s", errNotFound, ctx.Path()))
	}
}

func (s *Server) onlyGet(ctx *fasthttp.RequestCtx, h fasthttp.RequestHandler) {
	if !ctx.IsGet() && !ctx.IsHead() {
		ctx.Response.Header.Set("Allow", "GET, HEAD")
		writeError(ctx, fmt.Errorf("%w: %s %s", errMethod, ctx.Method(), ctx.Path()))
		return
	}
	h(ctx)
}

func (s *Server) handleReady(ctx *fasthttp.RequestCtx) {
	switch {
	case s.draining.Load():
		writeError(ctx, errShuttingDown)
	case !s.pool.AnyAvailable():
		writeError(ctx, ErrNoHealthyWorker)
	default:
		writeJSON(ctx, 200, `{"status":"ready"}`)
	}
}

func (s *Server) handleModels(ctx *fasthttp.RequestCtx) {
	b := []byte(`{"object":"list","data":[`)
	for i, m := range s.pool.Models() {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":`...)
		b = appendJSONString(b, m)
		b = append(b, `,"object":"model","owned_by":"kvroute"}`...)
	}
	b = append(b, "]}"...)
	writeJSON(ctx, 200, string(b))
}

// handleParseError answers requests fasthttp could not read (malformed HTTP, headers
// over the limit, too slow) with an OpenAI-shaped error and closes the connection. The
// message is fixed for each class: fasthttp's error text quotes its read buffer, which
// may hold the next pipelined request, another client's behind a load balancer.
func (s *Server) handleParseError(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	var ne net.Error
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		s.gate.rejected[reasonBodyTooLarge].Inc()
		err = s.errBodyTooLarge()
	case errors.As(err, &small):
		s.gate.rejected[reasonHeaderTooLarge].Inc()
		err = fmt.Errorf("%w: the limit is %d bytes", errHeaderTooLarge, s.cfg.Limits.MaxHeaderBytes)
	case errors.As(err, &ne) && ne.Timeout():
		s.gate.rejected[reasonSlowClient].Inc()
		err = s.errTimeout()
	default:
		s.gate.rejected[reasonMalformed].Inc()
		err = errMalformed
	}
	writeError(ctx, err)
	ctx.SetConnectionClose()
	s.metrics.requests.WithLabelValues("", "", statusLabel(statusOf(err).code)).Inc()
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, body string) {
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBodyString(body)
}

// fasthttpLogger routes fasthttp's internal messages to slog at debug level.
type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	if f.l.Enabled(context.Background(), slog.LevelDebug) {
		f.l.Debug(fmt.Sprintf(format, args...), "component", "fasthttp")
	}
}
