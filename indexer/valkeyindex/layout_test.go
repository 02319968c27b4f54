package valkeyindex_test

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/kvroute/kvroute/indexer/valkeyindex"
	"github.com/kvroute/kvroute/indexer/valkeyindex/valkeytest"
	"github.com/kvroute/kvroute/proto"
)

// rawClient is a plain client to look at the server's keys.
func rawClient(t *testing.T, url string) valkey.Client {
	t.Helper()
	co, err := valkey.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	co.DisableCache = true
	c, err := valkey.NewClient(co)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// store applies a GPU store of the whole chain c for w to ix and writes it.
func store(t *testing.T, ix *valkeyindex.Index, w proto.WorkerKey, c chain) {
	t.Helper()
	ix.Apply(w, model, &proto.Batch{DPRank: -1, Events: []proto.Event{{Kind: proto.BlockStored, BlockHashes: c.eng, TokenIDs: c.tokens, BlockSize: bs}}})
	flush(t, ix)
}

func flush(t *testing.T, ix *valkeyindex.Index) {
	t.Helper()
	if err := ix.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// holders returns worker -> blocks of ix's Match for c, failing if the server was not
// asked.
func holders(t *testing.T, ix *valkeyindex.Index, c chain) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, m := range ix.Match(c.own, nil) {
		out[m.Worker.ID] = m.Blocks
	}
	if ix.Down() {
		t.Fatal("backend down")
	}
	return out
}

func newChain(seed uint64) chain {
	w := &world{rnd: newRand(seed)}
	return w.newChain()
}

// TestSlotReuse: a removed worker's slot goes to the next new worker (of another
// process), and the removed worker's entries, still in the block values, never count
// for it.
func TestSlotReuse(t *testing.T) {
	srv := valkeytest.Start(t)
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	_, a := newPair(t, srv.URL(), clk, "reuse:")
	_, b := newPair(t, srv.URL(), clk, "reuse:")
	flush(t, a)
	flush(t, b)
	c1, c2 := newChain(1), newChain(2)
	old, nw := proto.WorkerKey{ID: "old"}, proto.WorkerKey{ID: "new"}
	store(t, a, old, c1)
	if h := holders(t, b, c1); h["old"] != len(c1.own) || len(h) != 1 {
		t.Fatalf("before removal, b sees %v", h)
	}
	a.RemoveWorker(old)
	flush(t, a)
	store(t, b, nw, c2)
	rc := rawClient(t, srv.URL())
	if s, err := rc.Do(context.Background(), rc.B().Hget().Key("reuse:slot").Field("0:new").Build()).ToString(); err != nil || s != "0" {
		t.Fatalf("new worker's slot %q (%v), want the freed slot 0", s, err)
	}
	if h := holders(t, a, c1); len(h) != 0 {
		t.Fatalf("after removal and slot reuse, a sees %v on the removed worker's blocks", h)
	}
	if h := holders(t, a, c2); h["new"] != len(c2.own) || len(h) != 1 {
		t.Fatalf("a sees %v on the new worker's blocks", h)
	}
	// The removed worker comes back: a fresh slot, and its old entries stay invisible.
	store(t, a, old, c2)
	if h := holders(t, b, c1); len(h) != 0 {
		t.Fatalf("returned worker: b sees %v on its old blocks", h)
	}
	if h := holders(t, b, c2); h["new"] != len(c2.own) || h["old"] != len(c2.own) {
		t.Fatalf("b sees %v", h)
	}
}

// TestSlotRetired: after 65,535 events-epoch bumps a slot is retired (its 16-bit epoch
// would wrap and make old entries count again); the worker gets a fresh slot.
func TestSlotRetired(t *testing.T) {
	srv := valkeytest.Start(t)
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	_, a := newPair(t, srv.URL(), clk, "retire:")
	flush(t, a)
	w := proto.WorkerKey{ID: "w"}
	c1, c2 := newChain(1), newChain(2)
	store(t, a, w, c1)
	for range 65534 {
		a.ClearEvents(w)
	}
	store(t, a, w, c1) // epoch 65535: the last one the slot takes
	if h := holders(t, a, c1); h["w"] != len(c1.own) {
		t.Fatalf("at epoch 65535: %v", h)
	}
	rc := rawClient(t, srv.URL())
	a.ClearEvents(w)
	flush(t, a)
	if n, err := rc.Do(context.Background(), rc.B().Hlen().Key("retire:slot").Build()).AsInt64(); err != nil || n != 0 {
		t.Fatalf("retired slot still mapped: %d %v", n, err)
	}
	store(t, a, w, c2)
	if s, err := rc.Do(context.Background(), rc.B().Hget().Key("retire:slot").Field("0:w").Build()).ToString(); err != nil || s != "1" {
		t.Fatalf("slot after retirement %q (%v), want the fresh slot 1", s, err)
	}
	if h := holders(t, a, c1); len(h) != 0 {
		t.Fatalf("entries of the retired slot count: %v", h)
	}
	if h := holders(t, a, c2); h["w"] != len(c2.own) {
		t.Fatalf("new slot: %v", h)
	}
}

// TestKeyTTL: a block value with predictions only expires with its latest
// prediction; one that a worker holds on a tier has no TTL.
func TestKeyTTL(t *testing.T) {
	srv := valkeytest.Start(t)
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	_, a := newPair(t, srv.URL(), clk, "ttl:")
	flush(t, a)
	rc := rawClient(t, srv.URL())
	c := newChain(3)
	key := "ttl:k:" + string(beHash(c.own[0]))
	pttl := func() int64 {
		t.Helper()
		n, err := rc.Do(context.Background(), rc.B().Pttl().Key(key).Build()).AsInt64()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	w := proto.WorkerKey{ID: "w"}
	a.Predict(w, c.own, 5*time.Second)
	flush(t, a)
	if n := pttl(); n <= 0 || n > 6000 {
		t.Fatalf("predicted only: PTTL %d ms, want (0, 6000]", n)
	}
	store(t, a, w, c)
	if n := pttl(); n != -1 {
		t.Fatalf("held on GPU: PTTL %d, want -1 (none)", n)
	}
	a.Apply(w, model, &proto.Batch{DPRank: -1, Events: []proto.Event{{Kind: proto.BlockRemoved, BlockHashes: c.eng}}})
	a.Predict(w, c.own, 30*time.Second)
	flush(t, a)
	if n := pttl(); n <= 5000 || n > 31000 {
		t.Fatalf("removed from GPU, predicted for 30 s: PTTL %d ms", n)
	}
	a.ClearWorker(w)
	flush(t, a)
	// Another process predicts for w3; this one clears w3 (a bump only: it knows none of
	// those entries) and then writes the key: the write drops w3's invisible entry.
	_, b := newPair(t, srv.URL(), clk, "ttl:")
	flush(t, b)
	b.Predict(proto.WorkerKey{ID: "w3"}, c.own, 30*time.Second)
	flush(t, b)
	if h := holders(t, a, c); h["w3"] != len(c.own) || len(h) != 1 {
		t.Fatalf("before the clear: %v", h)
	}
	a.ClearWorker(proto.WorkerKey{ID: "w3"})
	store(t, a, proto.WorkerKey{ID: "w2"}, c)
	if h := holders(t, b, c); h["w2"] != len(c.own) || len(h) != 1 {
		t.Fatalf("after the clear: %v", h)
	}
	v, err := rc.Do(context.Background(), rc.B().Get().Key(key).Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	if len(v) != 5 {
		t.Fatalf("after w's clear and w2's store the value holds %d bytes, want w2's entry only (the cleared one dropped at the write)", len(v))
	}
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 11)) }

// beHash is a block hash as its key spells it.
func beHash(h proto.BlockHash) []byte { return binary.BigEndian.AppendUint64(nil, uint64(h)) }

// TestSlotTableFlushed: the keys flushed (as by a server restarted empty) and the slot
// table rebuilt in another order by another process: a process that cached the old
// table must not attribute the new slots to the old workers, though the table went
// through as many changes as before.
func TestSlotTableFlushed(t *testing.T) {
	srv := valkeytest.Start(t)
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	_, a := newPair(t, srv.URL(), clk, "flush:")
	flush(t, a)
	x, y := proto.WorkerKey{ID: "x"}, proto.WorkerKey{ID: "y"}
	cx, cy := newChain(1), newChain(2)
	store(t, a, x, cx)
	store(t, a, y, cy)
	if h := holders(t, a, cx); h["x"] != len(cx.own) || len(h) != 1 {
		t.Fatalf("before the flush: %v", h)
	}
	rc := rawClient(t, srv.URL())
	if err := rc.Do(context.Background(), rc.B().Flushall().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	_, b := newPair(t, srv.URL(), clk, "flush:")
	flush(t, b)
	store(t, b, y, cx) // y gets slot 0, x's slot before the flush
	store(t, b, x, cy)
	if h := holders(t, a, cx); h["y"] != len(cx.own) || len(h) != 1 {
		t.Fatalf("after the flush a sees %v on the blocks only y holds", h)
	}
}
