package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
)

// runStack builds a Stack from cfg and runs it on a loopback port; stop cancels it and
// returns Run's error. started is when Run was called, before the Stack was ready.
func runStack(t *testing.T, cfg *configs.Config) (st *Stack, url string, started time.Time, stop func() error) {
	t.Helper()
	st, err := NewStack(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	started = time.Now()
	go func() { done <- st.Run(ctx, ln, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("stack: %v", err)
	}
	return st, "http://" + ln.Addr().String(), started, func() error {
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
		cancel()
		return <-done
	}
}

// routed sends a one-token completion of toks through the router at base and returns
// the chosen worker and the leading blocks the router expected it to hold
// (x-kvroute-cached-blocks).
func routed(t *testing.T, client *http.Client, base string, toks []uint32) (worker string, cached int) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"model": "m", "prompt": toks, "max_tokens": 1, "ignore_eos": true})
	resp, err := client.Post(base+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("completion: %d %s", resp.StatusCode, b)
	}
	h := resp.Header.Get("x-kvroute-cached-blocks")
	n, err := strconv.Atoi(h[:max(0, strings.IndexByte(h, '/'))])
	if err != nil {
		t.Fatalf("x-kvroute-cached-blocks %q", h)
	}
	return resp.Header.Get("x-kvroute-worker"), n
}

// A router restarted with a snapshot routes the previous prompts back within 1 s of its
// start. The workers publish no KV events, so after the restart only the snapshot can
// know where the prompts went: router 1 routes a set of prompts (its index predicts
// where each went), is stopped (the snapshot is written at shutdown), and router 2,
// started with the same snapshot file, must send each prompt to the same worker with a
// positive x-kvroute-cached-blocks, all within 1 s of its Run call.
func TestRouterRestartedWithSnapshotRoutesPromptsBack(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fc := sim.DefaultFleetConfig()
	fc.Workers, fc.Worker.Model, fc.Worker.BlockSize = 4, "m", itBlockSize
	fleet, err := sim.StartFleet(ctx, fc)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fleet.Close() }()
	cfg := configs.Default()
	cfg.Listen, cfg.Admin.Listen = "127.0.0.1:0", ""
	cfg.Timeouts.Shutdown = 30 * time.Second
	cfg.Index.SnapshotFile = filepath.Join(t.TempDir(), "index.snapshot")
	for _, info := range fleet.Infos() {
		cfg.Workers = append(cfg.Workers, configs.Worker{ID: info.ID, URL: info.URL, MaxConns: 64}) // no events
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()

	o := newBlockOracle(fleet, 3)
	prompts := make([][]uint32, 12)
	where := make([]string, len(prompts))
	_, url1, _, stop1 := runStack(t, &cfg)
	for i := range prompts {
		prompts[i] = o.prompt(3 + i%4)
		where[i], _ = routed(t, client, url1, prompts[i])
	}
	client.CloseIdleConnections()
	if err := stop1(); err != nil {
		t.Fatalf("router 1: %v", err)
	}
	if fi, err := os.Stat(cfg.Index.SnapshotFile); err != nil || fi.Size() == 0 {
		t.Fatalf("no snapshot written at shutdown: %v", err)
	}

	st2, url2, started, stop2 := runStack(t, &cfg)
	defer func() {
		client.CloseIdleConnections()
		if err := stop2(); err != nil {
			t.Errorf("router 2: %v", err)
		}
	}()
	for i, toks := range prompts {
		got, cached := routed(t, client, url2, toks)
		if got != where[i] || cached != len(toks)/itBlockSize {
			t.Errorf("prompt %d: routed to %s with %d cached blocks, want %s (router 1's choice) with %d", i, got, cached, where[i], len(toks)/itBlockSize)
		}
	}
	if took := time.Since(started); took > time.Second {
		t.Errorf("the previous prompts were routed back %v after router 2's start, want within 1s", took)
	} else {
		t.Logf("%d prompts routed back within %v of router 2's start", len(prompts), took.Round(time.Millisecond))
	}
	if st2.Index.Stats().PredictedEntries == 0 {
		t.Error("router 2's index holds no predictions")
	}
}

// WriteSnapshot replaces the file atomically and leaves no temporary file; a router
// started with a corrupt snapshot file starts cold instead of failing.
func TestSnapshotFileWriteAndCorruptFile(t *testing.T) {
	dir := t.TempDir()
	cfg := configs.Default()
	cfg.Index.SnapshotFile = filepath.Join(dir, "ix")
	cfg.Workers = []configs.Worker{{ID: "a", URL: "http://127.0.0.1:1", Models: []string{"m"}, MaxConns: 1}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	st, err := NewStack(&cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.Index.SnapshotFile, []byte("KVRIDX\x01\x01garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	st.restoreSnapshot()
	if s := st.Index.Stats(); s.Blocks != 0 {
		t.Fatalf("a corrupt snapshot installed %d blocks", s.Blocks)
	}
	if err := st.WriteSnapshot(); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "ix" {
		t.Fatalf("directory after the write: %v", ents)
	}
	b, _ := os.ReadFile(cfg.Index.SnapshotFile)
	if !bytes.HasPrefix(b, []byte("KVRIDX")) || st.Index.Restore(bytes.NewReader(b)) != nil {
		t.Fatalf("written snapshot %q does not restore", b)
	}
}
