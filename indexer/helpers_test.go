package indexer

import (
	"sync"
	"testing"
	"time"

	"github.com/kvroute/kvroute/proto"
)

const bs = 4 // block size used by the tests

// fakeClock is an injectable clock; tests advance it instead of sleeping.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newIndex(t testing.TB, opts Options) (*Index, *fakeClock) {
	t.Helper()
	clk := newClock()
	if opts.Now == nil {
		opts.Now = clk.Now
	}
	ix, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return ix, clk
}

// doc returns the tokens of n blocks of document d: blocks of different documents
// differ, so chains diverge at the first block. Documents sharing a prefix are built by
// concatenating doc outputs.
func doc(d, n int) []uint32 {
	out := make([]uint32, 0, n*bs)
	for b := 0; b < n; b++ {
		for k := 0; k < bs; k++ {
			out = append(out, uint32(d*100000+b*bs+k))
		}
	}
	return out
}

func cat(parts ...[]uint32) []uint32 {
	var out []uint32
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// chain returns the request hashes of tokens for model "m" and lora.
func chain(lora string, tokens []uint32) []proto.BlockHash {
	return proto.HashBlocks(nil, proto.Seed("m", lora, ""), tokens, bs)
}

// engineHashes makes per-worker engine ids for blocks [from, to) of tokens: an opaque
// function of the prefix and salt (engines of different workers may or may not agree).
func engineHashes(salt uint64, tokens []uint32, from, to int) []proto.EngineHash {
	hs := proto.HashBlocks(nil, proto.BlockHash(salt), tokens, bs)
	out := make([]proto.EngineHash, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, proto.EngineHash(uint64(hs[i])^0xabcdef))
	}
	return out
}

// stored returns a BlockStored event for blocks [from, to) of tokens, parent linked
// when from > 0.
func stored(salt uint64, tokens []uint32, from, to int, medium, lora string) proto.Event {
	ev := proto.Event{
		Kind:        proto.BlockStored,
		BlockHashes: engineHashes(salt, tokens, from, to),
		TokenIDs:    tokens[from*bs : to*bs],
		BlockSize:   bs,
		Medium:      medium,
		LoRAName:    lora,
	}
	if from > 0 {
		ev.HasParent = true
		ev.ParentHash = engineHashes(salt, tokens, from-1, from)[0]
	}
	return ev
}

func removed(salt uint64, tokens []uint32, from, to int, medium string) proto.Event {
	return proto.Event{Kind: proto.BlockRemoved, BlockHashes: engineHashes(salt, tokens, from, to), Medium: medium}
}

func batch(evs ...proto.Event) *proto.Batch {
	return &proto.Batch{DPRank: -1, Events: evs}
}

// matchMap runs Match and returns Blocks/Confirmed per worker string.
func matchMap(ix *Index, hashes []proto.BlockHash) map[string][2]int {
	out := map[string][2]int{}
	for _, m := range ix.Match(hashes, nil) {
		out[m.Worker.String()] = [2]int{m.Blocks, m.Confirmed}
	}
	return out
}
