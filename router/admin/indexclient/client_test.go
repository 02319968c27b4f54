package indexclient_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/cmd/stack"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/router/admin/indexclient"
)

// The client against a real standalone indexer (stack.RunIndexer) on loopback in front
// of a two-worker kvsim fleet with ZMQ events: a prompt sent straight to one worker (no
// router anywhere) shows up in the query as confirmed on that worker, under its token
// ids and under its block hashes; snapshot and restore round-trip; errors come back
// typed; the listener serves /health and /metrics and nothing of the router's API.
func TestClientAgainstIndexer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fc := sim.DefaultFleetConfig()
	fc.Workers, fc.Worker.Model, fc.Worker.BlockSize = 2, "m", 16
	fleet, err := sim.StartFleet(ctx, fc)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fleet.Close() }()
	cfg := configs.Default()
	cfg.Listen, cfg.Admin.Listen, cfg.Admin.Token = "127.0.0.1:0", "", "tok"
	for _, info := range fleet.Infos() {
		cfg.Workers = append(cfg.Workers, configs.Worker{ID: info.ID, URL: info.URL, Events: info.Events, Replay: info.Replay, MaxConns: 8})
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	st, err := stack.NewStack(&cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(ctx)
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- st.RunIndexer(rctx, ln, func() { close(ready) }) }()
	<-ready
	hc := &http.Client{Timeout: 10 * time.Second}
	defer func() {
		hc.CloseIdleConnections()
		rcancel()
		if err := <-done; err != nil {
			t.Errorf("indexer: %v", err)
		}
	}()
	base := "http://" + ln.Addr().String()
	c := &indexclient.Client{BaseURL: base, HTTP: hc}
	poll.CheckFor(t, 10*time.Second, "event feeds subscribed", func() bool {
		for _, w := range fleet.Workers() {
			if !w.EventsSubscribed() {
				return false
			}
		}
		return true
	})

	toks := make([]uint32, 4*16+5)
	for i := range toks {
		toks[i] = uint32(1000 + i*7)
	}
	warm := fleet.Workers()[1]
	body, _ := json.Marshal(map[string]any{"model": "m", "prompt": toks, "max_tokens": 1, "ignore_eos": true})
	resp, err := hc.Post(warm.URL()+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	var a struct {
		blocks, confirmed int
	}
	poll.CheckFor(t, 5*time.Second, "the prompt indexed as confirmed on the warm worker", func() bool {
		ans, err := c.Query(ctx, indexclient.Query{Model: "m", TokenIDs: toks})
		if err != nil {
			t.Fatal(err)
		}
		if ans.Blocks != 4 || ans.BlockSize != 16 || !ans.Exact {
			t.Fatalf("answer %+v", ans)
		}
		for _, w := range ans.Workers {
			if w.ID == warm.ID() {
				a.blocks, a.confirmed = w.Blocks, w.Confirmed
			}
		}
		return a.confirmed == 4
	})
	if a.blocks != 4 {
		t.Fatalf("blocks %d, confirmed %d", a.blocks, a.confirmed)
	}
	hashes := proto.HashBlocks(nil, proto.Seed("m", "", ""), toks, 16)
	raw := make([]uint64, len(hashes))
	for i, h := range hashes {
		raw[i] = uint64(h)
	}
	ans, err := c.Query(ctx, indexclient.Query{Model: "m", BlockHashes: raw})
	if err != nil || len(ans.Workers) != 1 || ans.Workers[0].ID != warm.ID() || ans.Workers[0].Confirmed != 4 {
		t.Fatalf("block-hash query: %+v, %v", ans, err)
	}
	if _, err := c.Query(ctx, indexclient.Query{Model: "nope", TokenIDs: toks}); !indexclient.IsNotFound(err) {
		t.Errorf("unknown model: %v", err)
	}

	var snap bytes.Buffer
	if n, err := c.Snapshot(ctx, &snap); err != nil || n == 0 || !bytes.HasPrefix(snap.Bytes(), []byte("KVRIDX")) {
		t.Fatalf("snapshot: %d bytes, %v", n, err)
	}
	var apiErr *indexclient.Error
	if _, err := c.Restore(ctx, bytes.NewReader(snap.Bytes())); !errors.As(err, &apiErr) || apiErr.Status != http.StatusUnauthorized {
		t.Errorf("restore without the token: %v", err)
	}
	authed := &indexclient.Client{BaseURL: base, Token: "tok", HTTP: hc}
	if _, err := authed.Restore(ctx, bytes.NewReader(snap.Bytes()[:snap.Len()-1])); !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest {
		t.Errorf("restore of a truncated snapshot: %v", err)
	}
	if res, err := authed.Restore(ctx, bytes.NewReader(snap.Bytes())); err != nil || res.Blocks < 4 {
		t.Errorf("restore: %+v, %v", res, err)
	}

	for path, want := range map[string]int{"/health": 200, "/metrics": 200, "/v1/models": 404, "/api/workers": 404, "/": 404} {
		resp, err := hc.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d %.100s, want %d", path, resp.StatusCode, b, want)
		}
		if path == "/metrics" && !bytes.Contains(b, []byte("kvroute_")) {
			t.Errorf("/metrics has no kvroute metric")
		}
	}
}
