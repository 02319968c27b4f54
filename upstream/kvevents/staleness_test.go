package kvevents_test

import (
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/proto"
	ingest "github.com/kvroute/kvroute/upstream/kvevents"
)

// staleRig scripts one feed's state, the router's routing record and the clock.
type staleRig struct {
	mu       sync.Mutex
	now      time.Time
	feed     ingest.WorkerState
	routed   time.Time
	inFlight int64
	marks    []bool
}

func (r *staleRig) feeds() []ingest.WorkerState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return []ingest.WorkerState{r.feed}
}

func (r *staleRig) clock() time.Time { r.mu.Lock(); defer r.mu.Unlock(); return r.now }

func (r *staleRig) advance(d time.Duration) { r.mu.Lock(); r.now = r.now.Add(d); r.mu.Unlock() }

// batch makes a batch stamped by the engine at ts arrive now.
func (r *staleRig) batch(ts time.Time) {
	r.mu.Lock()
	r.feed.LastEvent, r.feed.LastBatchTS, r.feed.Lag = r.now, ts, r.now.Sub(ts)
	r.mu.Unlock()
}

func (r *staleRig) route(inFlight int64) {
	r.mu.Lock()
	r.routed, r.inFlight = r.now, inFlight
	r.mu.Unlock()
}

func newStaleRig(t *testing.T, bound time.Duration, reg prometheus.Registerer) (*staleRig, *ingest.Staleness) {
	t.Helper()
	r := &staleRig{now: time.Unix(1_800_000_000, 0), feed: ingest.WorkerState{Key: proto.WorkerKey{ID: "w"}, Epoch: 2, Resets: 2}}
	s, err := ingest.NewStaleness(ingest.StalenessOptions{
		MaxStaleness: bound, IdleAfter: 10 * time.Second, Feeds: r.feeds, Now: r.clock, Registerer: reg,
		Routed: func(id string) (time.Time, int64) {
			r.mu.Lock()
			defer r.mu.Unlock()
			if id != "w" {
				t.Errorf("Routed(%q), want w", id)
			}
			return r.routed, r.inFlight
		},
		Mark: func(k proto.WorkerKey, stale bool) { r.marks = append(r.marks, stale) },
	})
	if err != nil {
		t.Fatal(err)
	}
	return r, s
}

func (r *staleRig) stale(s *ingest.Staleness) bool {
	st := r.feeds()
	s.Annotate(st)
	return st[0].Stale
}

// The rule step by step: an idle worker with an old last event is not stale; a serving
// one whose feed stays silent is, once the bound has passed since it started serving; a
// batch stamped after the last routed request restores it; a lagging feed is stale
// while it serves and not once the worker is idle again.
func TestStalenessRule(t *testing.T) {
	reg := prometheus.NewRegistry()
	r, s := newStaleRig(t, 5*time.Second, reg)
	r.batch(r.now.Add(-10 * time.Millisecond))
	r.advance(time.Hour) // idle for an hour
	s.Check()
	if r.stale(s) {
		t.Fatal("idle worker with an hour-old last event judged stale")
	}
	r.route(1) // serving now, feed silent
	s.Check()
	r.advance(4 * time.Second)
	s.Check()
	if r.stale(s) {
		t.Fatal("stale after 4s of serving with a 5s bound")
	}
	r.advance(2 * time.Second)
	s.Check()
	if !r.stale(s) {
		t.Fatal("not stale after 6s of serving without an event, 5s bound")
	}
	if got := gauge(t, reg, "kvroute_events_stale"); got != 1 {
		t.Errorf("kvroute_events_stale = %v, want 1", got)
	}
	// A batch stamped after the routed request, arriving promptly: caught up.
	r.batch(r.now.Add(-20 * time.Millisecond))
	s.Check()
	if r.stale(s) {
		t.Fatal("still stale after a fresh batch covering the last request")
	}
	// A lagging feed: every batch arrives 8s after the engine stamped it, while the
	// worker keeps serving.
	for range 5 {
		r.advance(time.Second)
		r.route(1)
		r.batch(r.now.Add(-8 * time.Second))
		s.Check()
	}
	if !r.stale(s) {
		t.Fatal("feed lagging 8s behind a serving worker not stale with a 5s bound")
	}
	// Traffic stops: in flight done, still stale while the feed owes the last requests;
	// once the last request is older than IdleAfter, idle: restored even though the
	// feed's last batch lagged.
	r.mu.Lock()
	r.inFlight = 0
	r.mu.Unlock()
	r.advance(9 * time.Second)
	s.Check()
	if !r.stale(s) {
		t.Fatal("restored while its feed still owes requests of 9s ago")
	}
	r.advance(2 * time.Second)
	s.Check()
	if r.stale(s) {
		t.Fatal("idle worker still stale")
	}
	if want := []bool{true, false, true, false}; !equalBools(r.marks, want) {
		t.Errorf("marks %v, want %v", r.marks, want)
	}
	for name, want := range map[string]float64{
		"kvroute_events_epoch": 2, "kvroute_events_last_event_age_seconds": 11, "kvroute_events_stale": 0,
	} {
		if got := gauge(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// With max_staleness 0 nothing is ever stale, and a feed that disappears while stale is
// marked caught up.
func TestStalenessOffAndRemoved(t *testing.T) {
	r, s := newStaleRig(t, 0, nil)
	r.route(3)
	r.advance(time.Hour)
	s.Check()
	if r.stale(s) || len(r.marks) != 0 {
		t.Fatalf("max_staleness 0: stale %v, marks %v", r.stale(s), r.marks)
	}
	r, s = newStaleRig(t, time.Second, nil)
	r.route(1)
	s.Check()
	r.advance(2 * time.Second)
	s.Check()
	if !r.stale(s) {
		t.Fatal("silent serving worker not stale")
	}
	r.mu.Lock()
	r.feed.Key.ID = "gone-then-w" // the feed list no longer has "w"
	r.mu.Unlock()
	if _, err := ingest.NewStaleness(ingest.StalenessOptions{Feeds: r.feeds}); err == nil {
		t.Error("NewStaleness without Routed: no error")
	}
	r.mu.Lock()
	r.feed = ingest.WorkerState{Key: proto.WorkerKey{ID: "w", DPRank: 1}}
	r.mu.Unlock()
	s.Check() // w#0 gone: marked caught up; w#1 new and idle
	if want := []bool{true, false}; !equalBools(r.marks, want) {
		t.Errorf("marks %v, want %v", r.marks, want)
	}
}

func equalBools(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// gauge returns the value of gauge name{worker="w"} gathered from reg, -1 when absent.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "worker" && lp.GetValue() == "w" {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}
