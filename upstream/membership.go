package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/upstream/discovery"
)

// This file is the pool's membership: workers joining and leaving while the router runs.
//
// Join: the worker enters the fleet snapshot at once but is available only after its
// first health check and model discovery pass (its loop checks it immediately); the
// membership hook then gives it an event feed and index entries. Leave: the worker leaves
// the snapshot at once (no new request can pick it), its health loop stops and the hook
// stops its feed; requests already on it finish, bounded by timeouts.shutdown; then it is
// gone: its metric series are deleted and the hook removes it from the index.

// Membership sources: a worker's Source names where it came from.
const (
	SourceStatic = "static" // the workers list of the config file or --worker flags
	SourceAPI    = "api"    // POST /api/workers
)

// Errors of membership changes.
var (
	// ErrDuplicateID is returned when a worker id is already a member.
	ErrDuplicateID = errors.New("worker id already in use")
	// ErrDuplicateURL is returned when a worker's URL is already another member's.
	ErrDuplicateURL = errors.New("worker url already in use")
	// ErrUnknownWorker is returned for an id that is not a member.
	ErrUnknownWorker = errors.New("no such worker")
)

// ChangeKind says what happened to a member.
type ChangeKind int

// The changes a membership hook is told about.
const (
	// Joined: a worker entered the fleet (not yet available).
	Joined ChangeKind = iota
	// ModelsChanged: a worker's served models changed (first discovery, or the engine
	// now serves another model); its index entries are stale if its base model changed.
	ModelsChanged
	// Leaving: a worker left the fleet and takes no new request; requests on it finish.
	Leaving
	// Left: a leaving worker's requests have finished (or their bound passed): forget it.
	// Replaced is true when a worker with the same id has joined since, so what is keyed
	// by id belongs to the new worker now.
	Left
)

func (k ChangeKind) String() string {
	return [...]string{"joined", "models_changed", "leaving", "left"}[k]
}

// Change is one membership change given to the hook.
type Change struct {
	Kind   ChangeKind
	Worker *Worker
	// Replaced (Left only) is true when another worker with the same id is a member now.
	Replaced bool
}

// membership holds the state of membership changes.
type membership struct {
	// mu guards the fields below and every replacement of Pool.fleet.
	mu      sync.Mutex
	ctx     context.Context // Run's context; nil before Run
	loops   map[*Worker]healthLoop
	leaving map[*Worker]struct{}
	wg      sync.WaitGroup // loops and leave waits
	// hookMu serializes hook calls, in the order of the changes.
	hookMu sync.Mutex
	hook   func(Change)
	log    *slog.Logger
}

func (m *membership) init() {
	m.loops = map[*Worker]healthLoop{}
	m.leaving = map[*Worker]struct{}{}
	m.log = slog.New(slog.DiscardHandler)
}

// SetHook installs the function told about every membership change, in order, one call
// at a time, before [Pool.Run]. It runs on the goroutine making the change and must not
// call Pool methods that change membership.
func (p *Pool) SetHook(hook func(Change)) { p.members.hook = hook }

// SetLogger sets the logger of membership changes; nil discards.
func (p *Pool) SetLogger(log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p.members.log = log
}

func (p *Pool) notify(c Change) {
	p.members.hookMu.Lock()
	defer p.members.hookMu.Unlock()
	if p.members.hook != nil {
		p.members.hook(c)
	}
}

// run starts the loops of the current members and waits for ctx to end and every loop
// and leave to finish.
func (m *membership) run(ctx context.Context, p *Pool) {
	m.mu.Lock()
	m.ctx = ctx
	for _, w := range p.Workers() {
		m.startLoop(p, w, p.nextCheck(w))
	}
	m.mu.Unlock()
	<-ctx.Done()
	m.wg.Wait()
}

// startLoop starts w's health loop if Run is running. mu must be held.
func (m *membership) startLoop(p *Pool, w *Worker, first time.Duration) {
	if m.ctx == nil || m.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithCancel(m.ctx)
	done := make(chan struct{})
	m.loops[w] = healthLoop{cancel: cancel, done: done}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(done)
		p.loop(ctx, w, first)
	}()
}

// healthLoop is a running health loop: cancel stops it, done is closed once it has
// returned (a check under way may still write w's metrics until then).
type healthLoop struct {
	cancel context.CancelFunc
	done   <-chan struct{}
}

// Add makes wc a member from source: validated, refused with [ErrDuplicateID] or
// [ErrDuplicateURL] when another member has its id or URL. The worker is checked at once
// (when the pool runs) and available as soon as its health check and model discovery
// pass. It returns the new worker.
func (p *Pool) Add(wc configs.Worker, source string) (*Worker, error) {
	if err := configs.ValidateWorker(&wc); err != nil {
		return nil, err
	}
	w, err := newWorker(wc, p.cfg)
	if err != nil {
		return nil, err
	}
	w.Source, w.Joined = source, p.now()
	w.record("joined", "source "+source)
	m := &p.members
	m.mu.Lock()
	cur := p.fleet.Load()
	if cur.byID[w.ID] != nil {
		m.mu.Unlock()
		return nil, fmt.Errorf("worker %q: %w (source %s)", w.ID, ErrDuplicateID, cur.byID[w.ID].Source)
	}
	if o := cur.byURL[w.URL]; o != nil {
		m.mu.Unlock()
		return nil, fmt.Errorf("worker %q: %w: %s is worker %q", w.ID, ErrDuplicateURL, w.URL, o.ID)
	}
	next := cur.with(w)
	p.fleet.Store(next)
	m.startLoop(p, w, 0)
	p.metrics.healthy.WithLabelValues(w.ID).Set(0)
	p.countWorkers(next)
	p.notify(Change{Kind: Joined, Worker: w}) // under mu: the hook sees changes in order
	m.mu.Unlock()
	p.metrics.changes.WithLabelValues(source, "joined").Inc()
	m.log.Info("worker joined", "worker", w.ID, "url", w.URL, "source", source, "events", w.Events)
	return w, nil
}

// Remove starts the leave of member id: it takes no new request from now on, its health
// loop stops, and once its requests in flight have finished (or drainTimeout has passed)
// it is gone. done is closed then. Removing an unknown id returns [ErrUnknownWorker].
func (p *Pool) Remove(id string, drainTimeout time.Duration) (done <-chan struct{}, err error) {
	m := &p.members
	m.mu.Lock()
	defer m.mu.Unlock()
	w := p.fleet.Load().byID[id]
	if w == nil {
		return nil, fmt.Errorf("worker %q: %w", id, ErrUnknownWorker)
	}
	return p.leaveLocked(w, drainTimeout), nil
}

// leaveLocked starts w's leave. members.mu must be held.
func (p *Pool) leaveLocked(w *Worker, drainTimeout time.Duration) <-chan struct{} {
	m := &p.members
	next := p.fleet.Load().without(w)
	p.fleet.Store(next)
	var loopDone <-chan struct{}
	if hl, ok := m.loops[w]; ok {
		hl.cancel()
		loopDone = hl.done
		delete(m.loops, w)
	}
	m.leaving[w] = struct{}{}
	w.Drain()
	w.leaving.Store(true)
	w.available.Store(false)
	w.record("leaving", fmt.Sprintf("%d requests in flight", w.InFlight()))
	p.countWorkers(next)
	p.metrics.changes.WithLabelValues(w.Source, "leaving").Inc()
	m.log.Info("worker leaving", "worker", w.ID, "source", w.Source, "in_flight", w.InFlight())
	p.notify(Change{Kind: Leaving, Worker: w})
	done := make(chan struct{})
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(done)
		p.waitIdle(w, drainTimeout)
		if loopDone != nil {
			<-loopDone // its last check must not write the series forget deletes
		}
		m.mu.Lock()
		delete(m.leaving, w)
		replaced := p.fleet.Load().byID[w.ID] != nil
		if !replaced {
			p.metrics.forget(w.ID)
		}
		w.record("left", "")
		p.notify(Change{Kind: Left, Worker: w, Replaced: replaced})
		m.mu.Unlock()
		w.closeIdle()
		p.metrics.changes.WithLabelValues(w.Source, "left").Inc()
		m.log.Info("worker left", "worker", w.ID, "source", w.Source, "in_flight", w.InFlight())
	}()
	return done
}

// waitIdle waits until w has no request in flight, at most timeout.
func (p *Pool) waitIdle(w *Worker, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for w.InFlight() > 0 && time.Now().Before(deadline) {
		<-t.C
	}
}

// Leaving returns the workers that are leaving (their requests still finishing).
func (p *Pool) Leaving() []*Worker {
	m := &p.members
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*Worker, 0, len(m.leaving))
	for w := range m.leaving {
		out = append(out, w)
	}
	slices.SortFunc(out, func(a, b *Worker) int { return a.Joined.Compare(b.Joined) })
	return out
}

// SyncReport says what [Pool.Sync] did.
type SyncReport struct {
	Joined, Left, Replaced, Unready, Ready []string
	// Rejected maps a refused member's id to why.
	Rejected map[string]string
}

// Sync makes the members from source be exactly ms: members of source missing from ms
// leave, new ones join, ones whose settings changed are replaced (leave and join again
// under the same id), and each member's readiness is applied (a worker that is not ready
// is a member but takes no new request). Members of other sources are never touched: an
// id or URL taken by one is refused, logged and counted. A leave's in-flight requests
// get drainTimeout to finish. A member reported with invalid settings is refused and,
// if it is a member already, kept as it was.
func (p *Pool) Sync(source string, ms []discovery.Member, drainTimeout time.Duration) SyncReport {
	rep := SyncReport{Rejected: map[string]string{}}
	want := map[string]discovery.Member{}
	keep := map[string]bool{} // ids reported with invalid settings: a member stays as it is
	for _, mb := range ms {
		w := mb.Worker
		if err := configs.ValidateWorker(&w); err != nil {
			p.reject(source, w.ID, "invalid", err, &rep)
			keep[w.ID] = true
			continue
		}
		if _, dup := want[w.ID]; dup {
			p.reject(source, w.ID, "duplicate_id", fmt.Errorf("worker %q reported twice", w.ID), &rep)
			continue
		}
		mb.Worker = w
		want[w.ID] = mb
	}
	m := &p.members
	m.mu.Lock()
	for _, w := range p.fleet.Load().list {
		if w.Source != source {
			continue
		}
		mb, ok := want[w.ID]
		switch {
		case keep[w.ID] && !ok:
		case !ok:
			p.leaveLocked(w, drainTimeout)
			rep.Left = append(rep.Left, w.ID)
		case !reflect.DeepEqual(w.Config, mb.Worker):
			p.leaveLocked(w, drainTimeout)
			rep.Replaced = append(rep.Replaced, w.ID)
		default:
			delete(want, w.ID)
			if p.setReady(w, mb.Ready) {
				if mb.Ready {
					rep.Ready = append(rep.Ready, w.ID)
				} else {
					rep.Unready = append(rep.Unready, w.ID)
				}
			}
		}
	}
	m.mu.Unlock()
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		mb := want[id]
		w, err := p.Add(mb.Worker, source)
		if err != nil {
			reason := "invalid"
			switch {
			case errors.Is(err, ErrDuplicateID):
				reason = "duplicate_id"
			case errors.Is(err, ErrDuplicateURL):
				reason = "duplicate_url"
			}
			p.reject(source, id, reason, err, &rep)
			continue
		}
		p.setReady(w, mb.Ready)
		if !slices.Contains(rep.Replaced, id) {
			rep.Joined = append(rep.Joined, id)
		}
	}
	return rep
}

// setReady applies a source's readiness to w and reports whether it changed.
func (p *Pool) setReady(w *Worker, ready bool) bool {
	if w.notReady.Swap(!ready) == !ready {
		return false
	}
	if ready {
		w.record("ready", "source "+w.Source)
	} else {
		w.record("not_ready", "source "+w.Source)
	}
	p.members.log.Info("worker readiness", "worker", w.ID, "source", w.Source, "ready", ready)
	return true
}

func (p *Pool) reject(source, id, reason string, err error, rep *SyncReport) {
	rep.Rejected[id] = err.Error()
	p.metrics.rejected.WithLabelValues(source, reason).Inc()
	p.members.log.Warn("worker refused", "worker", id, "source", source, "reason", reason, "err", err)
}

// with returns a copy of f with w added.
func (f *fleet) with(w *Worker) *fleet {
	n := &fleet{list: append(slices.Clone(f.list), w), byID: make(map[string]*Worker, len(f.byID)+1), byURL: make(map[string]*Worker, len(f.byURL)+1)}
	for k, v := range f.byID {
		n.byID[k] = v
	}
	for k, v := range f.byURL {
		n.byURL[k] = v
	}
	n.byID[w.ID], n.byURL[w.URL] = w, w
	return n
}

// without returns a copy of f without w.
func (f *fleet) without(w *Worker) *fleet {
	n := &fleet{byID: make(map[string]*Worker, len(f.byID)), byURL: make(map[string]*Worker, len(f.byURL))}
	for _, o := range f.list {
		if o != w {
			n.list = append(n.list, o)
			n.byID[o.ID], n.byURL[o.URL] = o, o
		}
	}
	return n
}

// countWorkers sets the workers gauge from f.
func (p *Pool) countWorkers(f *fleet) {
	n := map[string]int{SourceStatic: 0, SourceAPI: 0}
	for _, w := range f.list {
		n[w.Source]++
	}
	for s, c := range n {
		p.metrics.workers.WithLabelValues(s).Set(float64(c))
	}
}

// forget deletes a gone worker's series.
func (m *poolMetrics) forget(id string) {
	l := prometheus.Labels{"worker": id}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{m.healthy, m.ejections, m.checks, m.genProbes, m.expired} {
		v.DeletePartialMatch(l)
	}
}
