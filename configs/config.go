package configs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/kvroute/kvroute/scorer/registry"
)

// Config is the whole router configuration. The zero value is not useful: start from
// [Default] (as [Load] does) so every field has its documented default.
type Config struct {
	// Listen is the address of the OpenAI-compatible listener. Default ":8080".
	Listen string `yaml:"listen"`
	// Policy names the routing policy: cache_aware, round_robin, random, least_inflight
	// or power_of_two. Default "cache_aware".
	Policy string `yaml:"policy"`
	// CacheAware configures the cache_aware policy and the prefix index behind it.
	CacheAware CacheAware `yaml:"cache_aware"`
	// Tokenize configures how requests are turned into tokens for prefix matching.
	Tokenize Tokenize `yaml:"tokenize"`
	// Session configures session affinity for requests without a cached prefix.
	Session Session `yaml:"session"`
	// Events configures where workers' KV-cache events come from.
	Events Events `yaml:"events"`
	// MaxBodyBytes is the largest request body accepted, in bytes; larger bodies get 413.
	// Default 33554432 (32 MiB).
	MaxBodyBytes int `yaml:"max_body_bytes"`
	// MaxAttempts is how many workers a request is tried on when a worker fails before
	// any byte reached the client (connect error, 5xx, 429). Default 3; 1 disables retry.
	MaxAttempts int `yaml:"max_attempts"`
	// Timeouts bound each phase of a forwarded request.
	Timeouts Timeouts `yaml:"timeouts"`
	// DataPlane is what serves the API listener's connections: "fasthttp" (a goroutine
	// per connection) or "event_loop" (one event loop per core for plain-HTTP chat,
	// completion and embedding requests, every other request handed to fasthttp; Linux
	// only, not with tls). router/dataplane.go has the details. Default "fasthttp".
	DataPlane string `yaml:"data_plane"`
	// DataPlaneLoops is how many event loops data_plane: event_loop runs; 0 means one
	// per GOMAXPROCS (the cores kvroute may use). Default 0.
	DataPlaneLoops int `yaml:"data_plane_loops"`
	// Health configures active health checks and passive ejection.
	Health Health `yaml:"health"`
	// Headers configures the response headers kvroute adds.
	Headers Headers `yaml:"headers"`
	// Workers are the static inference workers requests are routed to. At least one
	// unless a discovery source is configured. `kvroute serve` applies a changed list on
	// SIGHUP or POST /api/reload without a restart.
	Workers []Worker `yaml:"workers"`
	// Discovery configures the sources that add and remove workers at run time (DNS,
	// Kubernetes). Default: none.
	Discovery Discovery `yaml:"discovery"`
	// Admin configures the admin API and dashboard.
	Admin Admin `yaml:"admin"`
	// Replica configures state sharing between router replicas (router/replica).
	Replica Replica `yaml:"replica"`
	// Auth configures the optional inbound API-key check on /v1/*.
	Auth Auth `yaml:"auth"`
	// RateLimit configures the optional per-key (or per-client-IP) rate limit.
	RateLimit RateLimit `yaml:"rate_limit"`
	// Limits bound client connections, header size and slow clients.
	Limits Limits `yaml:"limits"`
	// Queue configures the wait queue of requests that find every worker full.
	Queue Queue `yaml:"queue"`
	// Index configures the prefix index's snapshot file.
	Index Index `yaml:"index"`
	// Passthrough lists extra engine endpoints (paths) forwarded by model, besides the
	// built-in ones (configs/passthrough.go). Read at startup: a reload does not change
	// it. Default: none.
	Passthrough []string `yaml:"passthrough"`
	// Responses configures the Responses API's map of stored responses to workers.
	Responses Responses `yaml:"responses"`
	// TLS configures TLS on the API and admin listeners; off by default.
	TLS ListenerTLS `yaml:"tls"`
	// Upstream configures the router's credentials and TLS towards the workers.
	Upstream Upstream `yaml:"upstream"`
	// PD configures prefill/decode disaggregation (configs/pd.go), on while both
	// workers[].role prefill and decode are present.
	PD PD `yaml:"pd"`
	// EPP configures `kvroute epp`, the Gateway API Inference Extension endpoint picker
	// (configs/epp.go); serve ignores it.
	EPP EPP `yaml:"epp"`

	// Source is the file the config was read from ([LoadFile]); "" otherwise. The admin
	// API's reload re-reads it.
	Source string `yaml:"-"`
	// WorkersFromFlags is set when --worker flags replaced the file's workers: a reload
	// then leaves the static workers as they are.
	WorkersFromFlags bool `yaml:"-"`
}

// The data planes of Config.DataPlane.
const (
	DataPlaneFastHTTP  = "fasthttp"
	DataPlaneEventLoop = "event_loop"
)

// Admin configures the admin JSON API and the dashboard page (router/admin).
type Admin struct {
	// Listen is the admin listener's address (host:port). Default "127.0.0.1:9090"; ""
	// means no admin listener of its own. Beyond loopback (any host but localhost or a
	// loopback IP) it needs an admin token.
	Listen string `yaml:"listen"`
	// PathPrefix, when set (e.g. "/admin"), also serves the admin API and page on the
	// main listener under that path; a main listener beyond loopback then needs an admin
	// token. Default "" (not mounted).
	PathPrefix string `yaml:"path_prefix"`
	// Token is the bearer token the admin API and page require whenever they listen
	// beyond loopback, and write actions require always. Default "": the environment
	// variable KVROUTE_ADMIN_TOKEN, if set; with no token at all the admin refuses to
	// listen beyond loopback and refuses every write action.
	Token string `yaml:"token"`
}

// AdminTokenEnv is the environment variable read when admin.token is empty.
const AdminTokenEnv = "KVROUTE_ADMIN_TOKEN"

// AdminToken returns the admin bearer token: admin.token, else $KVROUTE_ADMIN_TOKEN;
// "" when neither is set.
func (c *Config) AdminToken() string {
	if c.Admin.Token != "" {
		return c.Admin.Token
	}
	return os.Getenv(AdminTokenEnv)
}

// Replica configures how several routers behind one balancer act as one: each shares
// its load per worker and its routing decisions over NATS and adds the others' to its
// own when scoring (router/replica). With it, the load figures the policy and
// cache_aware.max_inflight see are fleet-wide.
type Replica struct {
	// NATSURL is the NATS server the replicas share, e.g. "nats://10.0.0.2:4222".
	// Default "": replica sync off.
	NATSURL string `yaml:"nats_url"`
	// ID names this replica, unique in its cluster. Default "": a random id at start.
	ID string `yaml:"id"`
	// Cluster names the group of replicas acting as one (one NATS subject each).
	// Default "default".
	Cluster string `yaml:"cluster"`
	// FlushInterval is the shortest time between two state messages of this replica;
	// changes within it are sent together. Default 5ms.
	FlushInterval time.Duration `yaml:"flush_interval"`
	// Heartbeat is the period of full state messages. Default 1s.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// ExpireAfter is how long a silent peer's load keeps counting; longer than
	// heartbeat. Default 3s.
	ExpireAfter time.Duration `yaml:"expire_after"`
	// WarmTimeout is how long a starting replica waits for a peer's index dump before
	// it serves; 0 starts cold without asking. Default 5s.
	WarmTimeout time.Duration `yaml:"warm_timeout"`
}

// Timeouts bound each phase of a forwarded request. Every value is a Go duration string
// ("2s", "1m30s"); none may be zero or negative.
type Timeouts struct {
	// Connect bounds dialing a worker. Default 2s.
	Connect time.Duration `yaml:"connect"`
	// FirstByte bounds the wait for a streaming response's headers and for its first
	// chunk (the prefill). Default 60s.
	FirstByte time.Duration `yaml:"first_byte"`
	// Idle bounds the gap between two chunks of a streaming response. Default 30s.
	Idle time.Duration `yaml:"idle"`
	// Total bounds a whole request, streaming or not. Default 10m.
	Total time.Duration `yaml:"total"`
	// Shutdown is how long a SIGTERM waits for in-flight requests to finish before the
	// listener is closed hard. Default 30s.
	Shutdown time.Duration `yaml:"shutdown"`
}

// Health configures how workers are found unhealthy and re-admitted.
type Health struct {
	// Path is the worker endpoint probed by active checks. Default "/health".
	Path string `yaml:"path"`
	// Interval is the time between two active checks of a worker. Default 5s.
	Interval time.Duration `yaml:"interval"`
	// Timeout bounds one active check. Default 2s.
	Timeout time.Duration `yaml:"timeout"`
	// UnhealthyAfter is the number of consecutive failed checks that mark a worker
	// unhealthy. Default 2.
	UnhealthyAfter int `yaml:"unhealthy_after"`
	// EjectAfter is the number of consecutive failed requests (connect error, 5xx) that
	// eject a worker from routing. Default 3.
	EjectAfter int `yaml:"eject_after"`
	// EjectBase is the first ejection's length; each further ejection in a row doubles
	// it up to EjectMax. An ejected worker is re-admitted when its ejection has passed
	// and an active check succeeds. Default 1s.
	EjectBase time.Duration `yaml:"eject_base"`
	// EjectMax caps the ejection length. Default 30s.
	EjectMax time.Duration `yaml:"eject_max"`
	// ModelsInterval is how often each worker's /v1/models is re-read for workers whose
	// models are not listed in the config. Default 30s.
	ModelsInterval time.Duration `yaml:"models_interval"`
	// GenerationProbe makes a request that timed out on a worker (no first byte within
	// timeouts.first_byte, or no answer within timeouts.total) trigger a generation probe
	// at the worker's next active check: a one-token completion bounded by
	// timeouts.first_byte. A worker failing it is ejected at once, and stays out until a
	// probe succeeds; /health alone does not see an engine that accepts requests and
	// never generates. Default true.
	GenerationProbe bool `yaml:"generation_probe"`
}

// Headers configures the response headers kvroute adds.
type Headers struct {
	// Worker adds "x-kvroute-worker: <worker id>" to every routed response. Default true.
	Worker bool `yaml:"worker"`
	// CachedBlocks adds "x-kvroute-cached-blocks: <overlap>/<total>", the leading prompt
	// blocks the chosen worker was believed to hold, to every routed response. Default true.
	CachedBlocks bool `yaml:"cached_blocks"`
}

// CacheAware configures the cache_aware policy (see scorer/cacheaware for the formula).
type CacheAware struct {
	// OverlapWeight scales prefill blocks against decode blocks. Default 8: a block of
	// prompt to recompute delays this request's first token, while a block of another
	// request's KV only adds memory traffic to each decode step.
	OverlapWeight float64 `yaml:"overlap_weight"`
	// PendingWeight is what a token of prefill already queued on a worker (sent by this
	// router, first token not yet out) counts against a token of this request's own
	// prefill there. 1 is Dynamo's cost (the request waits for both); below 1 a worker
	// holding the request's prefix keeps it under more queueing: fewer copies of a prefix
	// across workers, so more hits, at the price of longer queues there. Default 0.25
	// (on llm-d's shared-prefix shape it raised output tokens/s and cut TTFT p90 sharply;
	// on the Mooncake trace the hit rate gain is within the noise; bench/RESULTS.md).
	PendingWeight float64 `yaml:"pending_weight"`
	// WaitingWeight is the cost in blocks of each request waiting in a worker's queue,
	// from its scraped metrics. Default 0 (off).
	WaitingWeight float64 `yaml:"waiting_weight"`
	// KVUsageWeight is the cost in blocks of a full KV cache, from scraped metrics.
	// Default 0 (off).
	KVUsageWeight float64 `yaml:"kv_usage_weight"`
	// AffinityWeight is how much of a cached block each block of a worker's routing
	// history is worth when the worker no longer holds it (per its KV events): the
	// router keeps a history of its own decisions for prediction_ttl beside the index,
	// so a conversation returns to the worker it was sent to after that worker evicted
	// its older turns. In [0, 1]; 0 keeps no history. Only used with KV events (without
	// them the index itself is the routing history). Default 0 (off: on the Mooncake
	// trace it sent more turns back to their worker without a consistent hit-rate gain,
	// bench/RESULTS.md).
	AffinityWeight float64 `yaml:"affinity_weight"`
	// Temperature softens the choice (in blocks); 0 picks the cheapest. Default 0.
	Temperature float64 `yaml:"temperature"`
	// SessionSlack is how many blocks more than the cheapest a session's sticky worker
	// may cost and still be chosen. Default 8.
	SessionSlack float64 `yaml:"session_slack"`
	// MaxImbalance is the load guard: a worker is skipped when taking the request would
	// put its in-flight requests above this factor times one more than the candidates'
	// mean. At least 1; 0 disables the guard. Default 1.5.
	MaxImbalance float64 `yaml:"max_imbalance"`
	// MaxInFlight is a hard per-worker limit on requests in flight from this router;
	// workers at it are not candidates. 0 means no limit. Default 0.
	MaxInFlight int `yaml:"max_inflight"`
	// MaxKVUsage excludes workers whose scraped KV usage (0..1) is at or above it.
	// Default 1 (off).
	MaxKVUsage float64 `yaml:"max_kv_usage"`
	// BlockSize is the engines' KV block size in tokens. 0 means read it from each
	// worker's vllm:cache_config_info (sglang: page_size), using 16 until read. A
	// configured size that differs from a worker's is logged and counted. Default 0.
	BlockSize int `yaml:"block_size"`
	// PredictionTTL is how long a routing decision counts as the chosen worker holding
	// the request's blocks, unless its events confirm or deny it first. Default 120s.
	PredictionTTL time.Duration `yaml:"prediction_ttl"`
	// MetricsInterval is how often workers' /metrics are scraped. Default 1s.
	MetricsInterval time.Duration `yaml:"metrics_interval"`
	// MetricsMaxAge is how old scraped metrics may be and still count. Default 3s.
	MetricsMaxAge time.Duration `yaml:"metrics_max_age"`
	// MaxIndexedBlocks bounds the prefix index (distinct blocks). 0 means the indexer's
	// default.
	MaxIndexedBlocks int `yaml:"max_indexed_blocks"`
	// TierWeights is how much a block held on each storage tier counts as cached
	// (configs/tiers.go). Default gpu 1, every other tier 0.
	TierWeights TierWeights `yaml:"tier_weights"`
}

// Tokenize configures how the router gets a request's tokens.
type Tokenize struct {
	// Mode is "auto" (local for each model with a tokenizer in Dir, else engine, else
	// approx; see router/blockhash.Auto), "engine" (ask a worker's /tokenize, cached),
	// "approx" (hash text chunks; only matches the router's own predictions) or
	// "local:PATH" (kvroute's pure-Go tokenizer with the tokenizer.json and
	// tokenizer_config.json at PATH). Default "auto".
	Mode string `yaml:"mode"`
	// Dir is where the auto mode looks for tokenizers: DIR/MODEL/tokenizer.json (plus
	// tokenizer_config.json) for a model, else DIR/tokenizer.json for every model. Default
	// "" (none: auto means engine, else approx).
	Dir string `yaml:"dir"`
	// Timeout bounds one engine /tokenize call; on failure the request is hashed in
	// approx mode. Default 300ms.
	Timeout time.Duration `yaml:"timeout"`
	// CacheEntries bounds the engine mode's cache of tokenized requests (LRU, keyed by
	// a hash of the request's text; a few hundred bytes plus 8 bytes per block each).
	// Default 16384.
	CacheEntries int `yaml:"cache_entries"`
	// Models overrides Mode per model name, e.g. {"llama-3.1-8b": "local:/models/llama"}.
	// Default none.
	Models map[string]string `yaml:"models"`
}

// MinMaxMessageBytes is the smallest events.max_message_bytes accepted: below it real
// batches (a few KiB to hundreds of KiB) would be refused.
const MinMaxMessageBytes = 64 << 10

// Events configures the KV-event feeds the prefix index is built from.
type Events struct {
	// Source is "zmq" (connect to each worker's events and replay endpoints) or "nats"
	// (read what `kvroute bridge` processes next to the engines publish). Default "zmq".
	Source string `yaml:"source"`
	// DeadAfter is how long a worker's feed may stay silent or unreachable before its
	// index entries are purged. Default 30s.
	DeadAfter time.Duration `yaml:"dead_after"`
	// MaxMessageBytes is the largest ZMQ message, in bytes, read from a worker's events or
	// replay endpoint (zmq source; `kvroute bridge` has --max-message-bytes). A frame
	// announcing more closes the connection before anything is allocated and counts in
	// kvroute_events_dropped_messages_total{reason="oversize"}. At least 65536 (64 KiB).
	// Default 4194304 (4 MiB).
	MaxMessageBytes int64 `yaml:"max_message_bytes"`
	// NATS configures the nats source.
	NATS NATSEvents `yaml:"nats"`
	// Staleness: max_staleness and stale_weight (staleness.go).
	Staleness `yaml:",inline"`
}

// NATSEvents configures reading KV events from NATS.
type NATSEvents struct {
	// URL of the NATS server, e.g. "nats://10.0.0.2:4222". Required for source nats.
	URL string `yaml:"url"`
	// JetStream reads the bridges' stream instead of core NATS, so a restarted router
	// catches up on what it missed. Default false.
	JetStream bool `yaml:"jetstream"`
	// Durable names this router's durable JetStream consumer (unique per replica); ""
	// means an ephemeral consumer that replays everything the stream retains. Default "".
	Durable string `yaml:"durable"`
	// SubjectPrefix is the bridges' subject prefix. Default "kvroute.events".
	SubjectPrefix string `yaml:"subject_prefix"`
}

// Session configures session affinity.
type Session struct {
	// Header names a request header carrying a session id. Default "X-Session-Id"; ""
	// disables it.
	Header string `yaml:"header"`
	// User uses the OpenAI "user" field as the session id when the header is absent.
	// Default true.
	User bool `yaml:"user"`
}

// Worker is one inference worker (a vLLM or SGLang server).
type Worker struct {
	// ID names the worker in headers, metrics and logs. Default: the URL's host:port.
	// Unique across workers.
	ID string `yaml:"id"`
	// URL is the worker's base URL, http or https, without a path. Required.
	URL string `yaml:"url"`
	// Models served by the worker. Empty: discovered from the worker's /v1/models.
	// Models listed here are all base models (the first one the worker's, its KV
	// events indexed under it): a LoRA adapter listed here is hashed as a base model
	// named after itself, so its requests match only the router's own predictions, not
	// the adapter's KV events. Leave models empty on workers serving adapters: discovery
	// reads each adapter's "parent" and hashes its requests as the engine does (base
	// model, adapter name, cache_salt).
	Models []string `yaml:"models"`
	// Events is the worker's ZMQ KV-event publisher, tcp://host:port, e.g.
	// "tcp://10.0.0.5:5557"; with dp_ranks N the ports up to port+N-1 must exist. Empty:
	// no events (the router relies on predictions).
	Events string `yaml:"events"`
	// Replay is the worker's ZMQ replay endpoint, e.g. "tcp://10.0.0.5:5558". Empty: a
	// gap in the event sequence clears the worker's index entries instead of replaying.
	Replay string `yaml:"replay"`
	// MaxConns caps the open connections to the worker. Default 1024.
	MaxConns int `yaml:"max_conns"`
	// DPRanks is the engine's data-parallel size: vLLM publishes rank N's events on the
	// events (and replay) port + N, and each rank has its own cache. Default 1 (0 means 1).
	DPRanks int `yaml:"dp_ranks"`
	// APIKey is sent to this worker as "Authorization: Bearer <key>" on every request
	// the router makes to it. Default "": upstream.api_key.
	APIKey Secret `yaml:"api_key"`
	// APIKeyEnv names an environment variable holding APIKey, read at startup.
	APIKeyEnv string `yaml:"api_key_env"`
	// TLS replaces upstream.tls for this worker (https:// URLs only). Default nil.
	TLS *UpstreamTLS `yaml:"tls"`
	// Role is the worker's part in prefill/decode disaggregation: prefill, decode or
	// both (configs/pd.go). Default "both".
	Role string `yaml:"role"`
	// BootstrapPort is the SGLang prefill server's KV bootstrap port
	// (--disaggregation-bootstrap-port), sent to both workers of a pd.protocol sglang
	// request as bootstrap_port. Default 0: sent as null (SGLang's own default port).
	BootstrapPort int `yaml:"bootstrap_port"`
}

// Policies lists the routing policy names [Config.Validate] accepts: the policy
// registry's (scorer/registry).
var Policies = registry.Names()

// Default returns a Config with every default set and no workers.
func Default() Config {
	return Config{
		Listen: ":8080",
		Policy: registry.Default(),
		CacheAware: CacheAware{
			OverlapWeight:   8,
			PendingWeight:   0.25,
			SessionSlack:    8,
			MaxImbalance:    1.5,
			MaxKVUsage:      1,
			PredictionTTL:   120 * time.Second,
			MetricsInterval: time.Second,
			MetricsMaxAge:   3 * time.Second,
			TierWeights:     defaultTierWeights(),
		},
		Tokenize:     Tokenize{Mode: "auto", Timeout: 300 * time.Millisecond, CacheEntries: 16384},
		Session:      Session{Header: "X-Session-Id", User: true},
		Events:       Events{Source: "zmq", DeadAfter: 30 * time.Second, MaxMessageBytes: 4 << 20, NATS: NATSEvents{SubjectPrefix: "kvroute.events"}, Staleness: defaultStaleness()},
		MaxBodyBytes: 32 << 20,
		MaxAttempts:  3,
		DataPlane:    DataPlaneFastHTTP,
		Timeouts: Timeouts{
			Connect:   2 * time.Second,
			FirstByte: 60 * time.Second,
			Idle:      30 * time.Second,
			Total:     10 * time.Minute,
			Shutdown:  30 * time.Second,
		},
		Health: Health{
			Path:            "/health",
			Interval:        5 * time.Second,
			Timeout:         2 * time.Second,
			UnhealthyAfter:  2,
			EjectAfter:      3,
			EjectBase:       time.Second,
			EjectMax:        30 * time.Second,
			ModelsInterval:  30 * time.Second,
			GenerationProbe: true,
		},
		Headers:   Headers{Worker: true, CachedBlocks: true},
		Admin:     Admin{Listen: "127.0.0.1:9090"},
		RateLimit: RateLimit{MaxClients: 65536},
		Limits: Limits{
			MaxHeaderBytes: 8192,
			MaxConnections: 10000,
			HeaderTimeout:  10 * time.Second,
			BodyTimeout:    60 * time.Second,
			IdleTimeout:    2 * time.Minute,
			WriteTimeout:   60 * time.Second,
			// 1 GiB: 32 bodies of the default max_body_bytes.
			MaxInflightBodyBytes: 1 << 30,
		},
		Queue:     defaultQueue(),
		Index:     defaultIndex(),
		Responses: defaultResponses(),
		EPP:       defaultEPP(),
		TLS:       ListenerTLS{MinVersion: "1.2"},
		Upstream:  Upstream{TLS: UpstreamTLS{MinVersion: "1.2"}},
		PD:        PD{Protocol: PDVLLM},
		Replica: Replica{Cluster: "default", FlushInterval: 5 * time.Millisecond, Heartbeat: time.Second,
			ExpireAfter: 3 * time.Second, WarmTimeout: 5 * time.Second},
	}
}

// workerDefaults fills the defaults of one worker that depend on its other fields.
func (w *Worker) workerDefaults() {
	if w.MaxConns == 0 {
		w.MaxConns = 1024
	}
	if w.DPRanks == 0 {
		w.DPRanks = 1
	}
	if w.Role == "" {
		w.Role = RoleBoth
	}
	if w.ID == "" {
		if u, err := url.Parse(w.URL); err == nil {
			w.ID = u.Host
		}
	}
}

// Load decodes and validates a YAML document. It does no I/O.
func Load(data []byte) (*Config, error) {
	cfg := Default()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("decode: %w", err)
	}
	for i := range cfg.Workers {
		cfg.Workers[i].workerDefaults()
	}
	cfg.Discovery.discoveryDefaults()
	cfg.securityDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// LoadFile reads, decodes and validates a YAML file; errors name the file.
func LoadFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg, err := Load(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	cfg.Source = path
	return cfg, nil
}

// Validate checks every field and returns all problems found, each quoting the bad value.
// It is the one check of a config: `kvroute serve` and `kvroute check-config` both run
// it, so whatever serve would refuse or could not use at start-up is refused here. The
// only checks left to start-up read files ([Config.CheckFiles]) or the network.
// It reads $KVROUTE_ADMIN_TOKEN ([Config.AdminToken]) and nothing else outside c.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if msg := listenProblem(c.Listen); msg != "" {
		bad("listen: %q %s", c.Listen, msg)
	}
	if !contains(Policies, c.Policy) {
		bad("policy: %q is not one of %s", c.Policy, strings.Join(Policies, ", "))
	}
	if c.MaxBodyBytes <= 0 {
		bad("max_body_bytes: %d must be positive", c.MaxBodyBytes)
	}
	if c.MaxAttempts < 1 || c.MaxAttempts > 10 {
		bad("max_attempts: %d must be between 1 and 10", c.MaxAttempts)
	}
	switch c.DataPlane {
	case DataPlaneFastHTTP:
	case DataPlaneEventLoop:
		if runtime.GOOS != "linux" {
			bad("data_plane: %q runs on Linux only (this is %s); use %q", c.DataPlane, runtime.GOOS, DataPlaneFastHTTP)
		}
		if c.TLS.Enabled() {
			bad("data_plane: %q serves plain HTTP only; with tls use %q", c.DataPlane, DataPlaneFastHTTP)
		}
	default:
		bad("data_plane: %q is not %q or %q", c.DataPlane, DataPlaneFastHTTP, DataPlaneEventLoop)
	}
	if c.DataPlaneLoops < 0 || c.DataPlaneLoops > 1024 {
		bad("data_plane_loops: %d must be between 0 (one per GOMAXPROCS) and 1024", c.DataPlaneLoops)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"timeouts.connect", c.Timeouts.Connect},
		{"timeouts.first_byte", c.Timeouts.FirstByte},
		{"timeouts.idle", c.Timeouts.Idle},
		{"timeouts.total", c.Timeouts.Total},
		{"timeouts.shutdown", c.Timeouts.Shutdown},
		{"health.interval", c.Health.Interval},
		{"health.timeout", c.Health.Timeout},
		{"health.eject_base", c.Health.EjectBase},
		{"health.eject_max", c.Health.EjectMax},
		{"health.models_interval", c.Health.ModelsInterval},
		{"cache_aware.prediction_ttl", c.CacheAware.PredictionTTL},
		{"cache_aware.metrics_interval", c.CacheAware.MetricsInterval},
		{"cache_aware.metrics_max_age", c.CacheAware.MetricsMaxAge},
		{"tokenize.timeout", c.Tokenize.Timeout},
		{"events.dead_after", c.Events.DeadAfter},
	} {
		if d.v <= 0 {
			bad("%s: %q must be positive", d.name, d.v.String())
		}
	}
	if c.Tokenize.CacheEntries < 1 {
		bad("tokenize.cache_entries: %d must be at least 1", c.Tokenize.CacheEntries)
	}
	if c.Health.EjectMax < c.Health.EjectBase {
		bad("health.eject_max: %q is shorter than eject_base %q", c.Health.EjectMax.String(), c.Health.EjectBase.String())
	}
	if !strings.HasPrefix(c.Health.Path, "/") {
		bad("health.path: %q must start with /", c.Health.Path)
	}
	if c.Health.UnhealthyAfter < 1 {
		bad("health.unhealthy_after: %d must be at least 1", c.Health.UnhealthyAfter)
	}
	if c.Health.EjectAfter < 1 {
		bad("health.eject_after: %d must be at least 1", c.Health.EjectAfter)
	}
	ca := c.CacheAware
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"cache_aware.overlap_weight", ca.OverlapWeight},
		{"cache_aware.pending_weight", ca.PendingWeight},
		{"cache_aware.waiting_weight", ca.WaitingWeight},
		{"cache_aware.kv_usage_weight", ca.KVUsageWeight},
		{"cache_aware.temperature", ca.Temperature},
		{"cache_aware.session_slack", ca.SessionSlack},
		{"cache_aware.max_imbalance", ca.MaxImbalance},
	} {
		if f.v < 0 || f.v != f.v {
			bad("%s: %v must be zero or positive", f.name, f.v)
		}
	}
	if ca.AffinityWeight < 0 || ca.AffinityWeight > 1 || ca.AffinityWeight != ca.AffinityWeight {
		bad("cache_aware.affinity_weight: %v must be in [0, 1]", ca.AffinityWeight)
	}
	if ca.MaxKVUsage <= 0 || ca.MaxKVUsage > 1 {
		bad("cache_aware.max_kv_usage: %v must be in (0, 1]", ca.MaxKVUsage)
	}
	if ca.MaxImbalance != 0 && ca.MaxImbalance < 1 {
		bad("cache_aware.max_imbalance: %v must be 0 (off) or at least 1", ca.MaxImbalance)
	}
	if ca.MaxInFlight < 0 {
		bad("cache_aware.max_inflight: %d must be zero or positive", ca.MaxInFlight)
	}
	if ca.BlockSize < 0 || ca.BlockSize > 4096 {
		bad("cache_aware.block_size: %d must be between 0 (auto) and 4096", ca.BlockSize)
	}
	if ca.MaxIndexedBlocks < 0 {
		bad("cache_aware.max_indexed_blocks: %d must be zero or positive", ca.MaxIndexedBlocks)
	}
	validMode := func(m string) bool {
		// As router/blockhash.ParseMode: a local path of only spaces is no path.
		return m == "auto" || m == "engine" || m == "approx" || strings.HasPrefix(m, "local:") && strings.TrimSpace(m[len("local:"):]) != ""
	}
	if !validMode(c.Tokenize.Mode) {
		bad("tokenize.mode: %q is not auto, engine, approx or local:PATH", c.Tokenize.Mode)
	}
	for model, m := range c.Tokenize.Models {
		if !validMode(m) {
			bad("tokenize.models[%q]: %q is not auto, engine, approx or local:PATH", model, m)
		}
	}
	switch c.Events.Source {
	case "zmq":
	case "nats":
		if u, err := url.Parse(c.Events.NATS.URL); c.Events.NATS.URL == "" || err != nil || u.Host == "" {
			bad("events.nats.url: %q must be a NATS URL such as nats://host:4222 when events.source is nats", c.Events.NATS.URL)
		}
	default:
		bad("events.source: %q is not zmq or nats", c.Events.Source)
	}
	if c.Events.MaxMessageBytes < MinMaxMessageBytes {
		bad("events.max_message_bytes: %d must be at least %d", c.Events.MaxMessageBytes, MinMaxMessageBytes)
	}
	if c.Events.NATS.SubjectPrefix == "" {
		bad("events.nats.subject_prefix: must not be empty")
	}
	if a := c.Admin.Listen; a != "" {
		if msg := listenProblem(a); msg != "" {
			bad("admin.listen: %q %s", a, msg)
		} else if !loopbackListen(a) && c.AdminToken() == "" {
			// router/admin refuses to serve beyond loopback without a token (admin.ErrNoToken).
			bad("admin.listen: %q is beyond loopback but no admin token is set (admin.token or %s)", a, AdminTokenEnv)
		}
	}
	if p := c.Admin.PathPrefix; p != "" {
		reserved := []string{"/v1", "/health", "/ready", "/metrics"}
		if !strings.HasPrefix(p, "/") || p == "/" || strings.HasSuffix(p, "/") || strings.ContainsAny(p, " ?#") ||
			slices.ContainsFunc(reserved, func(r string) bool { return p == r || strings.HasPrefix(p, r+"/") }) {
			bad("admin.path_prefix: %q must be a path such as /admin, without a trailing slash, outside %s", p, strings.Join(reserved, " "))
		} else if !loopbackListen(c.Listen) && c.AdminToken() == "" {
			bad("admin.path_prefix: %q mounts the admin on listen %q beyond loopback but no admin token is set (admin.token or %s)", p, c.Listen, AdminTokenEnv)
		}
	}
	c.Replica.validate(bad)
	c.validateSecurity(bad)
	c.validateQueue(bad)
	c.Index.validate(bad)
	c.Events.validateStaleness(bad)
	c.CacheAware.TierWeights.validate(bad)
	c.validatePassthrough(bad)
	c.EPP.validate(bad)
	c.Discovery.validate(bad)
	c.PD.validate(bad)
	if len(c.Workers) == 0 && !c.Discovery.Enabled() {
		errs = append(errs, ErrNoWorkers)
	}
	ids := map[string]int{}
	for i, w := range c.Workers {
		if err := w.validate(); err != nil {
			bad("workers[%d]: %w", i, err)
			continue
		}
		if j, dup := ids[w.ID]; dup {
			bad("workers[%d].id: %q is already used by workers[%d]", i, w.ID, j)
		}
		ids[w.ID] = i
	}
	return errors.Join(errs...)
}

func (r *Replica) validate(bad func(format string, args ...any)) {
	if r.NATSURL != "" {
		if u, err := url.Parse(r.NATSURL); err != nil || u.Host == "" {
			bad("replica.nats_url: %q must be a NATS URL such as nats://host:4222", r.NATSURL)
		}
	}
	if len(r.ID) > 256 || strings.ContainsAny(r.ID, " \t\n\"") {
		bad("replica.id: %q must be at most 256 bytes without spaces or quotes", r.ID)
	}
	if r.Cluster == "" || strings.ContainsAny(r.Cluster, " \t\n.*>") {
		bad("replica.cluster: %q must be one NATS subject token (no spaces, dots, * or >)", r.Cluster)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"replica.flush_interval", r.FlushInterval}, {"replica.heartbeat", r.Heartbeat}, {"replica.expire_after", r.ExpireAfter}} {
		if d.v <= 0 {
			bad("%s: %q must be positive", d.name, d.v.String())
		}
	}
	if r.Heartbeat > 0 && r.ExpireAfter <= r.Heartbeat {
		bad("replica.expire_after: %q must be longer than heartbeat %q", r.ExpireAfter.String(), r.Heartbeat.String())
	}
	if r.WarmTimeout < 0 {
		bad("replica.warm_timeout: %q must be zero (cold start) or positive", r.WarmTimeout.String())
	}
}

func (w *Worker) validate() error {
	u, err := url.Parse(w.URL)
	switch {
	case w.URL == "":
		return errors.New("url: required")
	case err != nil:
		return fmt.Errorf("url: %q: %w", w.URL, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("url: %q: scheme must be http or https", w.URL)
	case u.Host == "":
		return fmt.Errorf("url: %q: no host", w.URL)
	case u.Port() != "" && portNumber(u.Port()) < 1:
		return fmt.Errorf("url: %q: port must be a number from 1 to 65535", w.URL)
	case u.Path != "" && u.Path != "/":
		return fmt.Errorf("url: %q: must not have a path", w.URL)
	case w.ID == "" || strings.ContainsAny(w.ID, " \t\n\""):
		return fmt.Errorf("id: %q must be non-empty without spaces or quotes", w.ID)
	case w.MaxConns < 1:
		return fmt.Errorf("max_conns: %d must be positive", w.MaxConns)
	case w.DPRanks < 0 || w.DPRanks > 1024:
		return fmt.Errorf("dp_ranks: %d must be between 1 and 1024 (0 means 1)", w.DPRanks)
	}
	for _, ep := range []struct{ name, v string }{{"events", w.Events}, {"replay", w.Replay}} {
		if ep.v == "" {
			continue
		}
		if err := zmqEndpoint(ep.v, max(w.DPRanks, 1)); err != nil {
			return fmt.Errorf("%s: %w", ep.name, err)
		}
	}
	if w.Replay != "" && w.Events == "" {
		return fmt.Errorf("replay: %q set without events", w.Replay)
	}
	if err := w.validateRole(); err != nil {
		return err
	}
	for _, m := range w.Models {
		if m == "" {
			return errors.New("models: empty model name")
		}
	}
	return w.validateSecurity()
}

// ParseWorkerFlag parses the quick-start form of a worker,
// "URL[,id=ID][,events=ENDPOINT][,replay=ENDPOINT][,models=A|B][,dp_ranks=N][,api_key_env=NAME][,role=prefill|decode|both][,bootstrap_port=N]", into a Worker with its
// defaults filled. It does not validate: [Config.Validate] does.
func ParseWorkerFlag(s string) (Worker, error) {
	parts := strings.Split(s, ",")
	w := Worker{URL: strings.TrimRight(parts[0], "/")}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok {
			return Worker{}, fmt.Errorf("worker %q: option %q is not key=value", s, p)
		}
		switch k {
		case "id":
			w.ID = v
		case "events":
			w.Events = v
		case "replay":
			w.Replay = v
		case "models":
			w.Models = strings.Split(v, "|")
		case "api_key_env":
			w.APIKeyEnv = v
		case "role":
			w.Role = v
		case "bootstrap_port":
			n, err := strconv.Atoi(v)
			if err != nil {
				return Worker{}, fmt.Errorf("worker %q: bootstrap_port %q is not a number", s, v)
			}
			w.BootstrapPort = n
		case "dp_ranks":
			n, err := strconv.Atoi(v)
			if err != nil {
				return Worker{}, fmt.Errorf("worker %q: dp_ranks %q is not a number", s, v)
			}
			w.DPRanks = n
		default:
			return Worker{}, fmt.Errorf("worker %q: unknown option %q (want id, events, replay, models, dp_ranks, api_key_env, role or bootstrap_port)", s, k)
		}
	}
	w.workerDefaults()
	return w, nil
}

// listenProblem says what is wrong with a listener address, or returns "". The port
// must be a number (0 picks a free one): a service name or a port beyond 65535 would
// pass net.SplitHostPort and fail only when serve listens.
func listenProblem(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "is not host:port"
	}
	if portNumber(port) < 0 {
		return "has a port that is not a number from 0 to 65535"
	}
	return ""
}

// portNumber returns port as a number in [0, 65535], or -1 when it is not one.
func portNumber(port string) int {
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return -1
	}
	return int(n)
}

// zmqEndpoint checks a worker's events or replay endpoint the way upstream/kvevents
// uses it: tcp://host:port with a host to connect to, and room above port for every
// data-parallel rank (vLLM's rank r publishes on port + r).
func zmqEndpoint(ep string, ranks int) error {
	rest, ok := strings.CutPrefix(ep, "tcp://")
	if !ok {
		return fmt.Errorf("%q must be a tcp://host:port ZMQ endpoint", ep)
	}
	host, port, err := net.SplitHostPort(rest)
	switch {
	case err != nil:
		return fmt.Errorf("%q must be a tcp://host:port ZMQ endpoint", ep)
	case host == "" || host == "*":
		return fmt.Errorf("%q is a bind address; kvroute connects, give the engine's host", ep)
	}
	p := portNumber(port)
	switch {
	case p < 1:
		return fmt.Errorf("%q: port must be a number from 1 to 65535", ep)
	case p+ranks-1 > 65535:
		return fmt.Errorf("%q: with dp_ranks %d the last rank would publish on port %d, beyond 65535", ep, ranks, p+ranks-1)
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
