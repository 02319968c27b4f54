package router

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"

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
