package admin_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/kvroute/kvroute/bench/sim"
)

// chromiumPath is Debian's Chromium, installed by scripts/deps.d/60-chromium.sh.
const chromiumPath = "/usr/bin/chromium"

// artifactsDir is where the browser test writes its screenshot: $KVROUTE_ARTIFACTS, or
// a kvroute-artifacts directory under the system's temporary directory (kept after the
// test, unlike t.TempDir, so the screenshot can be looked at).
func artifactsDir(t *testing.T) string {
	dir := os.Getenv("KVROUTE_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "kvroute-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// background sends chat traffic from users concurrent users until stop is called, and
// keeps every outcome.
type background struct {
	mu     sync.Mutex
	done   []served
	stop   context.CancelFunc
	wg     sync.WaitGroup
	client *http.Client
}

// end stops the traffic, waits for the requests in flight and closes the client's idle
// keep-alive connections, so the router's shutdown does not wait for them.
func (bg *background) end() {
	bg.stop()
	bg.wg.Wait()
	bg.client.CloseIdleConnections()
}

func startTraffic(url string, users int) *background {
	ctx, cancel := context.WithCancel(context.Background())
	client := &http.Client{Timeout: 30 * time.Second}
	bg := &background{stop: cancel, client: client}
	for u := range users {
		bg.wg.Add(1)
		go func() {
			defer bg.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(u), 9))
			for i := 0; ctx.Err() == nil; i++ {
				r := chat(client, url, u, rng, i%2 == 0)
				if ctx.Err() != nil && r.err != nil {
					return // cut by the end of the test
				}
				bg.mu.Lock()
				bg.done = append(bg.done, r)
				bg.mu.Unlock()
				time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond) // a little think time
			}
		}()
	}
	return bg
}

func (bg *background) snapshot() []served {
	bg.mu.Lock()
	defer bg.mu.Unlock()
	return append([]served(nil), bg.done...)
}

// workerRow is one row of the dashboard's worker table, as text.
type workerRow struct {
	ID            string `json:"id"`
	State         string `json:"state"`
	Source        string `json:"source"`
	InFlight      string `json:"in_flight"`
	KVUsage       string `json:"kv_usage"`
	IndexedBlocks string `json:"indexed_blocks"`
	EventSeq      string `json:"event_seq"`
	Routed        string `json:"routed"`
	HitRate       string `json:"hit_rate"`
	ReportedHit   string `json:"reported_hit_rate"`
	Lag           string `json:"lag"`
}

const readWorkers = `[...document.querySelectorAll('#workers tbody tr')].map(tr =>
	Object.fromEntries([...tr.querySelectorAll('td[data-field]')].map(td => [td.dataset.field, td.textContent.trim()])))`

// inkJS counts the pixels of a canvas drawn in the charts' blue (#2b6cb0), within a
// tolerance for anti-aliasing.
const inkJS = `((id) => { const c = document.getElementById(id); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
	let n = 0; for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i]-43) < 40 && Math.abs(d[i+1]-108) < 40 && Math.abs(d[i+2]-176) < 40) n++; return n; })`

type heatRow struct {
	Prefix string   `json:"prefix"`
	Held   []string `json:"held"`
}

const readHeat = `[...document.querySelectorAll('#heatmap tbody tr[data-prefix]')].map(tr => ({
	prefix: tr.dataset.prefix, held: [...tr.querySelectorAll('td[data-held="1"]')].map(td => td.dataset.worker)}))`

func num(s string) int {
	n, err := strconv.Atoi(strings.ReplaceAll(s, ",", ""))
	if err != nil {
		return -1
	}
	return n
}

// The dashboard in headless Chromium against a running router, a kvsim fleet and live
// traffic: every worker shows live non-zero figures, the charts draw, the heat map shows
// the shared prefix on workers that hold it, the drill-down opens, and the drain button
// takes a worker out of routing, as the API and the routed requests confirm.
func TestDashboardInChromium(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("Chromium is required (run scripts/deps.d/60-chromium.sh): %v", err)
	}
	tr := startRouter(t, 3, "s3cret")
	bg := startTraffic(tr.url, 6)
	defer bg.end()

	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true),
		chromedp.WindowSize(1440, 1000))...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	// The first Run starts the browser; it must not carry a timeout (chromedp's rule).
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	var exMu sync.Mutex
	var exceptions []string
	console := chromedp.Console(bctx)
	go func() {
		for m, err := range console {
			if err != nil {
				return
			}
			if m.IsException() || m.Type == chromedp.ConsoleError {
				exMu.Lock()
				exceptions = append(exceptions, m.String())
				exMu.Unlock()
			}
		}
	}()
	deadline := time.Now().Add(50 * time.Second)
	eval := func(js string, out any) {
		t.Helper()
		ctx, cancel := context.WithTimeout(bctx, 10*time.Second)
		defer cancel()
		raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](js))
		if err != nil {
			t.Fatalf("evaluate %.80q: %v", js, err)
		}
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("evaluate %.80q: %v", js, err)
		}
	}
	// until polls the page every 100ms until cond holds, up to the test's deadline.
	until := func(what string, cond func() (bool, string)) {
		t.Helper()
		last := ""
		for {
			ok, state := cond()
			if ok {
				return
			}
			last = state
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; last seen: %s", what, last)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if err := chromedp.Do(bctx, chromedp.Navigate(tr.admin+"/")); err != nil {
		t.Fatal(err)
	}

	// Every worker with live, non-zero figures: requests routed, indexed blocks, an event
	// sequence number and a KV usage; and the routed counts keep growing (live polling).
	ids := []string{}
	for _, w := range tr.fleet.Workers() {
		ids = append(ids, w.ID())
	}
	var first []workerRow
	until("every worker with non-zero figures", func() (bool, string) {
		eval(readWorkers, &first)
		if len(first) != len(ids) {
			return false, fmt.Sprint(first)
		}
		for i, r := range first {
			gpu := num(strings.TrimSpace(strings.Split(r.IndexedBlocks, "/")[0]))
			if r.ID != ids[i] || r.State != "available" || r.Source != "static" || num(r.Routed) <= 0 || gpu <= 0 || num(r.EventSeq) <= 0 || !strings.HasSuffix(r.KVUsage, "%") || !strings.HasSuffix(r.HitRate, "%") || !strings.HasSuffix(r.ReportedHit, "%") {
				return false, fmt.Sprintf("%+v", first)
			}
		}
		return true, ""
	})
	until("routed counts growing on the page", func() (bool, string) {
		var now []workerRow
		eval(readWorkers, &now)
		total := func(rs []workerRow) (n int) {
			for _, r := range rs {
				n += num(r.Routed)
			}
			return n
		}
		return total(now) > total(first), fmt.Sprintf("%+v", now)
	})

	// The queue's figures: nothing waits or was refused while the fleet has room.
	until("the queue KPIs", func() (bool, string) {
		var kpis map[string]string
		eval(`Object.fromEntries([...document.querySelectorAll('#kpis .kpi')].map((k) => [k.querySelector('.l').textContent, k.querySelector('.v').textContent]))`, &kpis)
		return kpis["queued"] == "0" && kpis["queue rejected"] == "0", fmt.Sprint(kpis)
	})

	// Both charts have drawn lines.
	until("charts drawn", func() (bool, string) {
		var drawn []string
		var ink []int
		eval(`[document.getElementById('hit-chart').dataset.drawn, document.getElementById('ttft-chart').dataset.drawn]`, &drawn)
		eval(`[`+inkJS+`('hit-chart'), `+inkJS+`('ttft-chart')]`, &ink)
		return len(drawn) == 2 && num(drawn[0]) > 0 && num(drawn[1]) > 0 && ink[0] > 50 && ink[1] > 50, fmt.Sprint(drawn, ink)
	})

	// The heat map shows a shared prefix on the workers holding it: the API's holders,
	// each of which served requests (every request starts with the shared preamble).
	until("a shared prefix in the heat map", func() (bool, string) {
		var rows []heatRow
		eval(readHeat, &rows)
		servedBy := map[string]bool{}
		for _, r := range bg.snapshot() {
			servedBy[r.worker] = true
		}
		var api []struct {
			Hash    string   `json:"hash"`
			Depth   int      `json:"depth"`
			Workers []string `json:"workers"`
		}
		tr.call(t, "GET", "/api/prefixes", "", &api)
		for _, row := range rows {
			for _, p := range api {
				if p.Hash != row.Prefix || len(row.Held) == 0 || p.Depth < 10 {
					continue
				}
				ok := strings.Join(slices.Sorted(slices.Values(row.Held)), ",") == strings.Join(slices.Sorted(slices.Values(p.Workers)), ",")
				for _, w := range row.Held {
					ok = ok && servedBy[w]
				}
				if ok {
					return true, ""
				}
			}
		}
		return false, fmt.Sprintf("page %+v api %+v", rows, api)
	})

	// The drill-down opens on a row click and draws the worker's chart.
	eval(`document.querySelector('#workers tr[data-worker="`+ids[0]+`"] td[data-field="id"]').click(), true`, new(bool))
	until("drill-down", func() (bool, string) {
		var d struct {
			Hidden bool   `json:"hidden"`
			ID     string `json:"id"`
			Facts  int    `json:"facts"`
			Drawn  string `json:"drawn"`
		}
		eval(`({hidden: document.getElementById('drill').hidden, id: document.getElementById('drill-id').textContent,
			facts: document.querySelectorAll('#drill-facts dt').length, drawn: document.getElementById('drill-chart').dataset.drawn || '0'})`, &d)
		return !d.Hidden && d.ID == ids[0] && d.Facts >= 10 && num(d.Drawn) > 0, fmt.Sprintf("%+v", d)
	})

	// A stale event feed: the third worker's events held back while it keeps serving:
	// its lag cell shows the stale badge (events.max_staleness 2s in startRouter's
	// config), and loses it once the held batches are released.
	laggard := tr.fleet.Workers()[2]
	if err := laggard.SetFaults(sim.Faults{EventDelayMS: 600_000}); err != nil {
		t.Fatal(err)
	}
	badge := `(() => { const b = document.querySelector('#workers tr[data-worker="` + ids[2] + `"] td[data-field="lag"] .st-stale'); return b ? b.textContent : ''; })()`
	until("the stale badge on the held-back worker", func() (bool, string) {
		var b string
		var rows []workerRow
		eval(badge, &b)
		eval(readWorkers, &rows)
		return b == "stale", fmt.Sprintf("%q %+v", b, rows)
	})
	var sv workerView
	if code := tr.call(t, "GET", "/api/workers/"+ids[2], "", &sv); code != 200 || !sv.EventsStale {
		t.Fatalf("API while the page shows stale: %d events_stale %v", code, sv.EventsStale)
	}
	if err := laggard.SetFaults(sim.Faults{}); err != nil {
		t.Fatal(err)
	}
	until("the stale badge gone once the feed caught up", func() (bool, string) {
		var b string
		eval(badge, &b)
		return b == "", b
	})

	// Drain from the page: the token typed in, the worker's drain button clicked.
	victim := ids[1]
	if err := chromedp.Do(bctx, chromedp.SendKeys(chromedp.CSS("#token"), tr.token)); err != nil {
		t.Fatal(err)
	}
	eval(`document.querySelector('#workers tr[data-worker="`+victim+`"] button[data-action="drain"]').click(), true`, new(bool))
	until("the page shows the worker drained", func() (bool, string) {
		var rows []workerRow
		var msg string
		eval(readWorkers, &rows)
		eval(`document.getElementById('action-msg').textContent`, &msg)
		return rows[1].State == "drained" && strings.Contains(msg, "drain "+victim+": done"), fmt.Sprintf("%+v %q", rows[1], msg)
	})
	drainedAt := time.Now()
	var w workerView
	if code := tr.call(t, "GET", "/api/workers/"+victim, "", &w); code != 200 || !w.Drained || w.State != "drained" {
		t.Fatalf("API after the page's drain: %d drained %v state %q", code, w.Drained, w.State)
	}
	// Routing: of the requests started after the drain, none reaches the victim.
	until("30 requests after the drain", func() (bool, string) {
		n := 0
		for _, r := range bg.snapshot() {
			if r.started.After(drainedAt) {
				n++
			}
		}
		return n >= 30, strconv.Itoa(n)
	})
	until("the drained worker's in-flight requests finish", func() (bool, string) {
		var rows []workerRow
		eval(readWorkers, &rows)
		return rows[1].InFlight == "0", rows[1].InFlight
	})

	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(artifactsDir(t), "dashboard.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("dashboard screenshot: %s (%d bytes)", shot, len(png))

	bg.end()
	after, toVictim := 0, 0
	for _, r := range bg.snapshot() {
		if r.err != nil {
			t.Errorf("request failed: %v", r.err)
		}
		if r.started.After(drainedAt) {
			after++
			if r.worker == victim {
				toVictim++
			}
		}
	}
	if toVictim > 0 {
		t.Errorf("%d of %d requests started after the drain went to the drained worker %s", toVictim, after, victim)
	}
	exMu.Lock()
	defer exMu.Unlock()
	for _, e := range exceptions {
		t.Errorf("page console: %s", e)
	}
}
