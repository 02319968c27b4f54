package kvevents

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/proto"
)

// This file bounds how stale a worker's index entries may be (issue #19). An event feed
// that lags (a slow bridge, a congested network, an engine host whose clock runs behind)
// or falls silent while its worker serves requests leaves the index showing blocks the
// engine has evicted since; counted as confirmed they attract requests that will miss.
// A [Staleness] monitor judges every feed periodically and marks those beyond
// MaxStaleness, so the caller can count their entries as predictions until the feed
// catches up.

// StalenessOptions configure a [Staleness] monitor.
type StalenessOptions struct {
	// MaxStaleness is how old a serving worker's view may get before its feed is stale;
	// 0 disables the judgement (the metrics are still served).
	MaxStaleness time.Duration
	// Feeds returns every feed's state (e.g. [Manager.States]); required.
	Feeds func() []WorkerState
	// Routed returns when the router last routed a request to worker id (zero if never)
	// and how many of its requests are in flight there; required.
	Routed func(id string) (last time.Time, inFlight int64)
	// Mark is told when a feed turns stale (true) or catches up (false), including false
	// for a stale feed that disappears. Calls come from one goroutine at a time, in order.
	// Nil ignores them.
	Mark func(k proto.WorkerKey, stale bool)
	// IdleAfter is how long after its last routed request a worker with nothing in
	// flight counts as idle even though its feed has not covered that request (a request
	// served wholly from cache may change no block, so its feed owes nothing); 0 means
	// 30s (events.dead_after's default). At least MaxStaleness.
	IdleAfter time.Duration
	// Interval is how often Run judges the feeds; 0 means MaxStaleness/4 within
	// [50ms, 1s] (1s when MaxStaleness is 0).
	Interval time.Duration
	// Registerer receives kvroute_events_last_event_age_seconds, kvroute_events_stale and
	// kvroute_events_epoch; nil registers none.
	Registerer prometheus.Registerer
	// Logger logs transitions; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Staleness judges the feeds' staleness. A feed's view is the engine time its index
// entries reflect: the timestamp of its last live batch (its arrival time when batches
// carry none). Its worker is serving when the router routed a request to it after the
// view and that request is either recent (within IdleAfter) or some request is still
// in flight there: an idle worker publishes nothing and is never stale, however old its
// last event. A serving worker's feed is stale when
//
//	now - max(view, serving since) > MaxStaleness
//
// or when its last batch's lag (arrival minus the engine's timestamp) exceeds
// MaxStaleness; "serving since" is when the monitor first saw it serving in the current
// busy phase (to within Interval), so that a worker idle for an hour is not stale the
// moment it gets a request, only once it has served that long without a word. It catches
// up when a batch stamped after the last routed request arrives within the bound, or
// when the worker goes idle. All methods are safe for concurrent use.
type Staleness struct {
	opts StalenessOptions

	// mu guards feeds and serializes Check.
	mu    sync.Mutex
	feeds map[proto.WorkerKey]*feedJudgement

	age, stale, epoch *prometheus.Desc
}

// feedJudgement is the monitor's memory of one feed.
type feedJudgement struct {
	servingSince time.Time // zero while idle
	stale        bool
	since        time.Time // when it turned stale
}

// NewStaleness returns a monitor; call Run to start it.
func NewStaleness(opts StalenessOptions) (*Staleness, error) {
	if opts.Feeds == nil || opts.Routed == nil {
		return nil, errors.New("kvevents: StalenessOptions.Feeds and Routed are required")
	}
	if opts.MaxStaleness < 0 {
		return nil, errors.New("kvevents: negative MaxStaleness")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.IdleAfter <= 0 {
		opts.IdleAfter = 30 * time.Second
	}
	opts.IdleAfter = max(opts.IdleAfter, opts.MaxStaleness)
	if opts.Interval <= 0 {
		opts.Interval = time.Second
		if opts.MaxStaleness > 0 {
			opts.Interval = min(max(opts.MaxStaleness/4, 50*time.Millisecond), time.Second)
		}
	}
	w := []string{"worker"}
	s := &Staleness{
		opts:  opts,
		feeds: map[proto.WorkerKey]*feedJudgement{},
		age: prometheus.NewDesc("kvroute_events_last_event_age_seconds",
			"Time since the worker's last KV event batch was applied, per worker (absent before the first).", w, nil),
		stale: prometheus.NewDesc("kvroute_events_stale",
			"1 while the worker's KV event feed is stale (events.max_staleness exceeded while it serves requests) and its entries count as predictions, else 0.", w, nil),
		epoch: prometheus.NewDesc("kvroute_events_epoch",
			"The worker's KV event feed epoch: resets of its entries so far.", w, nil),
	}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Run judges the feeds every Interval until ctx ends.
func (s *Staleness) Run(ctx context.Context) {
	t := time.NewTicker(s.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Check()
		}
	}
}

// Check judges every feed once, calling Mark for those that change.
func (s *Staleness) Check() {
	states := s.opts.Feeds()
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := make(map[proto.WorkerKey]bool, len(states))
	for i := range states {
		st := &states[i]
		seen[st.Key] = true
		j := s.feeds[st.Key]
		if j == nil {
			j = &feedJudgement{}
			s.feeds[st.Key] = j
		}
		last, inFlight := s.opts.Routed(st.Key.ID)
		stale, age := s.judge(j, st, now, last, inFlight)
		if stale == j.stale {
			continue
		}
		j.stale = stale
		if stale {
			j.since = now
			s.opts.Logger.Warn("kv event feed stale: its entries count as predictions", "worker", st.Key.String(),
				"view_age", age.Round(time.Millisecond), "lag", st.Lag.Round(time.Millisecond), "max_staleness", s.opts.MaxStaleness)
		} else {
			s.opts.Logger.Info("kv event feed caught up", "worker", st.Key.String(), "stale_for", now.Sub(j.since).Round(time.Millisecond))
			j.since = time.Time{}
		}
		if s.opts.Mark != nil {
			s.opts.Mark(st.Key, stale)
		}
	}
	for k, j := range s.feeds {
		if !seen[k] {
			delete(s.feeds, k)
			if j.stale && s.opts.Mark != nil {
				s.opts.Mark(k, false)
			}
		}
	}
}

// judge applies the rule of the type's doc to one feed and returns the verdict and how
// old the feed's view of the serving worker is. mu must be held.
func (s *Staleness) judge(j *feedJudgement, st *WorkerState, now, last time.Time, inFlight int64) (bool, time.Duration) {
	bound := s.opts.MaxStaleness
	view := st.LastBatchTS
	if view.IsZero() {
		view = st.LastEvent
	}
	serving := !last.IsZero() && last.After(view) && (inFlight > 0 || now.Sub(last) < s.opts.IdleAfter)
	if bound <= 0 || !serving {
		j.servingSince = time.Time{}
		return false, 0
	}
	if j.servingSince.IsZero() {
		j.servingSince = now
	}
	from := view
	if j.servingSince.After(from) {
		from = j.servingSince
	}
	age := now.Sub(from)
	return age > bound || st.Lag > bound, max(age, st.Lag)
}

// Annotate sets Stale and StaleSince in states (from [Manager.States]) from the last
// judgement.
func (s *Staleness) Annotate(states []WorkerState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range states {
		if j := s.feeds[states[i].Key]; j != nil && j.stale {
			states[i].Stale, states[i].StaleSince = true, j.since
		}
	}
}

// Describe implements [prometheus.Collector].
func (s *Staleness) Describe(ch chan<- *prometheus.Desc) {
	ch <- s.age
	ch <- s.stale
	ch <- s.epoch
}

// Collect implements [prometheus.Collector]: the ages are computed at scrape time.
func (s *Staleness) Collect(ch chan<- prometheus.Metric) {
	states := s.opts.Feeds()
	s.Annotate(states)
	now := s.opts.Now()
	for i := range states {
		st := &states[i]
		l := st.Key.String()
		if !st.LastEvent.IsZero() {
			ch <- prometheus.MustNewConstMetric(s.age, prometheus.GaugeValue, now.Sub(st.LastEvent).Seconds(), l)
		}
		stale := 0.0
		if st.Stale {
			stale = 1
		}
		ch <- prometheus.MustNewConstMetric(s.stale, prometheus.GaugeValue, stale, l)
		ch <- prometheus.MustNewConstMetric(s.epoch, prometheus.GaugeValue, float64(st.Epoch), l)
	}
}

var _ prometheus.Collector = (*Staleness)(nil)
