package indexer

import (
	"testing"

	"github.com/kvroute/kvroute/proto"
)

// TestChainBlockMatchesProto: the index's one-shot hash equals proto.ChainBlock, the
// router's, for every block size up to and past the fast path's limit.
func TestChainBlockMatchesProto(t *testing.T) {
	toks := make([]uint32, 3*chainFastTokens)
	for i := range toks {
		toks[i] = uint32(i*2654435761 + 7)
	}
	parent := proto.Seed("m", "lora", "salt")
	for n := 0; n <= len(toks); n++ {
		if got, want := chainBlock(parent, toks[:n]), proto.ChainBlock(parent, toks[:n]); got != want {
			t.Fatalf("%d tokens: chainBlock %x, proto.ChainBlock %x", n, got, want)
		}
		parent ^= proto.BlockHash(n) << 40
	}
}

// BenchmarkChainBlock compares the one-shot hash of a 16-token block with proto's.
//
// Compare two runs:
//
//	go test -run x -bench ChainBlock -count 6 ./indexer > new.txt; benchstat old.txt new.txt
func BenchmarkChainBlock(b *testing.B) {
	toks := make([]uint32, 16)
	for i := range toks {
		toks[i] = uint32(i * 977)
	}
	b.Run("indexer", func(b *testing.B) {
		b.ReportAllocs()
		var h proto.BlockHash
		for b.Loop() {
			h = chainBlock(h, toks)
		}
	})
	b.Run("proto", func(b *testing.B) {
		b.ReportAllocs()
		var h proto.BlockHash
		for b.Loop() {
			h = proto.ChainBlock(h, toks)
		}
	})
}
