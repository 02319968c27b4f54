package stack

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"reflect"
	"sync"
	"time"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/router"
	"github.com/kvroute/kvroute/router/admin"
)

// This file connects the admin API and dashboard (router/admin) to the router: the
// backend the admin handler reads and acts through, the admin listener, config reload,
// and the explanations of routing decisions.

// adminState is the Stack's admin API: its own listener, if any.
type adminState struct {
	// mu guards reloads and applied, the config values currently in effect for the
	// settings a reload can change.
	mu      sync.Mutex
	applied configs.CacheAware
	workers []configs.Worker // the static workers in effect
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
	if cfg.PathPrefix != "" {
		h, err := st.adminHandler(ln.Addr())
		if err != nil {
			return err
		}
		st.Server.MountAdmin(h)
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
	if tc := st.Server.TLSConfig(); tc != nil {
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
		Pool: st.Pool, Index: st.Backend(), Gatherer: st.Registry, MetricsMaxAge: st.Config.CacheAware.MetricsMaxAge,
		Traffic: s, Decisions: explainedDecisions{s}, Querier: s,
		Reload: st.reload, DrainTimeout: st.Config.Timeouts.Shutdown,
		Info: admin.Info{
			Policy: st.Config.Policy, TokenizeMode: st.Config.Tokenize.Mode, EventSource: st.Config.Events.Source,
			Listen: st.Config.Listen, ConfigFile: st.Config.Source, Started: st.admin.started,
		},
	}
	if st.Events != nil {
		b.Feeds = st.feedStates
	}
	return b
}

// explainedDecisions shows the router's decisions to the admin API, explained.
type explainedDecisions struct{ s *router.Server }

func (e explainedDecisions) Decisions(n int) []admin.Decision { return explainAll(e.s.Decisions(n)) }

var _ admin.DecisionSource = explainedDecisions{}

func finite(v float64) *float64 {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return nil
	}
	return &v
}

// explainAll adapts the router's decisions to the admin API's view: each with its
// explanation ([router.Explain]) and its non-finite costs as nil.
func explainAll(ds []router.Decision) []admin.Decision {
	out := make([]admin.Decision, len(ds))
	for i := range ds {
		d := &ds[i]
		e := admin.Decision{
			Time: d.Time, RequestID: d.RequestID, Model: d.Model, Policy: d.Policy, PromptTokens: d.PromptTokens,
			Blocks: d.Blocks, Exact: d.Exact, Chosen: d.Chosen, Attempt: d.Attempt,
			Explanation: router.Explain(d), Candidates: make([]admin.Candidate, len(d.Candidates)),
			PredictedCachedTokens: d.PredictedCachedTokens, Phase: d.Phase,
		}
		if r := d.Reported; r != nil {
			e.Reported = &admin.ReportedUsage{PromptTokens: r.PromptTokens, CachedTokens: r.CachedTokens}
		}
		for k, c := range d.Candidates {
			e.Candidates[k] = admin.Candidate{
				Worker: c.Worker, OverlapBlocks: c.OverlapBlocks, AffinityBlocks: c.AffinityBlocks, InFlight: c.InFlight,
				PendingPrefill: c.PendingPrefill, ActiveBlocks: c.ActiveBlocks,
				PrefillCost: finite(c.PrefillCost), DecodeCost: finite(c.DecodeCost),
				QueueCost: finite(c.QueueCost), TotalCost: finite(c.TotalCost), LoadGuarded: math.IsInf(c.TotalCost, 1),
			}
		}
		out[i] = e
	}
	return out
}

// reload re-reads the config file the router was started with and applies the settings
// that can change at run time: the static workers (added, removed and changed ones join
// and leave as with any membership source; not when --worker flags set them) and the
// cache_aware policy's weights (a new selector replaces the old one between two
// decisions; session stickiness starts afresh). Every other difference is reported as
// needing a restart: the rest of the config is read without synchronization on the
// request path. SIGHUP does the same ([Stack.ReloadOnSIGHUP]).
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
	cur.Workers = st.admin.workers
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
		{"admin", cur.Admin, next.Admin}, {"discovery", cur.Discovery, next.Discovery},
		{"auth", cur.Auth, next.Auth}, {"rate_limit", cur.RateLimit, next.RateLimit},
		{"limits", cur.Limits, next.Limits}, {"tls", cur.TLS, next.TLS}, {"upstream", cur.Upstream, next.Upstream},
		{"queue", cur.Queue, next.Queue}, {"index", cur.Index, next.Index},
	} {
		if !reflect.DeepEqual(sec.old, sec.new) {
			rep.RestartRequired = append(rep.RestartRequired, sec.name)
		}
	}
	switch {
	case reflect.DeepEqual(cur.Workers, next.Workers):
	case st.Config.WorkersFromFlags:
		rep.RestartRequired = append(rep.RestartRequired, "workers (set by --worker flags: add and remove workers with the admin API)")
	default:
		change, refused := st.applyWorkers(next.Workers)
		rep.Refused = refused
		st.admin.workers = next.Workers
		if change != "" {
			rep.Applied = append(rep.Applied, change)
		}
	}
	if len(changedWeights) > 0 {
		if !st.Server.PolicyReplaceable() || next.Policy != cur.Policy {
			rep.RestartRequired = append(rep.RestartRequired, changedWeights...)
		} else {
			sel, err := router.NewSelector(next)
			if err != nil {
				return admin.ReloadReport{}, err
			}
			if err := st.Server.ReplacePolicy(sel); err != nil {
				return admin.ReloadReport{}, fmt.Errorf("policy %s: %w", next.Policy, err)
			}
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
