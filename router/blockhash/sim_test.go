package blockhash

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/upstream/kvevents"
)

// indexSink feeds a kvevents.Manager's batches into an indexer.Index, as the router does.
type indexSink struct{ ix *indexer.Index }

func (s indexSink) Apply(w proto.WorkerKey, model string, b *proto.Batch) {
	s.ix.Apply(w, model, b)
}

func (s indexSink) Reset(w proto.WorkerKey, _ string) {
	s.ix.ClearWorker(w)
}

// startSim starts a one-worker kvsim fleet whose KV events feed an index.
func startSim(t *testing.T) (*sim.Worker, *indexer.Index) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cfg := sim.DefaultFleetConfig()
	cfg.Worker.TimeScale = 0.01
	fleet, err := sim.StartFleet(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	w := fleet.Workers()[0]
	ix, err := indexer.New(indexer.Options{BlockSize: w.Config().BlockSize})
	if err != nil {
		t.Fatal(err)
	}
	m, err := kvevents.NewManager(kvevents.Options{Sink: indexSink{ix}, BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Add(kvevents.WorkerConfig{Worker: w.ID(), Model: w.Config().Model, Endpoint: w.EventsEndpoint(), ReplayEndpoint: w.ReplayEndpoint()}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = fleet.Close()
	})
	poll.CheckFor(t, 10*time.Second, "event subscription", w.EventsSubscribed)
	return w, ix
}

// held returns the number of leading blocks of hashes the index says worker id holds.
func held(ix *indexer.Index, id string, hashes []proto.BlockHash) int {
	for _, m := range ix.Match(hashes, nil) {
		if m.Worker.ID == id {
			return m.Blocks
		}
	}
	return 0
}

// The end-to-end check: the engine mode's hashes of a request, computed from a real
// kvsim worker's /tokenize before the request is served, are exactly the hashes the
// indexer builds from that worker's KV events once it has served the request. The local
// mode over the same tokenizer gives the same hashes.
func TestEngineMatchesKVSimEvents(t *testing.T) {
	w, ix := startSim(t)
	cfg := w.Config()
	e := newEngine(t, w.URL(), nil)
	local := NewLocal(wordTok{})
	ctx := t.Context()

	type usage struct {
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		} `json:"usage"`
	}
	var prev []proto.BlockHash
	for turn, msgs := range conversation(3, 80) {
		req := &Request{Model: cfg.Model, BlockSize: cfg.BlockSize, Messages: rawJSON(t, msgs)}
		r, err := e.Hash(ctx, req, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !r.Exact || len(r.Hashes) != r.Tokens/cfg.BlockSize || len(r.Hashes) < 5 {
			t.Fatalf("turn %d: %+v", turn, r)
		}
		if !isPrefix(prev, r.Hashes) {
			t.Fatalf("turn %d does not extend turn %d", turn, turn-1)
		}
		lr, err := local.Hash(ctx, req, nil)
		if err != nil || !slices.Equal(lr.Hashes, r.Hashes) || lr.Tokens != r.Tokens {
			t.Fatalf("turn %d: local mode differs from engine mode (%v)", turn, err)
		}
		if got := held(ix, w.ID(), r.Hashes); got != len(prev) {
			t.Fatalf("turn %d: index holds %d blocks before the request, want the previous turn's %d", turn, got, len(prev))
		}
		var u usage
		postJSON(t, ctx, w.URL()+"/v1/chat/completions", map[string]any{"model": cfg.Model, "messages": msgs, "max_tokens": 1}, &u)
		if u.Usage.PromptTokens != r.Tokens {
			t.Fatalf("turn %d: worker counted %d prompt tokens, engine mode %d", turn, u.Usage.PromptTokens, r.Tokens)
		}
		poll.CheckFor(t, 10*time.Second, "the index to hold every block of the request", func() bool {
			return held(ix, w.ID(), r.Hashes) == len(r.Hashes)
		})
		prev = r.Hashes
	}

	// A completions text prompt, with and without add_special_tokens.
	for _, add := range []string{"", "false"} {
		req := &Request{Model: cfg.Model, BlockSize: cfg.BlockSize, Prompt: rawJSON(t, "plain prompt "+add+" "+words(7000, 120)),
			Options: Options{AddSpecialTokens: []byte(add)}}
		r, err := e.Hash(ctx, req, nil)
		if err != nil {
			t.Fatal(err)
		}
		var u usage
		postJSON(t, ctx, w.URL()+"/v1/completions", map[string]any{"model": cfg.Model, "prompt": "plain prompt " + add + " " + words(7000, 120), "max_tokens": 1}, &u)
		if u.Usage.PromptTokens != r.Tokens {
			t.Fatalf("prompt: worker counted %d tokens, engine mode %d", u.Usage.PromptTokens, r.Tokens)
		}
		poll.CheckFor(t, 10*time.Second, "the index to hold every block of the prompt", func() bool {
			return held(ix, w.ID(), r.Hashes) == len(r.Hashes)
		})
	}
}

// With a dead worker, Fallback answers in approx mode after at most the timeout and
// counts the fallback; with a live one it returns the engine's exact result.
func TestFallback(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	m, _ := NewMetrics(nil)
	dead := newEngine(t, "http://"+addr, func(o *EngineOptions) { o.Metrics = m; o.Timeout = 5 * time.Second })
	f := NewFallback(dead, m)
	req := chatReq(t, conversation(2, 40)[1])
	r, err := f.Hash(t.Context(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := Approx{}.Hash(t.Context(), req, nil)
	if r.Exact || !slices.Equal(r.Hashes, want.Hashes) || len(r.Hashes) == 0 {
		t.Fatalf("fallback result %+v", r)
	}
	if got := testutil.ToFloat64(m.fallbacks.WithLabelValues(reasonNetwork)); got != 1 {
		t.Fatalf("fallbacks{transport} = %v", got)
	}

	srv := newTokServer(t)
	f = NewFallback(newEngine(t, srv.URL, nil), m)
	r, err = f.Hash(t.Context(), req, nil)
	if err != nil || !r.Exact {
		t.Fatalf("live worker: %+v %v", r, err)
	}

	// Input approx cannot read either fails with both errors.
	_, err = f.Hash(t.Context(), &Request{Model: "m", BlockSize: 16, Messages: []byte(`[1]`)}, nil)
	if !errors.Is(err, ErrBadInput) {
		t.Fatalf("bad input through fallback: %v", err)
	}
}
