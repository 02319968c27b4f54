package router

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/kvroute/kvroute/scorer"
)

// The router's side of the admin API (served by router/admin, wired by cmd/stack): the
// policy a config reload can replace, the admin handler mounted under
// Config.Admin.PathPrefix, and the TLS settings the admin listener shares.

// swappableSelector is the configured policy behind an atomic pointer, so a config
// reload can replace it (new weights) while requests are being routed. It is only used
// for policies that explain their choices (cache_aware), the only ones with weights.
type swappableSelector struct {
	cur atomic.Pointer[explainingSelector]
}

type explainingSelector interface {
	scorer.Selector
	scorer.Explainer
}

func (s *swappableSelector) Select(req *scorer.Request, cands []scorer.Candidate) int {
	return (*s.cur.Load()).Select(req, cands)
}

func (s *swappableSelector) SelectExplained(req *scorer.Request, cands []scorer.Candidate, costs []scorer.Cost) int {
	return (*s.cur.Load()).SelectExplained(req, cands, costs)
}

// wrapSelector returns sel behind a swappableSelector when it explains its choices,
// and the swappable (nil otherwise) for reloads.
func wrapSelector(sel scorer.Selector) (scorer.Selector, *swappableSelector) {
	ex, ok := sel.(explainingSelector)
	if !ok {
		return sel, nil
	}
	sw := &swappableSelector{}
	sw.cur.Store(&ex)
	return sw, sw
}

var _ scorer.Explainer = (*swappableSelector)(nil)

// ErrPolicyNotReplaceable is returned by [Server.ReplacePolicy] when the server's
// policy cannot change at run time.
var ErrPolicyNotReplaceable = errors.New("the routing policy cannot be replaced at run time")

// PolicyReplaceable reports whether [Server.ReplacePolicy] can swap the routing policy:
// true when [New] built it from Config.Policy (no Options.Selector) and it explains its
// choices ([scorer.Explainer], as cache_aware does). It does not change after New.
func (s *Server) PolicyReplaceable() bool { return s.policy != nil }

// ReplacePolicy makes sel the routing policy from the next decision on; decisions under
// way finish with the old one. sel must explain its choices ([scorer.Explainer]). It
// returns [ErrPolicyNotReplaceable] unless [Server.PolicyReplaceable]. Safe to call
// while requests are being routed.
func (s *Server) ReplacePolicy(sel scorer.Selector) error {
	if s.policy == nil {
		return ErrPolicyNotReplaceable
	}
	ex, ok := sel.(explainingSelector)
	if !ok {
		return fmt.Errorf("%w: the new policy does not explain its choices", ErrPolicyNotReplaceable)
	}
	s.policy.cur.Store(&ex)
	return nil
}

// ownedByAdmin reports whether path is under Config.Admin.PathPrefix.
func (s *Server) ownedByAdmin(path []byte) bool {
	p := s.cfg.Admin.PathPrefix
	return p != "" && len(path) >= len(p) && string(path[:len(p)]) == p && (len(path) == len(p) || path[len(p)] == '/')
}

// MountAdmin serves h under Config.Admin.PathPrefix on the API listener, with the
// prefix stripped; the bare prefix redirects to prefix + "/". The admin handler checks
// its own token: the API-key gate lets its paths through. It does nothing when the
// prefix is "". Call it before [Server.Serve]; it must not race with requests.
func (s *Server) MountAdmin(h http.Handler) {
	prefix := s.cfg.Admin.PathPrefix
	if prefix == "" {
		return
	}
	inner := fasthttpadaptor.NewFastHTTPHandler(http.StripPrefix(prefix, underPrefix(prefix, h)))
	s.admin = func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == prefix {
			ctx.Redirect(prefix+"/", fasthttp.StatusPermanentRedirect)
			return
		}
		// The admin handler must see the path the request was routed by: fasthttp's
		// normalised one ("/v1/../admin/x" is "/admin/x"), not the raw request
		// target the adaptor would hand it.
		ctx.Request.SetRequestURIBytes(ctx.URI().RequestURI())
		inner(ctx)
	}
}

// underPrefix serves h under the path prefix: a redirect h answers with an absolute
// path ("/assets/") is kept under the prefix ("/admin/assets/"), never outside it.
func underPrefix(prefix string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&prefixedLocation{ResponseWriter: w, prefix: prefix}, r)
	})
}

// prefixedLocation puts the mount prefix in front of an absolute-path Location.
type prefixedLocation struct {
	http.ResponseWriter
	prefix string
	wrote  bool
}

func (p *prefixedLocation) WriteHeader(code int) {
	if !p.wrote {
		p.wrote = true
		h := p.Header()
		if loc := h.Get("Location"); strings.HasPrefix(loc, "/") && !strings.HasPrefix(loc, "//") {
			h.Set("Location", p.prefix+loc)
		}
	}
	p.ResponseWriter.WriteHeader(code)
}

func (p *prefixedLocation) Write(b []byte) (int, error) {
	if !p.wrote {
		p.WriteHeader(http.StatusOK)
	}
	return p.ResponseWriter.Write(b)
}

// TLSConfig returns the TLS configuration of the API listener (certificate and client
// CAs from Config.TLS), for other listeners that must present the same; nil when the
// router serves plain HTTP. The caller must not modify it.
func (s *Server) TLSConfig() *tls.Config { return s.tlsConf }
