package router

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/router/admin"
	"github.com/kvroute/kvroute/scorer"
)

// This file connects the admin API and dashboard (router/admin) to the router: the
// backend the admin handler reads and acts through, the admin listener, config reload,
// and the explanations of routing decisions.

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

// ownedByAdmin reports whether path is under Config.Admin.PathPrefix.
func (s *Server) ownedByAdmin(path []byte) bool {
	p := s.cfg.Admin.PathPrefix
	return p != "" && len(path) >= len(p) && string(path[:len(p)]) == p && (len(path) == len(p) || path[len(p)] == '/')
}

// adminState is the Stack's admin API: its own listener, if any.
type adminState struct {
	// mu guards reloads and applied, the config values currently in effect for the
	// settings a reload can change.
	mu      sync.Mutex
	applied configs.CacheAware
	srv     *http.Server
	addr    string
	started time.Time
}

// AdminAddr returns the address of the admin listener ("host:port"), or "" when it has
// none (disabled, not started yet, or its address could not be bound).
func (st *Stack) AdminAddr() string { return st.admin.addr }

// startAdmin builds the admin API and serves it on its own listener and/or under the
// path prefix of ln. A non-loopback admin without a token is an error; an admin listener
// that cannot bind is logged and skipped, so a busy admin port never stops routing.
func (st *Stack) startAdmin(ln net.Listener) error {
	cfg := st.Config.Admin
	st.admin.started = time.Now()
	st.admin.applied = st.Config.CacheAware
	if cfg.PathPrefix != "" {
		h, err := st.adminHandler(ln.Addr())
		if err != nil {
			return err
		}
		inner := fasthttpadaptor.NewFastHTTPHandler(http.StripPrefix(cfg.PathPrefix, underPrefix(cfg.PathPrefix, h)))
		st.Server.admin = func(ctx *fasthttp.RequestCtx) {
			if string(ctx.Path()) == cfg.PathPrefix {
				ctx.Redirect(cfg.PathPrefix+"/", fasthttp.StatusPermanentRedirect)
				return
			}
			// The admin handler must see the path the request was routed by: fasthttp's
			// normalised one ("/v1/../admin/x" is "/admin/x"), not the raw request
			// target the adaptor would hand it.
			ctx.Request.SetRequestURIBytes(ctx.URI().RequestURI())
			inner(ctx)
		}
	}
	if cfg.Listen == "" {
		return nil
	}
	aln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		st.log.Error("admin API not started: cannot listen", "listen", cfg.Listen, "err", err)
		return nil
	}
	h, err := st.adminHandler(aln.Addr())
	if err != nil {
		_ = aln.Close()
		return err
	}
	if tc := st.Server.tlsConf; tc != nil {
		aln = tls.NewListener(aln, tc) // the same certificate and client CAs as the API listener
	}
	lim := st.Config.Limits // the admin answers are small: whole-response bounds are fine here
	st.admin.srv = &http.Server{Handler: h, ErrorLog: slog.NewLogLogger(st.log.Handler(), slog.LevelDebug),
		ReadHeaderTimeout: lim.HeaderTimeout, ReadTimeout: lim.HeaderTimeout + lim.BodyTimeout,
		WriteTimeout: lim.WriteTimeout, IdleTimeout: lim.IdleTimeout, MaxHeaderBytes: lim.MaxHeaderBytes}
	st.admin.addr = aln.Addr().String()
	go func() { _ = st.admin.srv.Serve(aln) }()
	st.log.Info("admin API serving", "listen", st.admin.addr)
	return nil
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

// stopAdmin closes the admin listener.
func (st *Stack) stopAdmin() {
	if st.admin.srv != nil {
		_ = st.admin.srv.Close()
	}
}

// adminHandler builds the admin handler for a listener on addr: reads need the token
// unless addr is a loopback address.
func (st *Stack) adminHandler(addr net.Addr) (http.Handler, error) {
	loopback := false
	if ta, ok := addr.(*net.TCPAddr); ok {
		loopback = ta.IP.IsLoopback()
	}
	h, err := admin.New(admin.Options{Backend: st.adminBackend(), Token: st.Config.AdminToken(), RequireToken: !loopback})
	if err != nil {
		return nil, fmt.Errorf("admin on %s: %w", addr, err)
	}
	return h, nil
}

func (st *Stack) adminBackend() admin.Backend {
	s := st.Server
	b := admin.Backend{
		Pool: st.Pool, Index: st.Index, Gatherer: st.Registry, MetricsMaxAge: st.Config.CacheAware.MetricsMaxAge,
		Traffic:       func() any { return s.Traffic() },
		WorkerTraffic: func(id string, series bool) any { return s.WorkerTraffic(id, series) },
		Decisions:     func(n int) any { return explainAll(s.Decisions(n)) },
		Reload:        st.reload,
		Info: admin.Info{
			Policy: st.Config.Policy, TokenizeMode: st.Config.Tokenize.Mode, EventSource: st.Config.Events.Source,
			Listen: st.Config.Listen, ConfigFile: st.Config.Source, Started: st.admin.started,
		},
	}
	if st.Events != nil {
		b.Feeds = st.Events.States
	}
	return b
}

// ExplainedDecision is a [Decision] with a one-line explanation for people, in a form
// JSON can carry (an infinite cost becomes null).
type ExplainedDecision struct {
	Decision
	Candidates  []CandidateView `json:"candidates"`
	Explanation string          `json:"explanation"`
}

// CandidateView is a [DecisionCandidate] whose costs are nil when not finite: the load
// guard gives a worker over its bar an infinite total cost (LoadGuarded).
type CandidateView struct {
	DecisionCandidate
	PrefillCost *float64 `json:"prefill_cost"`
	DecodeCost  *float64 `json:"decode_cost"`
	QueueCost   *float64 `json:"queue_cost"`
	TotalCost   *float64 `json:"total_cost"`
	LoadGuarded bool     `json:"load_guarded"`
}

func finite(v float64) *float64 {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return nil
	}
	return &v
}

func explainAll(ds []Decision) []ExplainedDecision {
	out := make([]ExplainedDecision, len(ds))
	for i := range ds {
		d := &ds[i]
		e := ExplainedDecision{Decision: *d, Explanation: Explain(d), Candidates: make([]CandidateView, len(d.Candidates))}
		for k, c := range d.Candidates {
			e.Candidates[k] = CandidateView{
				DecisionCandidate: c, PrefillCost: finite(c.PrefillCost), DecodeCost: finite(c.DecodeCost),
				QueueCost: finite(c.QueueCost), TotalCost: finite(c.TotalCost), LoadGuarded: math.IsInf(c.TotalCost, 1),
			}
		}
		out[i] = e
	}
	return out
}

// Explain says in one line why d chose its worker: the chosen worker's cached share of
// the prompt and cost against the next cheapest candidate (costs in blocks).
func Explain(d *Decision) string {
	var chosen *DecisionCandidate
	var next *DecisionCandidate
	for i := range d.Candidates {
		c := &d.Candidates[i]
		if c.Worker == d.Chosen {
			chosen = c
		} else if next == nil || c.TotalCost < next.TotalCost || math.IsInf(next.TotalCost, 1) && c.TotalCost <= next.TotalCost {
			next = c
		}
	}
	if chosen == nil {
		return fmt.Sprintf("%s chose %s", d.Policy, d.Chosen)
	}
	b := fmt.Sprintf("%s holds %d of %d prompt blocks", d.Chosen, chosen.OverlapBlocks, d.Blocks)
	if !d.Exact && d.Blocks > 0 {
		b += " (approx hashes)"
	}
	costs := false
	for _, c := range d.Candidates {
		costs = costs || c.TotalCost != 0
	}
	switch {
	case next == nil:
		b += "; the only candidate"
	case costs:
		b += fmt.Sprintf("; cost %.1f blocks (prefill %.1f, decode %.1f, queue %.1f) vs %.1f for %s, the next cheapest",
			chosen.TotalCost, chosen.PrefillCost, chosen.DecodeCost, chosen.QueueCost, next.TotalCost, next.Worker)
		if chosen.TotalCost > next.TotalCost {
			b += " (session stickiness or temperature)"
		}
		if guarded := countGuarded(d.Candidates); guarded > 0 {
			b += fmt.Sprintf("; %d over the load guard", guarded)
		}
	default:
		b += fmt.Sprintf("; picked by %s among %d candidates", d.Policy, len(d.Candidates))
	}
	if d.Attempt > 0 {
		b += fmt.Sprintf("; retry %d", d.Attempt)
	}
	return b
}

func countGuarded(cs []DecisionCandidate) int {
	n := 0
	for _, c := range cs {
		if math.IsInf(c.TotalCost, 1) {
			n++
		}
	}
	return n
}

// reload re-reads the config file the router was started with and applies the settings
// that can change at run time: the cache_aware policy's weights (a new selector replaces
// the old one between two decisions; session stickiness starts afresh). Every other
// difference is reported as needing a restart: the rest of the config is read without
// synchronization on the request path.
func (st *Stack) reload() (admin.ReloadReport, error) {
	path := st.Config.Source
	if path == "" {
		return admin.ReloadReport{}, errors.New("the router was not started from a config file (--config)")
	}
	next, err := configs.LoadFile(path)
	if err != nil {
		return admin.ReloadReport{}, err
	}
	st.admin.mu.Lock()
	defer st.admin.mu.Unlock()
	rep := admin.ReloadReport{File: path, Applied: []string{}, RestartRequired: []string{}}
	cur := *st.Config
	cur.CacheAware = st.admin.applied
	type weight struct {
		name     string
		old, new float64
	}
	oc, nc := cur.CacheAware, next.CacheAware
	weights := []weight{
		{"cache_aware.overlap_weight", oc.OverlapWeight, nc.OverlapWeight},
		{"cache_aware.pending_weight", oc.PendingWeight, nc.PendingWeight},
		{"cache_aware.waiting_weight", oc.WaitingWeight, nc.WaitingWeight},
		{"cache_aware.kv_usage_weight", oc.KVUsageWeight, nc.KVUsageWeight},
		{"cache_aware.temperature", oc.Temperature, nc.Temperature},
		{"cache_aware.session_slack", oc.SessionSlack, nc.SessionSlack},
		{"cache_aware.max_imbalance", oc.MaxImbalance, nc.MaxImbalance},
	}
	var changedWeights []string
	for _, w := range weights {
		if w.old != w.new {
			changedWeights = append(changedWeights, fmt.Sprintf("%s: %v -> %v", w.name, w.old, w.new))
		}
	}
	sameWeights := oc
	sameWeights.OverlapWeight, sameWeights.WaitingWeight, sameWeights.KVUsageWeight = nc.OverlapWeight, nc.WaitingWeight, nc.KVUsageWeight
	sameWeights.PendingWeight = nc.PendingWeight
	sameWeights.Temperature, sameWeights.SessionSlack, sameWeights.MaxImbalance = nc.Temperature, nc.SessionSlack, nc.MaxImbalance
	if !reflect.DeepEqual(sameWeights, nc) {
		rep.RestartRequired = append(rep.RestartRequired, "cache_aware (limits, block size, TTL, scrape and index settings)")
	}
	for _, sec := range []struct {
		name     string
		old, new any
	}{
		{"listen", cur.Listen, next.Listen}, {"policy", cur.Policy, next.Policy},
		{"tokenize", cur.Tokenize, next.Tokenize}, {"session", cur.Session, next.Session},
		{"events", cur.Events, next.Events}, {"max_body_bytes", cur.MaxBodyBytes, next.MaxBodyBytes},
		{"max_attempts", cur.MaxAttempts, next.MaxAttempts}, {"timeouts", cur.Timeouts, next.Timeouts},
		{"health", cur.Health, next.Health}, {"headers", cur.Headers, next.Headers},
		{"admin", cur.Admin, next.Admin}, {"workers", cur.Workers, next.Workers},
		{"auth", cur.Auth, next.Auth}, {"rate_limit", cur.RateLimit, next.RateLimit},
		{"limits", cur.Limits, next.Limits}, {"tls", cur.TLS, next.TLS}, {"upstream", cur.Upstream, next.Upstream},
	} {
		if !reflect.DeepEqual(sec.old, sec.new) {
			rep.RestartRequired = append(rep.RestartRequired, sec.name)
		}
	}
	if len(changedWeights) > 0 {
		if st.Server.policy == nil || next.Policy != cur.Policy {
			rep.RestartRequired = append(rep.RestartRequired, changedWeights...)
		} else {
			sel, err := NewSelector(next)
			if err != nil {
				return admin.ReloadReport{}, err
			}
			ex, ok := sel.(explainingSelector)
			if !ok {
				return admin.ReloadReport{}, fmt.Errorf("policy %s does not explain its choices", next.Policy)
			}
			st.Server.policy.cur.Store(&ex)
			a := &st.admin.applied
			a.OverlapWeight, a.WaitingWeight, a.KVUsageWeight = nc.OverlapWeight, nc.WaitingWeight, nc.KVUsageWeight
			a.PendingWeight = nc.PendingWeight
			a.Temperature, a.SessionSlack, a.MaxImbalance = nc.Temperature, nc.SessionSlack, nc.MaxImbalance
			rep.Applied = append(rep.Applied, changedWeights...)
		}
	}
	rep.Unchanged = len(rep.Applied) == 0 && len(rep.RestartRequired) == 0
	st.log.Info("config reloaded", "file", path, "applied", rep.Applied, "restart_required", rep.RestartRequired)
	return rep, nil
}
