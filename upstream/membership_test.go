package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/upstream/discovery"
)

// engine is a real HTTP server answering /health and /v1/models with models (a JSON
// data list), which the test may change.
type engine struct {
	*httptest.Server
	models atomic.Pointer[string]
}

func newEngine(t *testing.T, models string) *engine {
	t.Helper()
	e := &engine{}
	e.models.Store(&models)
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/health":
		case "/v1/models":
			fmt.Fprintf(w, `{"object":"list","data":[%s]}`, *e.models.Load())
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(e.Close)
	return e
}

func testConfig() *configs.Config {
	c := configs.Default()
	c.Health.Interval = 20 * time.Millisecond
	c.Health.ModelsInterval = 20 * time.Millisecond
	return &c
}

// recorder keeps the membership changes the hook saw.
type recorder struct {
	mu  sync.Mutex
	got []string
}

func (r *recorder) hook(c Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := c.Kind.String() + " " + c.Worker.ID
	if c.Replaced {
		s += " replaced"
	}
	r.got = append(r.got, s)
}

func (r *recorder) has(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.got, s)
}

func runPool(t *testing.T, p *Pool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// A worker added at run time is checked at once and becomes a candidate; removing it
// takes it out of the candidates at once and tells the hook Leaving, then Left once its
// requests in flight have ended.
func TestAddRemove(t *testing.T) {
	e := newEngine(t, `{"id":"m"}`)
	p, err := NewPool(testConfig(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	var rec recorder
	p.SetHook(rec.hook)
	runPool(t, p)

	w, err := p.Add(configs.Worker{URL: e.URL, ID: "a"}, SourceAPI)
	if err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, 5*time.Second, "the added worker to become a candidate", func() bool {
		return len(p.Candidates(nil, "m")) == 1
	})
	if st := w.State(); st.Source != SourceAPI || st.State != "available" || st.BaseModel != "m" {
		t.Fatalf("state %+v", st)
	}
	if _, err := p.Add(configs.Worker{URL: e.URL, ID: "b"}, SourceAPI); !errors.Is(err, ErrDuplicateURL) {
		t.Fatalf("same URL again: %v, want ErrDuplicateURL", err)
	}
	if _, err := p.Add(configs.Worker{URL: "http://127.0.0.1:1", ID: "a"}, SourceAPI); !errors.Is(err, ErrDuplicateID) {
		t.Fatalf("same id again: %v, want ErrDuplicateID", err)
	}
	if _, err := p.Add(configs.Worker{URL: "ftp://x", ID: "c"}, SourceAPI); err == nil {
		t.Fatal("an ftp:// worker was accepted")
	}

	l := w.Begin(10, 1, time.Minute) // a request in flight
	done, err := p.Remove("a", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Candidates(nil, "m")) != 0 || p.Worker("a") != nil || !rec.has("leaving a") {
		t.Fatalf("after Remove: candidates %d, worker %v, changes %v", len(p.Candidates(nil, "m")), p.Worker("a"), rec.got)
	}
	if got := p.Leaving(); len(got) != 1 || got[0] != w || w.State().State != "leaving" {
		t.Fatalf("leaving %v", got)
	}
	select {
	case <-done:
		t.Fatal("the leave finished with a request in flight")
	case <-time.After(100 * time.Millisecond):
	}
	l.End()
	<-done
	if !rec.has("left a") || len(p.Leaving()) != 0 {
		t.Fatalf("after the leave: changes %v, leaving %v", rec.got, p.Leaving())
	}
	if _, err := p.Remove("a", time.Second); !errors.Is(err, ErrUnknownWorker) {
		t.Fatalf("second Remove: %v", err)
	}
}

// The drain of a leaving worker is bounded: a request that never ends does not keep it.
func TestRemoveDrainBounded(t *testing.T) {
	e := newEngine(t, `{"id":"m"}`)
	cfg := testConfig()
	cfg.Workers = []configs.Worker{{URL: e.URL, ID: "a"}}
	p, err := NewPool(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	runPool(t, p)
	w := p.Worker("a")
	w.Begin(1, 1, time.Hour)
	start := time.Now()
	done, err := p.Remove("a", 150*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	<-done
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("left after %s, before the drain bound", d)
	}
}

// Sync applies one source's view: joins, readiness, replacement of a changed worker
// under the same id, leaves; another source's workers are never touched, and its ids
// are refused.
func TestSync(t *testing.T) {
	e1, e2, e3, e4 := newEngine(t, `{"id":"m"}`), newEngine(t, `{"id":"m"}`), newEngine(t, `{"id":"m"}`), newEngine(t, `{"id":"m"}`)
	cfg := testConfig()
	cfg.Workers = []configs.Worker{{URL: e1.URL, ID: "static"}}
	reg := prometheus.NewRegistry()
	p, err := NewPool(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	var rec recorder
	p.SetHook(rec.hook)
	runPool(t, p)
	member := func(id, url string, ready bool) discovery.Member {
		return discovery.Member{Worker: configs.Worker{ID: id, URL: url}, Ready: ready}
	}

	rep := p.Sync("dns", []discovery.Member{member("x", e2.URL, true), member("y", e3.URL, false), member("static", "http://127.0.0.9:1", true)}, time.Second)
	if !slices.Equal(rep.Joined, []string{"x", "y"}) || rep.Rejected["static"] == "" {
		t.Fatalf("first sync: %+v", rep)
	}
	poll.CheckFor(t, 5*time.Second, "x to become a candidate (y is not ready)", func() bool {
		return slices.Equal(ids(p.Candidates(nil, "m")), []string{"static", "x"})
	})
	if got := p.Worker("y").State(); got.Ready || got.State != "not_ready" {
		t.Fatalf("y: %+v", got)
	}

	// A garbage URL for x is refused and x stays as it was.
	rep = p.Sync("dns", []discovery.Member{member("x", "http://[::1", true), member("y", e3.URL, false)}, time.Second)
	if rep.Rejected["x"] == "" || len(rep.Left)+len(rep.Replaced) != 0 || p.Worker("x") == nil {
		t.Fatalf("garbage URL: %+v", rep)
	}
	// y turns ready; x moves to another URL (replaced under its id); static untouched.
	rep = p.Sync("dns", []discovery.Member{member("x", e4.URL, true), member("y", e3.URL, true)}, time.Second)
	if !slices.Equal(rep.Ready, []string{"y"}) || !slices.Equal(rep.Replaced, []string{"x"}) {
		t.Fatalf("second sync: %+v", rep)
	}
	if p.Worker("x") == nil || p.Worker("x").URL != e4.URL || !rec.has("joined x") {
		t.Fatalf("x not replaced: %v", rec.got)
	}
	// Whether the old x is gone before or after the new one joined depends on timing.
	poll.CheckFor(t, 5*time.Second, "the old x to leave", func() bool { return rec.has("left x replaced") || rec.has("left x") })

	// The source's view shrinks to nothing: its workers leave, the static one stays.
	p.Sync("dns", nil, time.Second)
	if got := ids(p.Workers()); !slices.Equal(got, []string{"static"}) {
		t.Fatalf("after an empty view: %v", got)
	}
	poll.CheckFor(t, 5*time.Second, "y to be gone", func() bool { return rec.has("left y") })
	if n := metricValue(t, reg, "kvroute_upstream_membership_rejected_total", "duplicate_id"); n != 1 {
		t.Errorf("rejected duplicate_id = %v, want 1", n)
	}
	if n := metricValue(t, reg, "kvroute_upstream_worker_available", "y"); n != -1 {
		t.Errorf("y's availability series still there after it left (%v)", n)
	}
}

// /v1/models is the truth of a worker's models: an adapter (vLLM lists it with parent)
// never names the worker, and a change of the base model is told to the hook.
func TestModelTruth(t *testing.T) {
	e := newEngine(t, `{"id":"a-adapter","parent":"z-base"},{"id":"z-base","parent":null}`)
	p, err := NewPool(testConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var rec recorder
	p.SetHook(rec.hook)
	runPool(t, p)
	w, err := p.Add(configs.Worker{URL: e.URL, ID: "w"}, SourceAPI)
	if err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, 5*time.Second, "models to be discovered", func() bool { return w.Available() })
	if w.BaseModel() != "z-base" || !w.Serves("a-adapter") {
		t.Fatalf("base %q, models %v", w.BaseModel(), w.Models())
	}
	other := `{"id":"other"}`
	e.models.Store(&other)
	poll.CheckFor(t, 5*time.Second, "the new model to be seen", func() bool { return w.BaseModel() == "other" })
	if n := strings.Count(strings.Join(rec.got, ","), "models_changed w"); n < 2 {
		t.Fatalf("models changes told: %v", rec.got)
	}
}

// A model /v1/models lists with a parent is an adapter of the worker's base model; a
// base model, an unknown model and a model configured by hand are not.
func TestResolveModel(t *testing.T) {
	e := newEngine(t, `{"id":"sql","parent":"base"},{"id":"base","parent":null},{"id":"chat","parent":"base"}`)
	cfg := testConfig()
	cfg.Workers = []configs.Worker{{ID: "fixed", URL: "http://127.0.0.1:1", Models: []string{"m", "hand-adapter"}}}
	p, err := NewPool(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	runPool(t, p)
	w, err := p.Add(configs.Worker{URL: e.URL, ID: "w"}, SourceAPI)
	if err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, 5*time.Second, "models to be discovered", func() bool { return w.Serves("sql") })
	for _, tc := range []struct{ model, base, lora string }{
		{"sql", "base", "sql"},
		{"chat", "base", "chat"},
		{"base", "base", ""},
		{"nobody", "nobody", ""},
		{"hand-adapter", "hand-adapter", ""},
		{"m", "m", ""},
	} {
		if b, l := p.ResolveModel(tc.model); b != tc.base || l != tc.lora {
			t.Errorf("ResolveModel(%q) = %q, %q; want %q, %q", tc.model, b, l, tc.base, tc.lora)
		}
	}
}

func TestParseModelList(t *testing.T) {
	for _, tc := range []struct {
		body        string
		ids, bases  []string
		wantDecodeE bool
	}{
		{`{"data":[{"id":"b"},{"id":"a"}]}`, []string{"a", "b"}, []string{"a", "b"}, false},
		{`{"data":[{"id":"lora","parent":"base"},{"id":"base","parent":null,"root":"/models/base"}]}`, []string{"base", "lora"}, []string{"base"}, false},
		{`{"data":[{"id":"x","parent":7}]}`, []string{"x"}, []string{"x"}, false},
		{`{"data":[{"id":"x","parent":"x"}]}`, []string{"x"}, []string{"x"}, false},
		{`{"data":5}`, nil, nil, true},
	} {
		got, err := ParseModelList([]byte(tc.body))
		if (err != nil) != tc.wantDecodeE {
			t.Errorf("%s: err %v", tc.body, err)
			continue
		}
		if err == nil && (!slices.Equal(got.IDs, tc.ids) || !slices.Equal(got.Bases, tc.bases)) {
			t.Errorf("%s: %+v, want ids %v bases %v", tc.body, got, tc.ids, tc.bases)
		}
	}
}

// metricValue returns the value of the series of name with a label value label, or -1.
func metricValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					if m.GetCounter() != nil {
						return m.GetCounter().GetValue()
					}
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

// A worker whose /v1/models fails joins but is not available (nothing to route to it
// by), says why, and becomes available with its models once the endpoint answers.
func TestModelsFailureThenRecovery(t *testing.T) {
	e := newEngine(t, `{"id":"m"}`)
	broken := `]` // not JSON: the body is `{"object":"list","data":[]]}`
	good := *e.models.Load()
	e.models.Store(&broken)
	p, err := NewPool(testConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	runPool(t, p)
	w, err := p.Add(configs.Worker{URL: e.URL, ID: "w"}, SourceAPI)
	if err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, 5*time.Second, "the models failure to be reported", func() bool {
		return strings.Contains(w.State().LastError, "list models")
	})
	if w.Available() || len(p.Candidates(nil, "m")) != 0 || w.State().State != "unavailable" {
		t.Fatalf("a worker without models is available: %+v", w.State())
	}
	e.models.Store(&good)
	poll.CheckFor(t, 5*time.Second, "the worker to become available with its models", func() bool {
		return w.Available() && w.BaseModel() == "m"
	})
}
