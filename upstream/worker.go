package upstream

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/configs"
)

// Worker is one inference worker. It must not be copied.
type Worker struct {
	// ID is the configured worker id; URL its base URL without a trailing slash.
	ID  string
	URL string
	// Events and Replay are the worker's ZMQ KV-event endpoints; "" when not configured.
	Events, Replay string
	// DPRanks is the engine's data-parallel size (1 without data parallelism).
	DPRanks int
	// Source is the membership source the worker came from (static, api, dns,
	// kubernetes) and Joined when it joined the pool.
	Source string
	Joined time.Time
	// Config is the worker's settings as its source gave them, defaults filled.
	Config configs.Worker

	host string
	tls  bool
	// auth is the Authorization header value sent on every request to the worker
	// ("Bearer <key>"); nil when no key is configured. tlsConf is the TLS configuration
	// of an https:// worker (nil for http://) and httpT the net/http transport of the
	// calls made with net/http (see Pool.HTTPClient).
	auth    []byte
	tlsConf *tls.Config
	httpT   *http.Transport
	// stream carries streaming requests (header wait bounded by the first-byte timeout),
	// plain everything else (bounded by the total timeout only).
	stream, plain *fasthttp.HostClient

	inFlight       atomic.Int64
	lastRouted     atomic.Int64 // unix ns of the last Begin; 0 before the first
	pendingPrefill atomic.Int64
	activeBlocks   atomic.Int64
	// prefillNsPerToken estimates the worker's prefill speed (see Load).
	prefillNsPerToken atomic.Int64
	available         atomic.Bool
	// notReady is set while the worker's membership source says it must take no new
	// request (a pod whose Ready condition is false); leaving once it starts to leave.
	notReady atomic.Bool
	leaving  atomic.Bool
	metrics  atomic.Pointer[EngineMetrics]
	drain    drainState // see drain.go

	// loadMu guards loads, the open Load entries (see load.go), estimates, the open
	// loads with an estimated first token, and their estimateAt.
	loadMu    sync.Mutex
	loads     loadList
	estimates estimateHeap
	// nextEstimate is the earliest estimateAt of an open load (unix ns; 0: none), written
	// under loadMu (see Load.EstimateFirstToken).
	nextEstimate atomic.Int64
	// fixedModels is true when the config lists the worker's models, so discovery is off.
	fixedModels bool

	// mu guards the fields below.
	mu     sync.Mutex
	models []string
	// bases are the models of models that are base models, not adapters (see
	// ModelList); empty for models set by config, whose first one is the base.
	bases        []string
	changes      []StateChange // the last maxChanges state changes, oldest first
	wasAvailable bool
	checkHealthy bool      // the last active checks passed
	checkFails   int       // consecutive failed active checks
	reqFails     int       // consecutive failed requests
	ejectedUntil time.Time // zero when not ejected
	ejectStreak  int       // ejections in a row without a successful request between
	// suspect is set when a request timed out on the worker and cleared by a successful
	// generation probe (see Pool.check); a suspect worker is not re-admitted without one.
	suspect bool
	lastErr string
}

func newWorker(wc configs.Worker, cfg *configs.Config) (*Worker, error) {
	t := cfg.Timeouts
	u, err := url.Parse(wc.URL)
	if err != nil {
		return nil, fmt.Errorf("worker %q: parse url: %w", wc.ID, err)
	}
	key, err := cfg.WorkerAPIKey(wc)
	if err != nil {
		return nil, fmt.Errorf("worker %q: %w", wc.ID, err)
	}
	tlsConf, err := cfg.WorkerTLS(wc)
	if err != nil {
		return nil, fmt.Errorf("worker %q: %w", wc.ID, err)
	}
	w := &Worker{
		ID:          wc.ID,
		URL:         u.Scheme + "://" + u.Host,
		Events:      wc.Events,
		Replay:      wc.Replay,
		DPRanks:     max(wc.DPRanks, 1),
		host:        u.Host,
		tls:         u.Scheme == "https",
		models:      slices.Clone(wc.Models),
		fixedModels: len(wc.Models) > 0,
		Config:      wc,
		tlsConf:     tlsConf,
	}
	if key != "" {
		w.auth = []byte("Bearer " + key)
	}
	w.prefillNsPerToken.Store(defaultPrefillNsPerToken)
	if u.Port() == "" {
		w.host = net.JoinHostPort(u.Hostname(), map[bool]string{true: "443", false: "80"}[w.tls])
	}
	w.stream = w.newClient(wc.MaxConns, t.Connect, t.FirstByte)
	w.plain = w.newClient(wc.MaxConns, t.Connect, 0)
	w.httpT = w.newTransport(t.Connect)
	return w, nil
}

// newClient returns a keep-alive pool to the worker. firstByte > 0 bounds the wait for
// each response's first byte (see headerTimeoutConn).
func (w *Worker) newClient(maxConns int, connect, firstByte time.Duration) *fasthttp.HostClient {
	dialer := &net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}
	hc := &fasthttp.HostClient{
		Addr:                          w.host,
		Name:                          "kvroute",
		IsTLS:                         w.tls,
		MaxConns:                      maxConns,
		MaxIdleConnDuration:           30 * time.Second,
		MaxConnWaitTimeout:            connect,
		DisableHeaderNamesNormalizing: true,
		DisablePathNormalizing:        true,
		NoDefaultUserAgentHeader:      true,
		StreamResponseBody:            firstByte > 0,
		Dial: func(addr string) (net.Conn, error) {
			c, err := dialer.Dial("tcp", addr)
			if err != nil {
				return nil, &DialError{Addr: addr, Err: err}
			}
			if firstByte > 0 {
				return &headerTimeoutConn{Conn: c, firstByte: firstByte}, nil
			}
			return c, nil
		},
		// A POST is not idempotent, so fasthttp would not retry it; but a keep-alive
		// connection the worker closed while idle fails before the worker saw the
		// request, and that is safe to send once more on a fresh connection.
		RetryIfErr: func(_ *fasthttp.Request, attempts int, err error) (bool, bool) {
			return false, attempts < 2 && errors.Is(err, fasthttp.ErrConnectionClosed)
		},
	}
	if w.tls {
		hc.TLSConfig = w.tlsConf.Clone()
	}
	return hc
}

// DialError is a failure to connect to a worker: nothing was sent, so the request can
// always be retried elsewhere.
type DialError struct {
	Addr string
	Err  error
}

func (e *DialError) Error() string { return fmt.Sprintf("dial %s: %v", e.Addr, e.Err) }
func (e *DialError) Unwrap() error { return e.Err }

// Client returns the connection pool for a request: the streaming one when stream is
// true.
func (w *Worker) Client(stream bool) *fasthttp.HostClient {
	if stream {
		return w.stream
	}
	return w.plain
}

// Available reports whether the worker may be routed to: its health checks pass and it
// is not ejected. One atomic load.
func (w *Worker) Available() bool { return w.available.Load() }

// InFlight returns the requests this router has in flight on the worker.
func (w *Worker) InFlight() int64 { return w.inFlight.Load() }

// isSuspect reports whether a request timed out on w since its last passed generation
// probe.
func (w *Worker) isSuspect() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.suspect
}

// Models returns the models the worker serves (a copy).
func (w *Worker) Models() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.models)
}

// BaseModel returns the model the worker's KV events are indexed under: its base model
// (the first model in the config when they are configured; else the first base model in
// /v1/models, an entry without a parent, so that a LoRA adapter never names the worker);
// "" while its models are unknown.
func (w *Worker) BaseModel() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.baseLocked()
}

// baseLocked is BaseModel with mu held.
func (w *Worker) baseLocked() string {
	switch {
	case len(w.bases) > 0:
		return w.bases[0]
	case len(w.models) > 0:
		return w.models[0]
	}
	return ""
}

// Adapter reports whether model is a LoRA adapter the worker serves, and returns the
// base model its blocks are indexed under (BaseModel): a model /v1/models lists with a
// parent. Models configured by hand (the worker's models: key) have no parents, so none of
// them is an adapter: an adapter listed there is hashed as a base model named after
// itself, and its requests match only the router's own predictions, never the engine's
// events (whose blocks carry lora_name). Leave models: out, so that they are discovered,
// for adapters to be hashed as the engine hashes them.
func (w *Worker) Adapter(model string) (base string, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.bases) == 0 || slices.Contains(w.bases, model) || !slices.Contains(w.models, model) {
		return "", false
	}
	return w.bases[0], true
}

// Serves reports whether the worker serves model.
func (w *Worker) Serves(model string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Contains(w.models, model)
}

// WorkerState is a snapshot of a worker's health and membership for the API and tests.
type WorkerState struct {
	ID           string    `json:"id"`
	URL          string    `json:"url"`
	Source       string    `json:"source"`
	Joined       time.Time `json:"joined"`
	State        string    `json:"state"`
	Available    bool      `json:"available"`
	Healthy      bool      `json:"healthy"`
	Ready        bool      `json:"ready"`
	Ejected      bool      `json:"ejected"`
	EjectedUntil time.Time `json:"ejected_until,omitzero"`
	InFlight     int64     `json:"in_flight"`
	Models       []string  `json:"models"`
	BaseModel    string    `json:"base_model"`
	Events       string    `json:"events,omitempty"`
	Replay       string    `json:"replay,omitempty"`
	DPRanks      int       `json:"dp_ranks"`
	LastError    string    `json:"last_error,omitempty"`
	// Changes are the worker's last state changes, oldest first.
	Changes []StateChange `json:"changes"`
}

// StateChange is one change of a worker's state: joined, available, unavailable,
// ejected, ready, not_ready, leaving, left, models.
type StateChange struct {
	Time   time.Time `json:"time"`
	State  string    `json:"state"`
	Detail string    `json:"detail,omitempty"`
}

// maxChanges bounds the state changes a worker remembers.
const maxChanges = 32

// State returns a snapshot of the worker's health and membership. State is one of
// joining (not checked yet), available, unavailable, ejected, not_ready, drained and
// leaving.
func (w *Worker) State() WorkerState {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := WorkerState{
		ID: w.ID, URL: w.URL, Source: w.Source, Joined: w.Joined,
		Available:    w.available.Load(),
		Healthy:      w.checkHealthy,
		Ready:        !w.notReady.Load(),
		Ejected:      !w.ejectedUntil.IsZero(),
		EjectedUntil: w.ejectedUntil,
		InFlight:     w.inFlight.Load(),
		Models:       slices.Clone(w.models),
		BaseModel:    w.baseLocked(),
		Events:       w.Events, Replay: w.Replay, DPRanks: w.DPRanks,
		LastError: w.lastErr,
		Changes:   slices.Clone(w.changes),
	}
	switch {
	case w.leaving.Load():
		st.State = "leaving"
	case w.Drained():
		st.State = "drained"
	case st.Ejected:
		st.State = "ejected"
	case !st.Ready:
		st.State = "not_ready"
	case st.Available:
		st.State = "available"
	case len(w.changes) <= 1 && w.lastErr == "":
		st.State = "joining"
	default:
		st.State = "unavailable"
	}
	return st
}

// record appends a state change.
func (w *Worker) record(state, detail string) {
	w.mu.Lock()
	w.recordLocked(state, detail)
	w.mu.Unlock()
}

// recordLocked appends a state change. mu must be held.
func (w *Worker) recordLocked(state, detail string) {
	if len(w.changes) == maxChanges {
		w.changes = slices.Delete(w.changes, 0, 1)
	}
	w.changes = append(w.changes, StateChange{Time: time.Now(), State: state, Detail: detail})
}

// closeIdle closes the idle connections of a gone worker.
func (w *Worker) closeIdle() {
	w.stream.CloseIdleConnections()
	w.plain.CloseIdleConnections()
	w.httpT.CloseIdleConnections()
}

// updateAvailable recomputes available. mu must be held.
func (w *Worker) updateAvailable() {
	a := w.checkHealthy && w.ejectedUntil.IsZero() && len(w.models) > 0 && !w.leaving.Load()
	w.available.Store(a)
	if a != w.wasAvailable {
		w.wasAvailable = a
		if a {
			w.recordLocked("available", "")
		} else {
			w.recordLocked("unavailable", w.lastErr)
		}
	}
}

func (w *Worker) setLastErr(err error) {
	w.mu.Lock()
	w.lastErr = err.Error()
	w.mu.Unlock()
}

// EngineMetrics are a worker's own figures, scraped from its /metrics.
type EngineMetrics struct {
	Running, Waiting float64
	// KVUsage is the KV cache usage, 0..1.
	KVUsage float64
	// BlockSize and NumBlocks describe the KV cache; 0 when not reported.
	BlockSize, NumBlocks int
	// PrefixQueries and PrefixHits are the engine's own cumulative prefix-cache
	// counters, in prompt tokens (they restart from 0 with the engine); Engine names the
	// engine (vllm, sglang), "" when unknown.
	PrefixQueries, PrefixHits float64
	Engine                    string
	// At is when they were scraped.
	At time.Time
}

// SetMetrics stores the worker's latest scraped metrics.
func (w *Worker) SetMetrics(m EngineMetrics) { w.metrics.Store(&m) }

// Metrics returns the worker's latest scraped metrics if they are at most maxAge old.
func (w *Worker) Metrics(maxAge time.Duration) (EngineMetrics, bool) {
	m := w.metrics.Load()
	if m == nil || time.Since(m.At) > maxAge {
		return EngineMetrics{}, false
	}
	return *m, true
}
