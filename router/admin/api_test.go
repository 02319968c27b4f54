package admin_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kvroute/kvroute/cmd/stack"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/router"
	"github.com/kvroute/kvroute/router/admin"
	"github.com/kvroute/kvroute/upstream"
)

// workerView is admin.WorkerView with the traffic part as a value (zero when absent).
type workerView struct {
	admin.WorkerView
	Traffic admin.WorkerTraffic `json:"traffic"`
}

type statsView struct {
	Traffic  admin.TrafficStats  `json:"traffic"`
	Tokenize admin.TokenizeView  `json:"tokenize"`
	Index    *admin.IndexSummary `json:"index"`
	Queue    admin.QueueView     `json:"queue"`
}

func window(t *testing.T, s statsView, name string) admin.TrafficWindow {
	t.Helper()
	for _, w := range s.Traffic.Windows {
		if w.Name == name {
			return w
		}
	}
	t.Fatalf("no %s window in %+v", name, s.Traffic.Windows)
	return admin.TrafficWindow{}
}

// The read endpoints on a real Stack with kvsim workers and traffic: every figure the
// issue lists is there and agrees with the traffic sent.
func TestAPIReadsAfterTraffic(t *testing.T) {
	tr := startRouter(t, 3, "s3cret")
	const n = 192 // three hot-prefix samples (one Match in 64) expected
	sent := traffic(t, tr.url, 6, n)
	byWorker := map[string]int{}
	for _, r := range sent {
		byWorker[r.worker]++
	}

	var ws []workerView
	if code := tr.call(t, "GET", "/api/workers", "", &ws); code != 200 || len(ws) != 3 {
		t.Fatalf("GET /api/workers: %d, %d workers", code, len(ws))
	}
	var routed uint64
	for _, w := range ws {
		routed += w.Traffic.Routed
		if w.State != "available" || !w.Healthy || w.Drained || w.Ejected {
			t.Errorf("worker %s: state %q healthy %v drained %v ejected %v", w.ID, w.State, w.Healthy, w.Drained, w.Ejected)
		}
		if int(w.Traffic.Routed) != byWorker[w.ID] {
			t.Errorf("worker %s: routed %d, but %d responses named it", w.ID, w.Traffic.Routed, byWorker[w.ID])
		}
		if len(w.Feeds) != 1 || w.Feeds[0].Seq == nil || !w.Feeds[0].Connected {
			t.Errorf("worker %s: feeds %+v, want one connected feed with a sequence", w.ID, w.Feeds)
		}
		if byWorker[w.ID] > 0 {
			if w.Index == nil || w.Index.Blocks["gpu"] == 0 {
				t.Errorf("worker %s served %d requests but has no indexed gpu blocks: %+v", w.ID, byWorker[w.ID], w.Index)
			}
			if w.Traffic.HitRate == nil || w.Traffic.PromptTokens == 0 {
				t.Errorf("worker %s: no hit rate or prompt tokens: %+v", w.ID, w.Traffic)
			}
		}
		if w.InFlight != 0 || w.PendingPrefillTokens != 0 {
			t.Errorf("worker %s: in-flight %d pending prefill %d after all requests ended", w.ID, w.InFlight, w.PendingPrefillTokens)
		}
	}
	poll.CheckFor(t, 5*time.Second, "scraped engine metrics", func() bool {
		tr.call(t, "GET", "/api/workers", "", &ws)
		return !slices.ContainsFunc(ws, func(w workerView) bool { return w.Engine == nil || w.Engine.BlockSize == 0 })
	})
	if routed != n {
		t.Errorf("workers routed %d requests in all, want %d", routed, n)
	}

	var one workerView
	if code := tr.call(t, "GET", "/api/workers/"+ws[0].ID, "", &one); code != 200 || one.ID != ws[0].ID || len(one.Traffic.Series) != router.SeriesSeconds {
		t.Errorf("GET /api/workers/%s: %d, id %q, %d series points", ws[0].ID, code, one.ID, len(one.Traffic.Series))
	}
	if code := tr.call(t, "GET", "/api/workers/nope", "", nil); code != 404 {
		t.Errorf("unknown worker: %d, want 404", code)
	}

	var st statsView
	if code := tr.call(t, "GET", "/api/stats", "", &st); code != 200 {
		t.Fatalf("GET /api/stats: %d", code)
	}
	for _, name := range []string{"1m", "5m", "15m"} {
		w := window(t, st, name)
		g := w.Global
		if g.Routed != n || g.Finished != n || g.Errors != 0 || g.Decisions < n || g.TTFT.Count != n {
			t.Errorf("%s: routed %d finished %d errors %d decisions %d ttft count %d; want %d each, 0 errors", name, g.Routed, g.Finished, g.Errors, g.Decisions, g.TTFT.Count, n)
		}
		// Every prompt starts with the same 300 words: most of each prompt is a hit once
		// the first request of each worker has stored it.
		if g.HitRate == nil || *g.HitRate < 0.5 {
			t.Errorf("%s: hit rate %v, want >= 0.5 with a shared preamble", name, g.HitRate)
		}
		if g.TTFT.P50 == nil || g.TTFT.P99 == nil || *g.TTFT.P50 <= 0 || *g.TTFT.P99 < *g.TTFT.P50 {
			t.Errorf("%s: TTFT %+v", name, g.TTFT)
		}
		if m, ok := w.Models[testModel]; !ok || m.Routed != n || m.PromptTokens != g.PromptTokens {
			t.Errorf("%s: model %s figures %+v, want the global ones", name, testModel, m)
		}
	}
	var pts, ptsRouted uint64
	for _, p := range st.Traffic.Series {
		pts += uint64(p.Finished)
		ptsRouted += uint64(p.Routed)
	}
	if len(st.Traffic.Series) != router.SeriesSeconds || pts != n || ptsRouted != n {
		t.Errorf("series: %d points adding up to %d finished, %d routed; want %d, %d, %d", len(st.Traffic.Series), pts, ptsRouted, router.SeriesSeconds, n, n)
	}
	// The default mode, auto, without tokenize.dir is the engine mode for every model.
	if st.Tokenize.Mode != "auto" || st.Tokenize.Calls == 0 {
		t.Errorf("tokenize: %+v, want auto (engine) mode with calls", st.Tokenize)
	}
	if st.Index == nil || st.Index.Blocks == 0 {
		t.Errorf("index summary: %+v", st.Index)
	}
	// The fleet never filled: the queue is there, empty, nothing rejected.
	if q := st.Queue; len(q.Depth) != 3 || q.Depth["normal"] != 0 || len(q.Rejected) != 3 || q.Rejected["timeout"] != 0 || q.Left != 0 {
		t.Errorf("queue: %+v, want three empty classes and no rejections", q)
	}

	var ds []admin.Decision
	if code := tr.call(t, "GET", "/api/decisions?n=5", "", &ds); code != 200 || len(ds) != 5 {
		t.Fatalf("GET /api/decisions?n=5: %d, %d decisions", code, len(ds))
	}
	reported := 0
	for _, d := range ds {
		if len(d.Candidates) == 0 || d.Explanation == "" || !strings.Contains(d.Explanation, d.Chosen) || d.Blocks == 0 {
			t.Errorf("decision %+v: want candidates, blocks and an explanation naming the chosen worker", d)
		}
		if d.Reported != nil {
			reported++
			if d.Reported.PromptTokens == 0 || d.Reported.CachedTokens > d.Reported.PromptTokens {
				t.Errorf("decision %s: reported %+v", d.RequestID, *d.Reported)
			}
		}
	}
	if reported == 0 { // the kvsim workers report usage.prompt_tokens_details.cached_tokens
		t.Errorf("no decision shows the worker's reported usage: %+v", ds)
	}
	for _, bad := range []string{"0", "257", "x"} {
		if code := tr.call(t, "GET", "/api/decisions?n="+bad, "", nil); code != 400 {
			t.Errorf("n=%s: %d, want 400", bad, code)
		}
	}

	// Hot prefixes come from a random sample of the index's Match calls (one in 64), so
	// 192 requests leave none about once in 20 runs: send 64 more until one is sampled.
	var ps []admin.PrefixView
	for more := 0; ; more++ {
		if code := tr.call(t, "GET", "/api/prefixes", "", &ps); code != 200 || (len(ps) == 0 && more == 30) {
			t.Fatalf("GET /api/prefixes: %d, %d prefixes after %d more requests", code, len(ps), 64*more)
		}
		if len(ps) > 0 {
			break
		}
		for _, r := range traffic(t, tr.url, 6, 64) {
			byWorker[r.worker]++
		}
	}
	// A sampled Match is counted (times 64) in the index summary.
	if code := tr.call(t, "GET", "/api/stats", "", &st); code != 200 || st.Index == nil || st.Index.Matches == 0 {
		t.Errorf("GET /api/stats: %d, index summary %+v after a hot prefix was sampled", code, st.Index)
	}
	for _, p := range ps {
		if p.Depth == 0 || p.SampledMatches == 0 || p.Requests != p.SampledMatches*64 {
			t.Errorf("prefix %+v", p)
		}
		for _, w := range p.Workers {
			if byWorker[w] == 0 {
				t.Errorf("prefix %s is said to be held by %s, which served no request", p.Hash, w)
			}
		}
	}

	var ov admin.Overview
	if code := tr.call(t, "GET", "/api/overview", "", &ov); code != 200 || len(ov.Workers) != 3 || !ov.Writable || ov.Info.ConfigFile != tr.cfgPath {
		t.Errorf("GET /api/overview: %d, %d workers, writable %v, config %q", code, len(ov.Workers), ov.Writable, ov.Info.ConfigFile)
	}
	if code := tr.call(t, "GET", "/api/nope", "", nil); code != 404 {
		t.Errorf("unknown endpoint: %d, want 404", code)
	}
}

// Drain keeps new requests off a worker, undrain brings it back; clear drops its index
// entries; write actions need the token.
func TestAPIActions(t *testing.T) {
	tr := startRouter(t, 3, "s3cret")
	traffic(t, tr.url, 6, 30)
	victim := tr.fleet.Workers()[1].ID()
	path := "/api/workers/" + victim + "/drain"
	if code := tr.call(t, "POST", path, "", nil); code != 401 {
		t.Errorf("drain without token: %d, want 401", code)
	}
	if code := tr.call(t, "POST", path, "wrong", nil); code != 401 {
		t.Errorf("drain with a wrong token: %d, want 401", code)
	}
	var res admin.ActionResult
	if code := tr.call(t, "POST", path, tr.token, &res); code != 200 || !res.Changed || res.State.State != "drained" {
		t.Fatalf("drain: %d %+v", code, res)
	}
	if code := tr.call(t, "POST", path, tr.token, &res); code != 200 || res.Changed {
		t.Errorf("second drain: %d changed %v, want a no-op", code, res.Changed)
	}
	for _, r := range traffic(t, tr.url, 6, 60) {
		if r.worker == victim {
			t.Fatalf("a request started after the drain went to the drained worker %s", victim)
		}
	}
	var w workerView
	tr.call(t, "GET", "/api/workers/"+victim, "", &w)
	if !w.Drained || !w.Available || w.State != "drained" || w.DrainedSince.IsZero() {
		t.Errorf("drained worker view: %+v", w.WorkerView)
	}
	if code := tr.call(t, "POST", "/api/workers/"+victim+"/undrain", tr.token, &res); code != 200 || !res.Changed || res.State.State != "available" {
		t.Errorf("undrain: %d %+v", code, res)
	}
	if got := tr.stack.Pool.Candidates(nil, testModel); len(got) != 3 {
		t.Errorf("%d candidates after undrain, want 3", len(got))
	}

	holder := ""
	tr.call(t, "GET", "/api/workers", "", &[]workerView{})
	var ws []workerView
	tr.call(t, "GET", "/api/workers", "", &ws)
	for _, w := range ws {
		if w.Index != nil && w.Index.Blocks["gpu"] > 0 {
			holder = w.ID
		}
	}
	if holder == "" {
		t.Fatal("no worker has indexed blocks")
	}
	if code := tr.call(t, "POST", "/api/workers/"+holder+"/clear", tr.token, &res); code != 200 || res.Cleared != 1 || res.State.Index.Blocks["gpu"] != 0 {
		t.Errorf("clear %s: %d %+v", holder, code, res)
	}
	if code := tr.call(t, "POST", "/api/workers/"+holder+"/explode", tr.token, nil); code != 404 {
		t.Errorf("unknown action: %d, want 404", code)
	}
	if code := tr.call(t, "POST", "/api/workers/nope/drain", tr.token, nil); code != 404 {
		t.Errorf("unknown worker: %d, want 404", code)
	}
}

// Reload applies the policy weights at once and lists what needs a restart; a bad file
// changes nothing.
func TestAPIReload(t *testing.T) {
	tr := startRouter(t, 2, "s3cret")
	var rep admin.ReloadReport
	if code := tr.call(t, "POST", "/api/reload", tr.token, &rep); code != 200 || !rep.Unchanged {
		t.Errorf("reload of the same file: %d %+v, want unchanged", code, rep)
	}
	edited := strings.Replace(tr.cfgText, "cache_aware: {pending_weight: 1, temperature: 4}", "cache_aware: {pending_weight: 0.5, overlap_weight: 2, temperature: 0.5, max_inflight: 9}", 1) +
		"max_attempts: 2\ntokenize: {models: {m: approx}}\n"
	if edited == tr.cfgText+"max_attempts: 2\ntokenize: {models: {m: approx}}\n" {
		t.Fatal("startRouter's config has no cache_aware line to edit")
	}
	if err := os.WriteFile(tr.cfgPath, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	if code := tr.call(t, "POST", "/api/reload", tr.token, &rep); code != 200 {
		t.Fatalf("reload: %d", code)
	}
	def := configs.Default().CacheAware
	wantApplied := []string{fmt.Sprintf("cache_aware.overlap_weight: %v -> 2", def.OverlapWeight), "cache_aware.pending_weight: 1 -> 0.5",
		"cache_aware.temperature: 4 -> 0.5"}
	if !slices.Equal(rep.Applied, wantApplied) || len(rep.RestartRequired) != 3 || !strings.HasPrefix(rep.RestartRequired[0], "cache_aware (limits") ||
		rep.RestartRequired[1] != "tokenize" || rep.RestartRequired[2] != "max_attempts" || rep.File != tr.cfgPath {
		t.Errorf("reload report %+v, want applied %q and restart for cache_aware limits, tokenize and max_attempts", rep, wantApplied)
	}
	// The new selector routes: requests still succeed.
	traffic(t, tr.url, 2, 6)
	if code := tr.call(t, "POST", "/api/reload", tr.token, &rep); code != 200 || len(rep.Applied) != 0 || len(rep.RestartRequired) != 3 {
		t.Errorf("second reload: %d %+v, want nothing more applied", code, rep)
	}
	if err := os.WriteFile(tr.cfgPath, []byte(edited+"policy: fastest\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var e struct{ Error string }
	if code := tr.call(t, "POST", "/api/reload", tr.token, &e); code != 422 || !strings.Contains(e.Error, `policy: "fastest"`) || !strings.Contains(e.Error, "nothing applied") {
		t.Errorf("reload of a bad file: %d %q", code, e.Error)
	}
}

// Reads need the token beyond loopback (header or the page's cookie); writes need the
// bearer header always, and are refused when no token is configured.
func TestAuth(t *testing.T) {
	cfg := configs.Default()
	cfg.Workers = []configs.Worker{{ID: "a", URL: "http://127.0.0.1:1", Models: []string{"m"}, MaxConns: 1}}
	pool, err := upstream.NewPool(&cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := admin.Backend{Pool: pool}
	if _, err := admin.New(admin.Options{Backend: b, RequireToken: true}); !errors.Is(err, admin.ErrNoToken) {
		t.Errorf("RequireToken without a token: %v, want ErrNoToken", err)
	}
	do := func(h http.Handler, method, target string, hdr map[string]string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, target, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	closed, err := admin.New(admin.Options{Backend: b, Token: "tok", RequireToken: true})
	if err != nil {
		t.Fatal(err)
	}
	bearer := map[string]string{"Authorization": "Bearer tok"}
	for _, c := range []struct {
		method, target string
		hdr            map[string]string
		want           int
	}{
		{"GET", "/api/workers", nil, 401},
		{"GET", "/", nil, 401},
		{"GET", "/assets/app.js", nil, 401},
		{"GET", "/api/workers", map[string]string{"Authorization": "Bearer nope"}, 401},
		{"GET", "/api/workers", bearer, 200},
		{"GET", "/", map[string]string{"Cookie": "kvroute_admin=tok"}, 200},
		{"GET", "/assets/app.js", map[string]string{"Cookie": "kvroute_admin=tok"}, 200},
		{"GET", "/?token=nope", nil, 401},
		{"POST", "/api/workers/a/drain", map[string]string{"Cookie": "kvroute_admin=tok"}, 401},
		{"POST", "/api/workers/a/drain", bearer, 200},
	} {
		if rec := do(closed, c.method, c.target, c.hdr); rec.Code != c.want {
			t.Errorf("%s %s %v: %d %s, want %d", c.method, c.target, c.hdr, rec.Code, rec.Body, c.want)
		}
	}
	rec := do(closed, "GET", "/?token=tok", nil)
	if rec.Code != 303 || rec.Header().Get("Location") != "./" || !strings.Contains(rec.Header().Get("Set-Cookie"), "kvroute_admin=tok") ||
		!strings.Contains(rec.Header().Get("Set-Cookie"), "HttpOnly") {
		t.Errorf("GET /?token=: %d %v, want a redirect setting an HttpOnly cookie", rec.Code, rec.Header())
	}

	open, err := admin.New(admin.Options{Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	if rec := do(open, "GET", "/api/workers", nil); rec.Code != 200 {
		t.Errorf("loopback read without token: %d", rec.Code)
	}
	if rec := do(open, "GET", "/", nil); rec.Code != 200 || !strings.Contains(rec.Body.String(), "assets/app.js") {
		t.Errorf("page: %d", rec.Code)
	}
	if rec := do(open, "POST", "/api/workers/a/drain", bearer); rec.Code != 403 || !strings.Contains(rec.Body.String(), "KVROUTE_ADMIN_TOKEN") {
		t.Errorf("write without a configured token: %d %s, want 403 naming KVROUTE_ADMIN_TOKEN", rec.Code, rec.Body)
	}
	if pool.Worker("a").Drained() != true {
		t.Error("the authorized drain above did not drain the worker")
	}
}

// The admin API mounted under a path prefix of the main listener; and an admin listener
// beyond loopback without a token stops the router from starting.
func TestPathPrefixAndNonLoopback(t *testing.T) {
	fc := configs.Default()
	fc.Listen = "127.0.0.1:0"
	fc.Admin.Listen, fc.Admin.PathPrefix = "", "/admin"
	fc.Workers = []configs.Worker{{ID: "a", URL: "http://127.0.0.1:1", Models: []string{"m"}, MaxConns: 1}}
	fc.Health.Timeout = 200 * time.Millisecond
	st, err := stack.NewStack(&fc, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := newListener(t)
	if err != nil {
		t.Fatal(err)
	}
	runStack(t, st, ln)
	base := "http://" + ln.Addr().String()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.Get(base + "/admin")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 308 || !strings.HasSuffix(resp.Header.Get("Location"), ln.Addr().String()+"/admin/") {
		t.Errorf("GET /admin: %d %q, want 308 to /admin/", resp.StatusCode, resp.Header.Get("Location"))
	}
	for _, p := range []string{"/admin/", "/admin/api/overview", "/admin/assets/app.css"} {
		resp, err := http.Get(base + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET %s: %d", p, resp.StatusCode)
		}
	}
	if resp, err := http.Get(base + "/administrator"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Errorf("GET /administrator: %d, want the router's 404", resp.StatusCode)
		}
	}

	t.Setenv(configs.AdminTokenEnv, "")
	nc := fc
	nc.Admin.Listen, nc.Admin.PathPrefix = "0.0.0.0:0", ""
	st2, err := stack.NewStack(&nc, quiet)
	if err != nil {
		t.Fatal(err)
	}
	ln2, err := newListener(t)
	if err != nil {
		t.Fatal(err)
	}
	if err := st2.Run(t.Context(), ln2, nil); err == nil || !strings.Contains(err.Error(), "no token") {
		t.Errorf("Run with a non-loopback admin and no token: %v, want the no-token error", err)
	}
}
