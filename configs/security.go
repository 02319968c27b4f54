package configs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// This file holds the security settings: inbound API keys and rate limits, connection
// and slow-client limits, TLS on the listeners and to the workers, and the workers' own
// API keys. Secrets come from the file or from environment variables; they are never
// printed (see [Secret]).

// Secret is a string that never shows itself when formatted, logged or marshalled: it
// prints "<secret>" (or "" when empty). Read its value with a conversion, string(s).
type Secret string

// String implements fmt.Stringer.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "<secret>"
}

// GoString implements fmt.GoStringer, for %#v.
func (s Secret) GoString() string { return strconv.Quote(s.String()) }

// MarshalYAML hides the value when a config is written out.
func (s Secret) MarshalYAML() (any, error) { return s.String(), nil }

// MarshalJSON hides the value when a config is written out as JSON.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(s.String())), nil }

// Auth configures the inbound API-key check on /v1/*.
type Auth struct {
	// Keys are the API keys clients may send as "Authorization: Bearer <key>" or
	// "api-key: <key>". Default none: no check, every request is accepted.
	Keys []APIKey `yaml:"keys"`
}

// Enabled reports whether the inbound API-key check is on.
func (a Auth) Enabled() bool { return len(a.Keys) > 0 }

// APIKey is one accepted inbound API key. Exactly one of Key and KeyEnv is set.
type APIKey struct {
	// Name names the key in metrics and logs (the key itself never is). Default
	// "key-<index>". Letters, digits, '.', '_' and '-'; unique.
	Name string `yaml:"name"`
	// Key is the key itself. Prefer KeyEnv: a key in the file is readable by anyone who
	// can read the file.
	Key Secret `yaml:"key"`
	// KeyEnv names the environment variable holding the key, read at startup.
	KeyEnv string `yaml:"key_env"`
	// RequestsPerSecond overrides rate_limit.requests_per_second for this key; 0 keeps
	// the fleet-wide value. Default 0.
	RequestsPerSecond float64 `yaml:"requests_per_second"`
	// Burst overrides rate_limit.burst for this key; 0 keeps the fleet-wide value.
	// Default 0.
	Burst int `yaml:"burst"`
	// Priority is the queue class (one of queue.classes) of this key's requests, and the
	// highest its x-kvroute-priority header may ask for: a header naming a higher class
	// gets 400. Default "": queue.default_class, and the header may name any class.
	Priority string `yaml:"priority"`
}

// Resolve returns the key's value: Key, or the environment variable KeyEnv, which must
// be set and not empty.
func (k APIKey) Resolve() (string, error) {
	return resolveSecret(k.Key, k.KeyEnv, "key_env")
}

func resolveSecret(v Secret, env, field string) (string, error) {
	if env == "" {
		return string(v), nil
	}
	s, ok := os.LookupEnv(env)
	if !ok || s == "" {
		return "", fmt.Errorf("%s: environment variable %s is not set or empty", field, env)
	}
	return s, nil
}

// RateLimit configures the optional token-bucket rate limit of /v1/* requests: per API
// key when auth.keys are configured, else per client IP address (IPv6 per /64).
type RateLimit struct {
	// RequestsPerSecond is the sustained rate allowed to each key or client; requests
	// over it get 429 with Retry-After. 0 disables the limit (per-key overrides still
	// apply). Default 0.
	RequestsPerSecond float64 `yaml:"requests_per_second"`
	// Burst is how many requests may arrive at once above the sustained rate. 0 means
	// max(1, ceil(requests_per_second)). Default 0.
	Burst int `yaml:"burst"`
	// MaxClients bounds the per-IP table (keys off): beyond it, idle entries are evicted
	// first, then arbitrary ones. Default 65536.
	MaxClients int `yaml:"max_clients"`
}

// BurstFor returns the bucket size for a sustained rate rps and a configured burst.
func BurstFor(rps float64, burst int) float64 {
	if burst > 0 {
		return float64(burst)
	}
	return max(1, float64(int(rps+0.999999)))
}

// Limits bound what a client may send and how slowly.
type Limits struct {
	// MaxHeaderBytes bounds the request line and headers, in bytes (fasthttp's read
	// buffer); larger headers get 431. Between 1024 and 1048576. Default 8192.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// MaxConnections bounds the open client connections; a connection over it gets 503
	// and is closed. Default 10000.
	MaxConnections int `yaml:"max_connections"`
	// MaxConnectionsPerIP bounds the open connections from one client IP address; a
	// connection over it gets 429 and is closed. 0 means no limit (the right choice
	// behind a load balancer, whose address every connection shares). Default 0.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// HeaderTimeout bounds the wait for a request's line and headers (the TLS handshake
	// included on a new connection), counted from the connection's accept or, on a
	// keep-alive connection, from the request's first byte. A client that sends headers
	// slower gets 408 and is disconnected. Default 10s.
	HeaderTimeout time.Duration `yaml:"header_timeout"`
	// BodyTimeout bounds reading a request's body once its headers are in. Default 60s.
	BodyTimeout time.Duration `yaml:"body_timeout"`
	// IdleTimeout is how long a keep-alive connection may wait for its next request.
	// Default 2m.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// WriteTimeout bounds each write to a client (64 KiB at most), not the response: a
	// client that stops reading is disconnected after it, and its worker request is
	// cancelled, while a stream that keeps flowing is never cut, however long. Default 60s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// MaxInflightBodyBytes bounds the request bodies held in memory at once, in bytes,
	// across all connections: without it max_connections bodies of max_body_bytes each
	// could be (10000 x 32 MiB by default). A request is counted from its headers (its
	// Content-Length, or its chunked body as it arrives) until its handler returns; one
	// that does not fit gets 503 with Retry-After and its connection is closed, before
	// more than its first 8 KiB are read. At least max_body_bytes. Default 1073741824
	// (1 GiB).
	MaxInflightBodyBytes int `yaml:"max_inflight_body_bytes"`
}

// TLSVersions maps the accepted min_version values to crypto/tls versions.
var TLSVersions = map[string]uint16{"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}

// ListenerTLS configures TLS on the router's listeners (the API listener and the admin
// listener). Off unless CertFile is set.
type ListenerTLS struct {
	// CertFile and KeyFile are the PEM certificate chain and private key. Both or
	// neither. Default "" (plain HTTP).
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// MinVersion is the oldest TLS version accepted: "1.2" or "1.3". Default "1.2".
	MinVersion string `yaml:"min_version"`
	// ClientCAFile, when set, requires every client to present a certificate signed by
	// one of the PEM CAs in it (mutual TLS). Default "".
	ClientCAFile string `yaml:"client_ca_file"`
}

// Enabled reports whether the listeners serve TLS.
func (t ListenerTLS) Enabled() bool { return t.CertFile != "" }

// ServerConfig loads the certificate, key and client CAs and returns the listeners'
// TLS configuration; nil when TLS is off.
func (t ListenerTLS) ServerConfig() (*tls.Config, error) {
	if !t.Enabled() {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("tls.cert_file %q, tls.key_file %q: %w", t.CertFile, t.KeyFile, err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tlsVersion(t.MinVersion),
		NextProtos:   []string{"http/1.1"},
	}
	if t.ClientCAFile != "" {
		pool, err := loadCAs(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.client_ca_file: %w", err)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// UpstreamTLS configures TLS to https:// workers.
type UpstreamTLS struct {
	// CAFile is a PEM bundle of the CAs that sign the workers' certificates. Default ""
	// (the system roots).
	CAFile string `yaml:"ca_file"`
	// ServerName is the name checked against the worker's certificate. Default "" (the
	// URL's host).
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any worker certificate: traffic is encrypted but not
	// authenticated. For tests only; logged as a warning at startup. Default false.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
	// CertFile and KeyFile are a client certificate and key for workers that require
	// mutual TLS. Both or neither. Default "".
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// MinVersion is the oldest TLS version used: "1.2" or "1.3". Default "1.2".
	MinVersion string `yaml:"min_version"`
}

// ClientConfig loads the files and returns the TLS configuration for a worker whose URL
// host is host (the default server name).
func (t UpstreamTLS) ClientConfig(host string) (*tls.Config, error) {
	cfg := &tls.Config{
		ServerName:         host,
		MinVersion:         tlsVersion(t.MinVersion),
		InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec // opt-in, warned at startup
	}
	if t.ServerName != "" {
		cfg.ServerName = t.ServerName
	}
	if t.CAFile != "" {
		pool, err := loadCAs(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		cfg.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cert_file %q, key_file %q: %w", t.CertFile, t.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Upstream configures how the router authenticates to its workers.
type Upstream struct {
	// APIKey is sent as "Authorization: Bearer <key>" on every request to a worker
	// without a key of its own (forwarded requests, health checks, /v1/models,
	// /metrics, /tokenize), replacing any Authorization header of the client. Default
	// "": none (a client's Authorization passes through when auth.keys are off).
	APIKey Secret `yaml:"api_key"`
	// APIKeyEnv names an environment variable holding APIKey, read at startup.
	APIKeyEnv string `yaml:"api_key_env"`
	// TLS configures TLS to https:// workers without a tls section of their own.
	TLS UpstreamTLS `yaml:"tls"`
}

// WorkerAPIKey returns the key the router sends to w: its own api_key or api_key_env,
// else upstream.api_key or api_key_env; "" for none. An environment variable named but
// not set is an error.
func (c *Config) WorkerAPIKey(w Worker) (string, error) {
	if w.APIKey != "" || w.APIKeyEnv != "" {
		return resolveSecret(w.APIKey, w.APIKeyEnv, "api_key_env")
	}
	k, err := resolveSecret(c.Upstream.APIKey, c.Upstream.APIKeyEnv, "upstream.api_key_env")
	return k, err
}

// WorkerTLS returns the TLS configuration for an https:// worker (its own tls section,
// else upstream.tls), or nil for an http:// one.
func (c *Config) WorkerTLS(w Worker) (*tls.Config, error) {
	u, err := url.Parse(w.URL)
	if err != nil || u.Scheme != "https" {
		return nil, nil //nolint:nilerr // Validate reports bad URLs
	}
	t := c.Upstream.TLS
	field := "upstream.tls"
	if w.TLS != nil {
		t, field = *w.TLS, "tls"
	}
	cfg, err := t.ClientConfig(u.Hostname())
	if err != nil {
		return nil, fmt.Errorf("%s.%w", field, err)
	}
	return cfg, nil
}

// CheckFiles reads what [Load] leaves alone: the environment variables holding keys
// and the certificate, key and CA files, and returns every problem found. kvroute
// check-config and the router at startup run it.
func (c *Config) CheckFiles() error {
	var errs []error
	seen := map[string]string{}
	for i, k := range c.Auth.Keys {
		v, err := k.Resolve()
		if err != nil {
			errs = append(errs, fmt.Errorf("auth.keys[%d] (%s): %w", i, k.Name, err))
			continue
		}
		if prev, dup := seen[v]; dup {
			errs = append(errs, fmt.Errorf("auth.keys[%d] (%s): same key as %s", i, k.Name, prev))
		}
		seen[v] = k.Name
	}
	if _, err := c.TLS.ServerConfig(); err != nil {
		errs = append(errs, err)
	}
	if err := c.checkTokenizeDir(); err != nil {
		errs = append(errs, err)
	}
	for i, w := range c.Workers {
		if _, err := c.WorkerAPIKey(w); err != nil {
			errs = append(errs, fmt.Errorf("workers[%d] (%s): %w", i, w.ID, err))
		}
		if _, err := c.WorkerTLS(w); err != nil {
			errs = append(errs, fmt.Errorf("workers[%d] (%s): %w", i, w.ID, err))
		}
	}
	return errors.Join(errs...)
}

// Warnings lists settings that work but weaken security, for the startup log and
// kvroute check-config.
func (c *Config) Warnings() []string {
	var out []string
	for i, w := range c.Workers {
		t := c.Upstream.TLS
		if w.TLS != nil {
			t = *w.TLS
		}
		if t.InsecureSkipVerify && strings.HasPrefix(w.URL, "https://") {
			out = append(out, fmt.Sprintf("workers[%d] (%s): insecure_skip_verify is on: the worker's certificate is NOT checked, so anyone on the path can impersonate it", i, w.ID))
		}
	}
	if c.Auth.Enabled() && !c.TLS.Enabled() && !loopbackListen(c.Listen) {
		out = append(out, fmt.Sprintf("auth.keys are set but listen %q is beyond loopback without tls: keys cross the network in clear", c.Listen))
	}
	if c.Auth.Enabled() && c.AdminToken() == "" && !loopbackListen(c.Listen) {
		out = append(out, "auth.keys are set but no admin token: /metrics on the main listener stays open")
	}
	for i, k := range c.Auth.Keys {
		if k.Key != "" {
			out = append(out, fmt.Sprintf("auth.keys[%d] (%s): the key is in the config file; key_env keeps it out of it", i, k.Name))
		}
	}
	return out
}

// loopbackListen reports whether a listen address only binds loopback.
func loopbackListen(addr string) bool {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func tlsVersion(v string) uint16 {
	if t, ok := TLSVersions[v]; ok {
		return t
	}
	return tls.VersionTLS12
}

func loadCAs(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate found", path)
	}
	return pool, nil
}

var (
	envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	keyName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
)

// securityDefaults fills the defaults that depend on other fields.
func (c *Config) securityDefaults() {
	for i := range c.Auth.Keys {
		if c.Auth.Keys[i].Name == "" {
			c.Auth.Keys[i].Name = "key-" + strconv.Itoa(i)
		}
	}
}

// validateSecurity appends the security settings' problems with bad.
func (c *Config) validateSecurity(bad func(format string, args ...any)) {
	names := map[string]int{}
	plain := map[Secret]int{}
	for i, k := range c.Auth.Keys {
		p := fmt.Sprintf("auth.keys[%d]", i)
		switch {
		case k.Key == "" && k.KeyEnv == "":
			bad("%s: set key or key_env", p)
		case k.Key != "" && k.KeyEnv != "":
			bad("%s: set key or key_env, not both", p)
		case k.KeyEnv != "" && !envName.MatchString(k.KeyEnv):
			bad("%s.key_env: %q is not an environment variable name", p, k.KeyEnv)
		case k.Key != "" && len(k.Key) < 8:
			bad("%s.key: shorter than 8 characters", p)
		}
		if k.Key != "" {
			if j, dup := plain[k.Key]; dup {
				bad("%s.key: same key as auth.keys[%d]", p, j)
			}
			plain[k.Key] = i
		}
		if !keyName.MatchString(k.Name) {
			bad("%s.name: %q must be 1 to 64 letters, digits, '.', '_' or '-'", p, k.Name)
		} else if j, dup := names[k.Name]; dup {
			bad("%s.name: %q is already used by auth.keys[%d]", p, k.Name, j)
		}
		names[k.Name] = i
		if k.RequestsPerSecond < 0 || k.RequestsPerSecond != k.RequestsPerSecond {
			bad("%s.requests_per_second: %v must be zero or positive", p, k.RequestsPerSecond)
		}
		if k.Burst < 0 {
			bad("%s.burst: %d must be zero or positive", p, k.Burst)
		}
	}
	rl := c.RateLimit
	if rl.RequestsPerSecond < 0 || rl.RequestsPerSecond != rl.RequestsPerSecond {
		bad("rate_limit.requests_per_second: %v must be zero or positive", rl.RequestsPerSecond)
	}
	if rl.Burst < 0 {
		bad("rate_limit.burst: %d must be zero or positive", rl.Burst)
	}
	if rl.MaxClients < 1 {
		bad("rate_limit.max_clients: %d must be positive", rl.MaxClients)
	}
	l := c.Limits
	if l.MaxHeaderBytes < 1024 || l.MaxHeaderBytes > 1<<20 {
		bad("limits.max_header_bytes: %d must be between 1024 and 1048576", l.MaxHeaderBytes)
	}
	if l.MaxConnections < 1 {
		bad("limits.max_connections: %d must be positive", l.MaxConnections)
	}
	if l.MaxConnectionsPerIP < 0 {
		bad("limits.max_connections_per_ip: %d must be zero (no limit) or positive", l.MaxConnectionsPerIP)
	}
	if l.MaxInflightBodyBytes < c.MaxBodyBytes {
		bad("limits.max_inflight_body_bytes: %d must be at least max_body_bytes (%d)", l.MaxInflightBodyBytes, c.MaxBodyBytes)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"limits.header_timeout", l.HeaderTimeout}, {"limits.body_timeout", l.BodyTimeout},
		{"limits.idle_timeout", l.IdleTimeout}, {"limits.write_timeout", l.WriteTimeout},
	} {
		if d.v <= 0 {
			bad("%s: %q must be positive", d.name, d.v.String())
		}
	}
	t := c.TLS
	if (t.CertFile == "") != (t.KeyFile == "") {
		bad("tls: cert_file %q and key_file %q must be set together", t.CertFile, t.KeyFile)
	}
	if _, ok := TLSVersions[t.MinVersion]; !ok {
		bad("tls.min_version: %q is not 1.2 or 1.3", t.MinVersion)
	}
	if t.ClientCAFile != "" && t.CertFile == "" {
		bad("tls.client_ca_file: %q set without cert_file", t.ClientCAFile)
	}
	if c.Upstream.APIKey != "" && c.Upstream.APIKeyEnv != "" {
		bad("upstream: set api_key or api_key_env, not both")
	}
	if e := c.Upstream.APIKeyEnv; e != "" && !envName.MatchString(e) {
		bad("upstream.api_key_env: %q is not an environment variable name", e)
	}
	validateUpstreamTLS("upstream.tls", c.Upstream.TLS, bad)
}

func validateUpstreamTLS(p string, t UpstreamTLS, bad func(format string, args ...any)) {
	if (t.CertFile == "") != (t.KeyFile == "") {
		bad("%s: cert_file %q and key_file %q must be set together", p, t.CertFile, t.KeyFile)
	}
	if _, ok := TLSVersions[t.MinVersion]; !ok && t.MinVersion != "" {
		bad("%s.min_version: %q is not 1.2 or 1.3", p, t.MinVersion)
	}
}

// validateSecurity checks a worker's key and TLS settings.
func (w *Worker) validateSecurity() error {
	if w.APIKey != "" && w.APIKeyEnv != "" {
		return errors.New("set api_key or api_key_env, not both")
	}
	if w.APIKeyEnv != "" && !envName.MatchString(w.APIKeyEnv) {
		return fmt.Errorf("api_key_env: %q is not an environment variable name", w.APIKeyEnv)
	}
	if w.TLS != nil {
		if !strings.HasPrefix(w.URL, "https://") {
			return fmt.Errorf("tls: set but url %q is not https://", w.URL)
		}
		var errs []error
		validateUpstreamTLS("tls", *w.TLS, func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) })
		return errors.Join(errs...)
	}
	return nil
}
