package valkeyindex_test

import (
	"cmp"
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/indexer/valkeyindex"
	"github.com/kvroute/kvroute/indexer/valkeyindex/valkeytest"
	"github.com/kvroute/kvroute/proto"
)

const (
	bs    = 4
	model = "m"
)

// clock is an injectable clock shared by both indexes of a test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// chain is a token sequence with its engine hashes (the same on every worker, as vLLM's
// are for equal prefixes) and kvroute's own hashes.
type chain struct {
	tokens []uint32
	eng    []proto.EngineHash
	own    []proto.BlockHash
}

// world generates chains sharing prefixes.
type world struct {
	rnd    *rand.Rand
	chains []chain
}

func (w *world) newChain() chain {
	var c chain
	if len(w.chains) > 0 && w.rnd.IntN(3) > 0 {
		p := w.chains[w.rnd.IntN(len(w.chains))]
		k := w.rnd.IntN(len(p.own) + 1)
		c.tokens = slices.Clone(p.tokens[:k*bs])
	}
	for range 1 + w.rnd.IntN(8) {
		for range bs {
			c.tokens = append(c.tokens, uint32(w.rnd.IntN(50)))
		}
	}
	c.own = proto.HashBlocks(nil, proto.Seed(model, "", ""), c.tokens, bs)
	for _, h := range c.own {
		c.eng = append(c.eng, proto.EngineHash(uint64(h)*0x9e3779b97f4a7c15+1))
	}
	w.chains = append(w.chains, c)
	return c
}

func (w *world) pick() chain {
	if len(w.chains) == 0 || w.rnd.IntN(8) == 0 {
		return w.newChain()
	}
	return w.chains[w.rnd.IntN(len(w.chains))]
}

// sortMatches orders a Match result by worker.
func sortMatches(m []indexer.WorkerMatch) []indexer.WorkerMatch {
	m = slices.Clone(m)
	slices.SortFunc(m, func(a, b indexer.WorkerMatch) int {
		return cmp.Or(cmp.Compare(a.Worker.ID, b.Worker.ID), cmp.Compare(a.Worker.DPRank, b.Worker.DPRank))
	})
	return m
}

func sameMatches(t *testing.T, step int, want, got []indexer.WorkerMatch) {
	t.Helper()
	want, got = sortMatches(want), sortMatches(got)
	if len(want) != len(got) {
		t.Fatalf("step %d: in memory %+v, valkey %+v", step, want, got)
	}
	for i := range want {
		a, b := want[i], got[i]
		if a.Worker != b.Worker || a.Blocks != b.Blocks || a.Confirmed != b.Confirmed || math.Abs(a.Score-b.Score) > 1e-9 {
			t.Fatalf("step %d: in memory %+v, valkey %+v", step, want, got)
		}
	}
}

func newPair(t *testing.T, url string, clk *clock, prefix string) (*indexer.Index, *valkeyindex.Index) {
	t.Helper()
	weights := [indexer.NumTiers]float64{indexer.TierGPU: 1, indexer.TierCPU: 0.5}
	lo := indexer.Options{TierWeights: &weights, PredictedWeight: 0.75, Now: clk.Now, SampleEvery: 1}
	ref, err := indexer.New(lo)
	if err != nil {
		t.Fatal(err)
	}
	v, err := valkeyindex.New(valkeyindex.Options{URL: url, Prefix: prefix, Local: lo, Now: clk.Now, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return ref, v
}

// TestMatchEqualsInMemory applies random event streams (stores with and without
// parents, on GPU and CPU, removes, clears, feed restarts, removals, predictions and
// their expiry) to an in-memory index and to the Valkey backend, and checks that the
// backend's Match, answered by the server, equals the in-memory one after every step.
func TestMatchEqualsInMemory(t *testing.T) {
	srv := valkeytest.Start(t)
	seen := map[[2]bool]int{}
	for seed := range uint64(4) {
		clk := &clock{t: time.Unix(1_700_000_000, 0)}
		ref, v := newPair(t, srv.URL(), clk, "eq"+string(rune('a'+seed))+":")
		ctx := context.Background()
		if err := v.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		w := &world{rnd: rand.New(rand.NewPCG(seed, 7))}
		workers := []proto.WorkerKey{{ID: "w0"}, {ID: "w1"}, {ID: "w1", DPRank: 1}, {ID: "w2"}}
		var dst []indexer.WorkerMatch
		for step := range 400 {
			wk := workers[w.rnd.IntN(len(workers))]
			switch r := w.rnd.IntN(100); {
			case r < 45: // store
				c := w.pick()
				s := 0
				if w.rnd.IntN(3) == 0 {
					s = w.rnd.IntN(len(c.own))
				}
				e := s + 1 + w.rnd.IntN(len(c.own)-s)
				ev := proto.Event{Kind: proto.BlockStored, BlockHashes: c.eng[s:e], TokenIDs: c.tokens[s*bs : e*bs], BlockSize: bs}
				if s > 0 {
					ev.HasParent, ev.ParentHash = true, c.eng[s-1]
				}
				if w.rnd.IntN(5) == 0 {
					ev.Medium = "CPU"
					if w.rnd.IntN(2) == 0 {
						ev.TokenIDs = nil // offload of blocks stored on GPU before
					}
				}
				b := &proto.Batch{DPRank: -1, Events: []proto.Event{ev}}
				ref.Apply(wk, model, b)
				v.Apply(wk, model, b)
			case r < 65: // remove
				c := w.pick()
				s := w.rnd.IntN(len(c.own))
				ev := proto.Event{Kind: proto.BlockRemoved, BlockHashes: c.eng[s : s+1+w.rnd.IntN(len(c.own)-s)]}
				if w.rnd.IntN(5) == 0 {
					ev.Medium = "CPU"
				}
				b := &proto.Batch{DPRank: -1, Events: []proto.Event{ev}}
				ref.Apply(wk, model, b)
				v.Apply(wk, model, b)
			case r < 80: // prediction
				c := w.pick()
				ttl := time.Duration(1+w.rnd.IntN(20)) * time.Second
				k := 1 + w.rnd.IntN(len(c.own))
				ref.Predict(wk, c.own[:k], ttl)
				v.Predict(wk, c.own[:k], ttl)
			case r < 85:
				clk.Advance(time.Duration(w.rnd.IntN(5000)) * time.Millisecond)
				ref.Sweep()
				v.Sweep()
			case r < 88:
				b := &proto.Batch{DPRank: -1, Events: []proto.Event{{Kind: proto.AllBlocksCleared}}}
				ref.Apply(wk, model, b)
				v.Apply(wk, model, b)
			case r < 92:
				ref.ClearEvents(wk)
				v.ClearEvents(wk)
			case r < 95:
				ref.ClearWorker(wk)
				v.ClearWorker(wk)
			case r < 97:
				ref.RemoveWorker(wk)
				v.RemoveWorker(wk)
			}
			if err := v.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			for range 3 {
				c := w.pick()
				req := c.own
				if w.rnd.IntN(3) == 0 {
					req = req[:1+w.rnd.IntN(len(req))]
				}
				want := ref.Match(req, nil)
				dst = v.Match(req, dst)
				if v.Down() {
					t.Fatalf("step %d: backend down", step)
				}
				sameMatches(t, step, want, dst)
				for _, m := range want {
					seen[[2]bool{m.Blocks > m.Confirmed, m.Confirmed > 0}]++
				}
			}
		}
	}
	// The streams reach every kind of answer: confirmed, predicted, both.
	for _, k := range [][2]bool{{false, true}, {true, false}, {true, true}} {
		if seen[k] < 20 {
			t.Errorf("only %d matches with (predicted part, confirmed part) = %v: %v", seen[k], k, seen)
		}
	}
}
