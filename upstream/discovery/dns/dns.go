package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/upstream/discovery"
)

// sourceName is the source's name in logs, metrics and [Source.Name].
const sourceName = "dns"

// maxParallelTargets bounds the SRV targets resolved at once in one lookup.
const maxParallelTargets = 8

// Options are the optional dependencies of a [Source].
type Options struct {
	// Registerer receives the kvroute_discovery_* collectors ([discovery.NewMetrics]).
	// Nil: no metrics.
	Registerer prometheus.Registerer
	// Logger receives the source's logs. Nil: discarded.
	Logger *slog.Logger
}

// Source discovers workers from the A/AAAA or SRV records of one name, as configured by
// [configs.DNSDiscovery]. It holds no state between runs: Run may be called again after
// it returned, but not twice at once.
type Source struct {
	cfg      configs.DNSDiscovery
	srv      bool // type SRV, else A (A and AAAA)
	resolver *net.Resolver
	metrics  *discovery.Metrics
	log      *slog.Logger
}

// New returns a source for cfg, which must hold its defaults ([configs.Load] fills
// them). It checks what Run relies on — a name, a known type, a port for type A, a
// positive interval and timeout, a server that is host:port, a template giving valid
// workers — and returns an error quoting the first bad value.
func New(cfg configs.DNSDiscovery, opts Options) (*Source, error) {
	s := &Source{cfg: cfg, log: opts.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	switch t := strings.ToUpper(cfg.Type); {
	case cfg.Name == "":
		return nil, errors.New("dns discovery: name is required")
	case t == "SRV":
		s.srv = true
	case t == "A" || t == "AAAA":
		if cfg.Port < 1 || cfg.Port > 65535 {
			return nil, fmt.Errorf("dns discovery: port %d must be from 1 to 65535 for type %s", cfg.Port, cfg.Type)
		}
	default:
		return nil, fmt.Errorf("dns discovery: type %q is not A or SRV", cfg.Type)
	}
	if cfg.Interval <= 0 || cfg.Timeout <= 0 {
		return nil, fmt.Errorf("dns discovery: interval %v and timeout %v must be positive", cfg.Interval, cfg.Timeout)
	}
	sample := cfg.Worker("sample", "192.0.2.1", 80)
	if err := configs.ValidateWorker(&sample); err != nil {
		return nil, fmt.Errorf("dns discovery: worker template: %w", err)
	}
	// StrictErrors: an A+AAAA lookup whose AAAA half times out must fail, not return the
	// A half alone, which would remove every IPv6 worker until the next lookup.
	s.resolver = &net.Resolver{PreferGo: true, StrictErrors: true}
	if cfg.Server != "" {
		if _, _, err := net.SplitHostPort(cfg.Server); err != nil {
			return nil, fmt.Errorf("dns discovery: server %q: %w", cfg.Server, err)
		}
		var d net.Dialer
		server := cfg.Server
		// The Go resolver dials each server of resolv.conf, over UDP and over TCP when
		// an answer is truncated; every dial goes to cfg.Server instead, with the
		// resolver's network.
		s.resolver.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, server)
		}
	}
	m, err := discovery.NewMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("dns discovery: %w", err)
	}
	s.metrics = m
	return s, nil
}

// Name returns "dns".
func (s *Source) Name() string { return sourceName }

// Run looks the name up at once and then every interval until ctx ends, calling update
// with the sorted view when it differs from the last one reported (see the package doc
// for what is kept on errors). It returns nil when ctx ends.
func (s *Source) Run(ctx context.Context, update func([]discovery.Member)) error {
	st := &runState{}
	tick := time.NewTicker(s.cfg.Interval)
	defer tick.Stop()
	for {
		s.once(ctx, st, update)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// runState is what one Run remembers between lookups.
type runState struct {
	reported bool     // a view was reported
	view     []string // ids of the last reported view, sorted
	holding  string   // why the last lookup kept the view ("" when it did not)
	held     int      // lookups in a row that kept the view
	badSeen  map[string]bool
}

// rejection is one record skipped.
type rejection struct {
	reason string // a discovery.Reject* constant
	value  string // the bad value, for the log
	detail string // why, for the log
}

// once does one lookup and reports its view if it changed.
func (s *Source) once(ctx context.Context, st *runState, update func([]discovery.Member)) {
	lctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	members, rejected, err := s.lookup(lctx)
	cancel()
	if ctx.Err() != nil {
		return // shutting down: not a failed lookup
	}
	s.metrics.Lookup(sourceName, err == nil)
	if err != nil {
		// The rejections of an answer not used are neither counted nor forgotten.
		var de *net.DNSError
		if errors.As(err, &de) && de.IsNotFound {
			s.hold(st, "not found", "dns discovery: no records; keeping the last view", err)
		} else {
			s.hold(st, "error", "dns discovery: lookup failed; keeping the last view", err)
		}
		return
	}
	s.noteRejected(st, rejected)
	if len(members) == 0 {
		s.hold(st, "empty", "dns discovery: no usable records; keeping the last view", nil)
		return
	}
	if st.holding != "" {
		s.log.Info("dns discovery: lookups answer again", "name", s.cfg.Name, "after", st.held, "kept_because", st.holding)
		st.holding, st.held = "", 0
	}
	ids := make([]string, len(members))
	for i, m := range members {
		ids[i] = m.Worker.ID
	}
	if st.reported && slices.Equal(ids, st.view) {
		return
	}
	s.log.Info("dns discovery: view changed", "name", s.cfg.Name, "members", len(ids), "was", len(st.view))
	st.reported, st.view = true, ids
	s.metrics.Members(sourceName, len(members))
	update(members)
}

// hold records a lookup that keeps the last view, logging msg at warn on the first of
// a streak (or when its cause changes) and at debug after.
func (s *Source) hold(st *runState, why, msg string, err error) {
	args := []any{"name", s.cfg.Name, "members", len(st.view)}
	if err != nil {
		args = append(args, "err", err)
	}
	if st.holding != why {
		s.log.Warn(msg, args...)
	} else {
		s.log.Debug(msg, args...)
	}
	st.holding = why
	st.held++
}

// noteRejected counts every rejection and logs those not in the previous lookup's, so a
// bad record is logged once for as long as it stays in the answers (and the set
// remembered is bounded by one answer).
func (s *Source) noteRejected(st *runState, rejected []rejection) {
	seen := make(map[string]bool, len(rejected))
	for _, r := range rejected {
		s.metrics.Rejected(sourceName, r.reason)
		k := r.reason + " " + r.value
		if !st.badSeen[k] && !seen[k] {
			s.log.Warn("dns discovery: record skipped", "name", s.cfg.Name, "reason", r.reason, "value", r.value, "detail", r.detail)
		}
		seen[k] = true
	}
	st.badSeen = seen
}

// lookup resolves the name once and returns the members sorted by id, and the records
// it skipped. An error means the answer must not replace the last view.
func (s *Source) lookup(ctx context.Context) ([]discovery.Member, []rejection, error) {
	b := builder{cfg: &s.cfg, byID: map[string]discovery.Member{}}
	if !s.srv {
		addrs, err := s.resolver.LookupIPAddr(ctx, s.cfg.Name)
		if err != nil {
			return nil, nil, fmt.Errorf("look up %q: %w", s.cfg.Name, err)
		}
		for _, a := range addrs {
			b.add(a.IP, s.cfg.Port)
		}
		return b.members(), b.rejected, nil
	}
	_, srvs, err := s.resolver.LookupSRV(ctx, "", "", s.cfg.Name)
	if err != nil {
		if len(srvs) == 0 {
			return nil, nil, fmt.Errorf("look up SRV %q: %w", s.cfg.Name, err)
		}
		// Records with invalid target names were dropped by the resolver; use the rest.
		b.reject(discovery.RejectBadAddress, "SRV "+s.cfg.Name, err.Error())
	}
	type target struct {
		name  string
		port  int
		addrs []net.IPAddr
		err   error
	}
	var targets []*target
	for _, r := range srvs {
		switch {
		case r.Port == 0:
			b.reject(discovery.RejectBadPort, net.JoinHostPort(r.Target, "0"), "SRV port 0")
		case r.Target == "." || r.Target == "":
			// RFC 2782: the service is decidedly not available at this domain.
			b.reject(discovery.RejectBadAddress, r.Target, "SRV target \".\"")
		default:
			targets = append(targets, &target{name: r.Target, port: int(r.Port)})
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxParallelTargets)
	for _, t := range targets {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			t.addrs, t.err = s.resolver.LookupIPAddr(ctx, t.name)
		})
	}
	wg.Wait()
	for _, t := range targets {
		var de *net.DNSError
		switch {
		case t.err == nil:
			for _, a := range t.addrs {
				b.add(a.IP, t.port)
			}
		case errors.As(t.err, &de) && de.IsNotFound:
			// A dangling target: skip it, as a record that names no worker.
			b.reject(discovery.RejectBadAddress, t.name, "SRV target has no addresses")
		default:
			// Leaving the target out would remove its workers because of a timeout.
			return nil, nil, fmt.Errorf("look up SRV target %q of %q: %w", t.name, s.cfg.Name, t.err)
		}
	}
	return b.members(), b.rejected, nil
}

// builder collects the members of one answer.
type builder struct {
	cfg      *configs.DNSDiscovery
	byID     map[string]discovery.Member
	rejected []rejection
}

func (b *builder) reject(reason, value, detail string) {
	b.rejected = append(b.rejected, rejection{reason: reason, value: value, detail: detail})
}

// add adds the worker at ip and port, or records why not.
func (b *builder) add(ip net.IP, port int) {
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		b.reject(discovery.RejectBadAddress, ip.String(), "not an IP address")
		return
	}
	addr = addr.Unmap()
	if why := discovery.Unusable(addr); why != "" {
		b.reject(discovery.RejectBadAddress, addr.String(), why)
		return
	}
	if port < 1 || port > 65535 {
		b.reject(discovery.RejectBadPort, addr.String(), fmt.Sprintf("port %d", port))
		return
	}
	id := netip.AddrPortFrom(addr, uint16(port)).String()
	if _, dup := b.byID[id]; dup {
		return
	}
	w := b.cfg.Worker(id, addr.String(), port)
	if err := configs.ValidateWorker(&w); err != nil {
		b.reject(discovery.RejectInvalidWorker, id, err.Error())
		return
	}
	b.byID[id] = discovery.Member{Worker: w, Ready: true}
}

// members returns the members sorted by id.
func (b *builder) members() []discovery.Member {
	ms := make([]discovery.Member, 0, len(b.byID))
	for _, m := range b.byID {
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b discovery.Member) int { return strings.Compare(a.Worker.ID, b.Worker.ID) })
	return ms
}

var _ discovery.Source = (*Source)(nil)
