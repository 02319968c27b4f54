package stack

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/router/admin"
)

// getWorker returns worker id as GET /api/workers/{id} on the admin listener shows it.
func getWorker(t *testing.T, client *http.Client, addr, id string) admin.WorkerView {
	t.Helper()
	resp, err := client.Get("http://" + addr + "/api/workers/" + id)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v admin.WorkerView
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&v) != nil {
		t.Fatalf("GET /api/workers/%s: %d", id, resp.StatusCode)
	}
	return v
}

// gaugeOf returns the stack's gauge name{worker=id}, -1 when absent.
func gaugeOf(t *testing.T, st *Stack, name, id string) float64 {
	t.Helper()
	mfs, err := st.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "worker" && lp.GetValue() == id {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

// The staleness bound end to end, on real kvsim workers and ZMQ feeds: a worker whose
// feed is held back (kvsim's event delay) while it serves a request turns stale: its
// confirmed entries count as predictions (the query API shows them predicted, the
// router's cost gives them events.stale_weight, here 0) and /api/workers and the metrics
// flag it. When the held batches arrive, stamped by the engine after the request, it
// is restored. A worker that serves nothing is never flagged, however old its last
// event, and neither is the first one once its feed has reported its request.
func TestStaleFeedDowngradedAndRestored(t *testing.T) {
	const bound = 300 * time.Millisecond
	ss := startSimStack(t, 2, func(fc *sim.FleetConfig, cfg *configs.Config) {
		fc.Worker.BlockSize = itBlockSize
		cfg.Admin.Listen = "127.0.0.1:0"
		cfg.Events.MaxStaleness, cfg.Events.StaleWeight = bound, 0
	})
	addr := ss.stack.AdminAddr()
	client := &http.Client{Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	o := newBlockOracle(ss.fleet, 19)
	toks := o.prompt(6)
	hashes := proto.HashBlocks(nil, proto.Seed("m", "", ""), toks, itBlockSize)
	held := func(id string) (blocks, confirmed int) {
		for _, m := range ss.stack.Index.Match(hashes, nil) {
			if m.Worker.ID == id {
				return m.Blocks, m.Confirmed
			}
		}
		return 0, 0
	}
	holder := complete(t, client, ss.url, toks)
	var other string
	workers := map[string]*sim.Worker{}
	for _, w := range ss.fleet.Workers() {
		workers[w.ID()] = w
		if w.ID() != holder {
			other = w.ID()
		}
	}
	if workers[holder] == nil || other == "" {
		t.Fatalf("routed to %q, fleet %v", holder, ss.fleet.Infos())
	}
	poll.CheckFor(t, 10*time.Second, "the holder's events confirm the prompt", func() bool {
		_, c := held(holder)
		return c == len(hashes)
	})
	// Idle: both workers' last events (the other's: its feed's start) grow older than
	// the bound with nothing routed after them; neither is flagged.
	poll.CheckFor(t, 20*time.Second, "last events older than 4x the bound", func() bool {
		h, o := getWorker(t, client, addr, holder), getWorker(t, client, addr, other)
		age := func(v admin.WorkerView) float64 {
			if len(v.Feeds) != 1 || v.Feeds[0].LastEventAgeSeconds == nil {
				return 0
			}
			return *v.Feeds[0].LastEventAgeSeconds
		}
		return age(h) > 4*bound.Seconds() && (len(o.Feeds) == 1 && (o.Feeds[0].LastEventAgeSeconds == nil || age(o) > 4*bound.Seconds()))
	})
	for _, id := range []string{holder, other} {
		if v := getWorker(t, client, addr, id); v.EventsStale || v.Feeds[0].Stale || v.Feeds[0].Epoch < 1 {
			t.Fatalf("idle worker %s: stale %v, feed %+v (want not stale, epoch >= 1 after the start reset)", id, v.EventsStale, v.Feeds[0])
		}
		if g := gaugeOf(t, ss.stack, "kvroute_events_stale", id); g != 0 {
			t.Fatalf("kvroute_events_stale{worker=%q} = %v for an idle worker", id, g)
		}
	}
	if g := gaugeOf(t, ss.stack, "kvroute_events_epoch", holder); g < 1 {
		t.Errorf("kvroute_events_epoch{worker=%q} = %v, want >= 1", holder, g)
	}

	// Hold the holder's feed back and send it the prompt again: it serves, its feed says
	// nothing: stale after the bound.
	if err := workers[holder].SetFaults(sim.Faults{EventDelayMS: 600_000}); err != nil {
		t.Fatal(err)
	}
	longer := append(append([]uint32(nil), toks...), o.tokens(3*itBlockSize)...)
	if got := complete(t, client, ss.url, longer); got != holder {
		t.Fatalf("the prompt's extension went to %s, not its holder %s", got, holder)
	}
	poll.CheckFor(t, 20*time.Second, "the serving worker's silent feed flagged stale", func() bool {
		v := getWorker(t, client, addr, holder)
		return v.EventsStale && len(v.Feeds) == 1 && v.Feeds[0].Stale && !v.Feeds[0].StaleSince.IsZero()
	})
	if b, c := held(holder); b != len(hashes) || c != 0 {
		t.Fatalf("stale holder: %d blocks, %d confirmed; want %d, 0 (counted as predictions)", b, c, len(hashes))
	}
	if g := gaugeOf(t, ss.stack, "kvroute_events_stale", holder); g != 1 {
		t.Errorf("kvroute_events_stale{worker=%q} = %v, want 1", holder, g)
	}
	if g := gaugeOf(t, ss.stack, "kvroute_events_last_event_age_seconds", holder); g <= bound.Seconds() {
		t.Errorf("kvroute_events_last_event_age_seconds{worker=%q} = %v, want > %v", holder, g, bound.Seconds())
	}
	code, body := postQuery(t, client, addr, map[string]any{"model": "m", "token_ids": toks})
	var ans admin.IndexAnswer
	if code != http.StatusOK || json.Unmarshal(body, &ans) != nil {
		t.Fatalf("query: %d %s", code, body)
	}
	for _, w := range ans.Workers {
		if w.ID == holder && (w.Confirmed != 0 || w.Predicted != len(hashes)) {
			t.Errorf("query while stale: %+v, want 0 confirmed, %d predicted", w, len(hashes))
		}
	}
	if v := getWorker(t, client, addr, other); v.EventsStale {
		t.Errorf("the idle worker %s flagged stale with the holder", other)
	}
	// The router weighs a stale worker's blocks events.stale_weight (0 here).
	complete(t, client, ss.url, toks)
	d := ss.stack.Server.Decisions(1)
	if len(d) != 1 {
		t.Fatalf("decisions %+v", d)
	}
	for _, c := range d[0].Candidates {
		if c.Worker == holder && c.OverlapBlocks != 0 {
			t.Errorf("decision while stale: %s overlap %d, want 0 (stale_weight 0)", holder, c.OverlapBlocks)
		}
	}

	// Release the held batches: stamped by the engine after the requests, they cover
	// them: restored, the entries confirmed again.
	if err := workers[holder].SetFaults(sim.Faults{}); err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, 20*time.Second, "the holder restored once its feed caught up", func() bool {
		v := getWorker(t, client, addr, holder)
		b, c := held(holder)
		return !v.EventsStale && !v.Feeds[0].Stale && b == len(hashes) && c == len(hashes)
	})
	if g := gaugeOf(t, ss.stack, "kvroute_events_stale", holder); g != 0 {
		t.Errorf("kvroute_events_stale{worker=%q} = %v after catching up, want 0", holder, g)
	}
	t.Logf("holder %s, other %s", holder, other)
}
