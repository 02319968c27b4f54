package router

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/configs"
)

// This file is the inbound gate every request passes before the endpoint table: the
// API-key check, the rate limit, and the admin-token check of /metrics, with the
// metric of everything refused.

// reason is why a request or connection was refused: a bounded label value.
type reason int

const (
	reasonMissingKey reason = iota
	reasonInvalidKey
	reasonRateLimited
	reasonMetricsToken
	reasonTooManyConns
	reasonTooManyConnsIP
	reasonHeaderTooLarge
	reasonBodyTooLarge
	reasonSlowClient
	reasonSlowReader
	reasonMalformed
	reasonBodyBudget
	numReasons
)

var reasonLabels = [numReasons]string{
	"missing_api_key", "invalid_api_key", "rate_limited", "metrics_unauthorized",
	"too_many_connections", "too_many_connections_per_ip", "header_too_large",
	"body_too_large", "slow_client", "slow_reader", "malformed", "body_budget",
}

// gate holds the inbound checks. It is built once by New and read-only afterwards,
// except metricsToken, set by Serve.
type gate struct {
	// keys are the accepted API keys; empty when the check is off.
	keys []inboundKey
	// limiter is the rate limit; nil when off.
	limiter *limiter
	// metricsToken is the SHA-256 of the admin token /metrics requires; nil when
	// /metrics is open (no admin token, or a loopback listener).
	metricsToken atomic.Pointer[[32]byte]
	rejected     [numReasons]prometheus.Counter
}

// inboundKey is one accepted key: only its SHA-256 is kept.
type inboundKey struct {
	name     string
	digest   [32]byte
	requests prometheus.Counter
}

// newGate builds the checks of cfg and registers their metrics with reg.
func newGate(cfg *configs.Config, reg prometheus.Registerer) (*gate, error) {
	g := &gate{}
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kvroute_router_rejected_total",
		Help: "Requests and connections refused before routing, by reason: missing_api_key, invalid_api_key, rate_limited, " +
			"metrics_unauthorized, too_many_connections, too_many_connections_per_ip, header_too_large, body_too_large, " +
			"slow_client (headers or body too slow), slow_reader (a response write timed out), malformed (HTTP framing " +
			"that cannot be trusted), body_budget (limits.max_inflight_body_bytes reached).",
	}, []string{"reason"})
	perKey := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kvroute_router_api_key_requests_total",
		Help: "Requests accepted by the inbound API-key check, by key name (auth.keys[].name).",
	}, []string{"key"})
	for _, c := range []prometheus.Collector{rejected, perKey} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register security metrics: %w", err)
		}
	}
	for r := range numReasons {
		g.rejected[r] = rejected.WithLabelValues(reasonLabels[r])
	}
	for i, k := range cfg.Auth.Keys {
		v, err := k.Resolve()
		if err != nil {
			return nil, fmt.Errorf("auth.keys[%d] (%s): %w", i, k.Name, err)
		}
		g.keys = append(g.keys, inboundKey{name: k.Name, digest: sha256.Sum256([]byte(v)), requests: perKey.WithLabelValues(k.Name)})
	}
	g.limiter = newLimiter(cfg)
	return g, nil
}

// setListener applies the admin policy to /metrics: it needs the admin token when one
// is configured and the listener is reachable beyond loopback.
func (g *gate) setListener(addr net.Addr, adminToken string) {
	if adminToken == "" || isLoopbackAddr(addr) {
		g.metricsToken.Store(nil)
		return
	}
	d := sha256.Sum256([]byte(adminToken))
	g.metricsToken.Store(&d)
}

func isLoopbackAddr(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// admit runs the checks for one request; when it refuses, it has written the answer.
// It does not allocate.
func (s *Server) admit(ctx *fasthttp.RequestCtx) bool {
	g := s.gate
	path := ctx.Path()
	switch string(path) {
	case "/health", "/ready":
		return true
	case "/metrics":
		want := g.metricsToken.Load()
		if want == nil {
			return true
		}
		if tok, ok := parseBearer(headerFold(&ctx.Request.Header, "authorization")); ok && g.matchDigest(tok, want) {
			return true
		}
		g.rejected[reasonMetricsToken].Inc()
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="kvroute"`)
		s.fail(ctx, "", errMetricsToken)
		return false
	}
	if s.ownedByAdmin(path) {
		return true // the admin API checks its own token
	}
	key := -1
	if len(g.keys) > 0 {
		var r reason
		if key, r = g.authenticate(&ctx.Request.Header); key < 0 {
			g.rejected[r].Inc()
			ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="kvroute"`)
			if r == reasonMissingKey {
				s.fail(ctx, "", errMissingKey)
			} else {
				s.fail(ctx, "", errInvalidKey)
			}
			return false
		}
		g.keys[key].requests.Inc()
	}
	if g.limiter != nil {
		if ok, wait := g.limiter.allow(key, ctx.RemoteIP()); !ok {
			g.rejected[reasonRateLimited].Inc()
			var b [20]byte
			ctx.Response.Header.SetBytesV("Retry-After", strconv.AppendInt(b[:0], retryAfterSeconds(wait), 10))
			s.fail(ctx, "", errRateLimited)
			return false
		}
	}
	return true
}

// authenticate returns the index of the key the request carries, or -1 and why not.
// The key is read from "Authorization: Bearer <key>" or else "api-key: <key>" (the
// header Azure OpenAI clients send); header names match in any case.
func (g *gate) authenticate(h *fasthttp.RequestHeader) (int, reason) {
	bearer, hasBearer := parseBearer(headerFold(h, "authorization"))
	apiKey := trimSpace(headerFold(h, "api-key"))
	if !hasBearer && len(apiKey) == 0 {
		return -1, reasonMissingKey
	}
	if hasBearer {
		if i := g.match(bearer); i >= 0 {
			return i, 0
		}
	}
	if len(apiKey) > 0 {
		if i := g.match(apiKey); i >= 0 {
			return i, 0
		}
	}
	return -1, reasonInvalidKey
}

// match returns the index of the key tok is, or -1. It compares SHA-256 digests in
// constant time against every key, so neither the length of a key nor which one
// matched shows in the timing.
func (g *gate) match(tok []byte) int {
	d := sha256.Sum256(tok)
	found := -1
	for i := range g.keys {
		eq := subtle.ConstantTimeCompare(d[:], g.keys[i].digest[:])
		found = subtle.ConstantTimeSelect(eq, i, found)
	}
	return found
}

func (g *gate) matchDigest(tok []byte, want *[32]byte) bool {
	d := sha256.Sum256(tok)
	return subtle.ConstantTimeCompare(d[:], want[:]) == 1
}

// parseBearer returns the token of an "Authorization: Bearer <token>" value (RFC 6750:
// the scheme in any case, then one or more spaces). ok is false for any other scheme or
// an empty token.
func parseBearer(v []byte) (tok []byte, ok bool) {
	const scheme = "bearer"
	v = trimSpace(v)
	if len(v) <= len(scheme) || !equalFold(v[:len(scheme)], scheme) || (v[len(scheme)] != ' ' && v[len(scheme)] != '\t') {
		return nil, false
	}
	tok = trimSpace(v[len(scheme):])
	return tok, len(tok) > 0
}

// headerFold returns the value of the first header named name (lower case) in any
// case; nil when there is none. fasthttp's Peek matches exact case here, since the
// server keeps header names as sent.
func headerFold(h *fasthttp.RequestHeader, name string) []byte {
	for k, v := range h.All() {
		if equalFold(k, name) {
			return v
		}
	}
	return nil
}

// delHeaderFold removes every header named name (lower case), in any case.
func delHeaderFold(h *fasthttp.RequestHeader, name string) {
	var buf [64]byte
	for range 32 { // bounded: each pass removes at least one spelling
		var found []byte
		for k := range h.All() {
			if equalFold(k, name) {
				found = append(buf[:0], k...)
				break
			}
		}
		if found == nil {
			return
		}
		h.DelBytes(found)
	}
}

// equalFold reports whether b equals the lower-case ASCII string lower, ignoring case.
func equalFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// stripCredentials prepares a request copied from a client's for worker w: the
// client's credentials are removed when the router checks keys itself (they are the
// router's, not the worker's) or when w gets a key of its own (in any header-name
// case, so the worker never sees two), then w's key is set.
func (s *Server) stripCredentials(h *fasthttp.RequestHeader, workerHasKey bool) {
	if len(s.gate.keys) > 0 {
		delHeaderFold(h, "authorization")
		delHeaderFold(h, "api-key")
	} else if workerHasKey {
		delHeaderFold(h, "authorization")
	}
}

// limiter is the optional token-bucket rate limit: one bucket per API key (its own rate
// or the fleet-wide one) when keys are configured, else one per client IP address
// (IPv6 per /64, the block one host usually holds). The per-IP table is bounded by
// rate_limit.max_clients: when a shard is full, entries whose bucket has refilled (idle
// clients, forgetting them changes nothing) are dropped first, then arbitrary ones (a
// dropped active client gets a fresh burst: the price of bounded memory). Safe for
// concurrent use.
type limiter struct {
	// now is the clock in nanoseconds, monotonic; tests replace it.
	now func() int64

	keys []keyBucket // by auth.keys index

	// rate and burst are the per-IP bucket's (0 rate: no per-IP limit).
	rate, burst float64
	maxPerShard int
	shards      [ipShards]ipShard
}

const ipShards = 16

type keyBucket struct {
	rate, burst float64 // 0 rate: this key is not limited
	// mu guards b.
	mu sync.Mutex
	b  bucket
}

type ipShard struct {
	// mu guards m.
	mu sync.Mutex
	m  map[netip.Addr]bucket
}

// bucket is a token bucket; a new one (zero last) is full.
type bucket struct {
	tokens float64
	last   int64 // clock reading of the last refill; 0: never used
}

// take refills b for the time since its last use and takes a token if there is one;
// otherwise it returns how long until one is there.
func (b *bucket) take(now int64, rate, burst float64) (bool, time.Duration) {
	if b.last == 0 {
		b.tokens = burst
	} else if dt := now - b.last; dt > 0 {
		b.tokens = math.Min(burst, b.tokens+float64(dt)*rate/1e9)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / rate * 1e9)
}

// idle reports whether b would be full at now: dropping it changes nothing.
func (b *bucket) idle(now int64, rate, burst float64) bool {
	return b.tokens+float64(now-b.last)*rate/1e9 >= burst
}

// newLimiter returns the limiter of cfg, or nil when no rate is configured.
func newLimiter(cfg *configs.Config) *limiter {
	rl := cfg.RateLimit
	l := &limiter{maxPerShard: max(1, rl.MaxClients/ipShards)}
	limited := false
	if len(cfg.Auth.Keys) > 0 {
		l.keys = make([]keyBucket, len(cfg.Auth.Keys))
		for i, k := range cfg.Auth.Keys {
			rate, burst := rl.RequestsPerSecond, rl.Burst
			if k.RequestsPerSecond > 0 {
				rate, burst = k.RequestsPerSecond, k.Burst
			}
			if rate > 0 {
				l.keys[i].rate, l.keys[i].burst = rate, configs.BurstFor(rate, burst)
				limited = true
			}
		}
	} else if rl.RequestsPerSecond > 0 {
		l.rate, l.burst = rl.RequestsPerSecond, configs.BurstFor(rl.RequestsPerSecond, rl.Burst)
		for i := range l.shards {
			l.shards[i].m = map[netip.Addr]bucket{}
		}
		limited = true
	}
	if !limited {
		return nil
	}
	start := time.Now()
	l.now = func() int64 { return int64(time.Since(start)) + 1 } // never 0: 0 marks a new bucket
	return l
}

// allow takes a token for a request with the given key index (-1: keys are off, the
// client IP counts). When it refuses, wait is how long until a token is there.
func (l *limiter) allow(key int, ip net.IP) (ok bool, wait time.Duration) {
	now := l.now()
	if key >= 0 {
		kb := &l.keys[key]
		if kb.rate == 0 {
			return true, 0
		}
		kb.mu.Lock()
		ok, wait = kb.b.take(now, kb.rate, kb.burst)
		kb.mu.Unlock()
		return ok, wait
	}
	if l.rate == 0 {
		return true, 0
	}
	a := clientKey(ip)
	sh := &l.shards[shardOf(a)]
	sh.mu.Lock()
	b, found := sh.m[a]
	if !found && len(sh.m) >= l.maxPerShard {
		l.evict(sh, now)
	}
	ok, wait = b.take(now, l.rate, l.burst)
	sh.m[a] = b
	sh.mu.Unlock()
	return ok, wait
}

// evict makes room in a full shard: idle entries first; if none, an eighth of the
// shard, arbitrary ones (map order), so a table full of active clients costs one sweep
// per maxPerShard/8 new clients, not one per request. sh.mu must be held.
func (l *limiter) evict(sh *ipShard, now int64) {
	for a, b := range sh.m {
		if b.idle(now, l.rate, l.burst) {
			delete(sh.m, a)
		}
	}
	if len(sh.m) < l.maxPerShard {
		return
	}
	drop := max(1, l.maxPerShard/8)
	for a := range sh.m {
		delete(sh.m, a)
		if drop--; drop == 0 {
			break
		}
	}
}

// size returns the number of per-IP entries (for tests).
func (l *limiter) size() int {
	n := 0
	for i := range l.shards {
		l.shards[i].mu.Lock()
		n += len(l.shards[i].m)
		l.shards[i].mu.Unlock()
	}
	return n
}

// clientKey is the rate-limit identity of an address: IPv4 as is, IPv6 by /64.
func clientKey(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	a = a.Unmap()
	if a.Is6() {
		if p, err := a.Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return a
}

func shardOf(a netip.Addr) int {
	b := a.As16()
	h := (binary.LittleEndian.Uint64(b[:8]) ^ binary.LittleEndian.Uint64(b[8:])) * 0x9E3779B97F4A7C15
	return int(h >> 60)
}

// retryAfterSeconds is the Retry-After value for a wait: whole seconds, at least 1.
func retryAfterSeconds(wait time.Duration) int64 {
	return max(1, int64(math.Ceil(wait.Seconds())))
}
