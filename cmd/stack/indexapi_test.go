package stack

import (
	"bytes"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/router/admin"
)

// postQuery sends body to POST /api/index/query on the admin listener at addr.
func postQuery(t *testing.T, client *http.Client, addr string, body any) (int, []byte) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := client.Post("http://"+addr+"/api/index/query", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// The index query answers the overlap the router's own decision uses for the same
// request: random token prompts (new ones, some sharing a two-block prefix, and repeats
// of earlier ones) on a three-worker kvsim fleet with ZMQ events. Before each request
// the index is polled until it equals the workers' caches (so no event lands between
// the query and the decision), then the query is asked, then the request is routed, and
// every candidate's overlap in the recorded decision must equal the query's blocks for
// that worker.
func TestIndexQueryAgreesWithRouterDecision(t *testing.T) {
	ss := startSimStack(t, 3, func(fc *sim.FleetConfig, cfg *configs.Config) {
		fc.Worker.BlockSize = itBlockSize
		cfg.Admin.Listen = "127.0.0.1:0"
	})
	addr := ss.stack.AdminAddr()
	if addr == "" {
		t.Fatal("no admin listener")
	}
	client := &http.Client{Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	o := newBlockOracle(ss.fleet, 7)
	rng := rand.New(rand.NewPCG(7, 7))
	var sent [][]uint32
	nonzero := 0
	for i := range 30 {
		var toks []uint32
		if len(sent) > 0 && rng.IntN(2) == 0 {
			toks = sent[rng.IntN(len(sent))]
		} else {
			toks = o.prompt(2 + rng.IntN(6))
			sent = append(sent, toks)
		}
		requireExact(t, o, ss.stack.Index, 10*time.Second, "before the query")
		code, body := postQuery(t, client, addr, map[string]any{"model": "m", "token_ids": toks})
		if code != http.StatusOK {
			t.Fatalf("query %d: %d %s", i, code, body)
		}
		var ans admin.IndexAnswer
		if err := json.Unmarshal(body, &ans); err != nil {
			t.Fatal(err)
		}
		if ans.Blocks != len(toks)/itBlockSize || ans.BlockSize != itBlockSize || !ans.Exact {
			t.Fatalf("query %d: %+v for %d tokens", i, ans, len(toks))
		}
		held := map[string]admin.IndexWorker{}
		for _, w := range ans.Workers {
			held[w.ID] = w
			if w.Confirmed+w.Predicted != w.Blocks || w.Blocks > ans.Blocks {
				t.Fatalf("query %d: worker %+v of %d blocks", i, w, ans.Blocks)
			}
		}
		chosen := complete(t, client, ss.url, toks)
		d := ss.stack.Server.Decisions(1)
		if len(d) != 1 || d[0].Chosen != chosen || d[0].Blocks != ans.Blocks {
			t.Fatalf("request %d: decision %+v, chosen %s", i, d, chosen)
		}
		for _, c := range d[0].Candidates {
			if c.OverlapBlocks != held[c.Worker].Blocks {
				t.Errorf("request %d: the decision saw %s hold %d blocks, the query said %d (%s)", i, c.Worker, c.OverlapBlocks, held[c.Worker].Blocks, body)
			}
			if c.OverlapBlocks > 0 {
				nonzero++
			}
		}
	}
	if nonzero == 0 {
		t.Fatal("no request had any overlap: the test compared only zeros")
	}

	// Bad input through the real listener: OpenAI-shaped 4xx.
	for _, tc := range []struct {
		body any
		code int
	}{
		{map[string]any{"model": "nope", "prompt": "x"}, 404},
		{map[string]any{"model": "m", "token_ids": "x"}, 400},
		{map[string]any{"model": "m", "prompt": "x", "messages": []any{}}, 400},
	} {
		code, body := postQuery(t, client, addr, tc.body)
		var e struct {
			Error struct{ Code string } `json:"error"`
		}
		if code != tc.code || json.Unmarshal(body, &e) != nil || e.Error.Code == "" {
			t.Errorf("%v: %d %s, want %d with an OpenAI-shaped error", tc.body, code, body, tc.code)
		}
	}
}
