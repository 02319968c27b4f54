package proto

import (
	"encoding/binary"
	"testing"

	"github.com/cespare/xxhash/v2"
)

func TestHashBlocksChainsFullBlocksOnly(t *testing.T) {
	seed := Seed("m", "", "")
	toks := make([]uint32, 40)
	for i := range toks {
		toks[i] = uint32(i)
	}
	got := HashBlocks(nil, seed, toks, 16)
	if len(got) != 2 {
		t.Fatalf("HashBlocks: got %d blocks, want 2 (partial block must not be hashed)", len(got))
	}
	if want := ChainBlock(seed, toks[:16]); got[0] != want {
		t.Errorf("block 0 = %x, want ChainBlock(seed, first block) = %x", got[0], want)
	}
	if want := ChainBlock(got[0], toks[16:32]); got[1] != want {
		t.Errorf("block 1 = %x, want chained on block 0 = %x", got[1], want)
	}
	// Same second block content after a different first block must hash differently.
	other := append([]uint32{999}, toks[1:]...)
	if HashBlocks(nil, seed, other, 16)[1] == got[1] {
		t.Error("block 1 hash does not depend on block 0")
	}
}

func TestSeedSeparatesModelsAdaptersAndSalts(t *testing.T) {
	seeds := map[BlockHash]string{}
	for _, s := range [][3]string{{"m", "", ""}, {"m2", "", ""}, {"m", "a", ""}, {"m", "", "a"}, {"ma", "", ""}} {
		h := Seed(s[0], s[1], s[2])
		if prev, ok := seeds[h]; ok {
			t.Fatalf("Seed%v collides with Seed%v", s, prev)
		}
		seeds[h] = s[0] + "/" + s[1] + "/" + s[2]
	}
}

func TestChainBlockLongBlocks(t *testing.T) {
	// Blocks longer than the internal buffer must hash every token.
	a := make([]uint32, 512)
	b := make([]uint32, 512)
	b[511] = 1
	if ChainBlock(1, a) == ChainBlock(1, b) {
		t.Error("last token of a 512-token block is ignored")
	}
}

// BenchmarkHashBlocks hashes a 4096-token prompt in 16-token blocks.
// Compare two runs with benchstat:
//
//	go test -run x -bench HashBlocks -count 10 ./proto > new.txt && benchstat old.txt new.txt
func BenchmarkHashBlocks(b *testing.B) {
	toks := make([]uint32, 4096)
	for i := range toks {
		toks[i] = uint32(i * 7)
	}
	dst := make([]BlockHash, 0, 256)
	seed := Seed("m", "", "")
	b.ReportAllocs()
	b.SetBytes(int64(len(toks) * 4))
	for b.Loop() {
		dst = HashBlocks(dst[:0], seed, toks, 16)
	}
}

// xxBuffered is ChainBlock's definition: xxhash.Sum64 over the parent's 8 little-endian
// bytes and the tokens' 4 little-endian bytes each.
func xxBuffered(parent BlockHash, tokens []uint32) BlockHash {
	buf := binary.LittleEndian.AppendUint64(nil, uint64(parent))
	for _, t := range tokens {
		buf = binary.LittleEndian.AppendUint32(buf, t)
	}
	return BlockHash(xxhash.Sum64(buf))
}

// TestChainBlockMatchesXXHash: the word-level XXH64 of ChainBlock equals xxhash.Sum64
// over the byte layout, for every token count from 0 to 80 (both XXH64 paths: under and
// over 32 bytes, odd and even counts, several stripes) and extreme values.
func TestChainBlockMatchesXXHash(t *testing.T) {
	toks := make([]uint32, 80)
	for i := range toks {
		toks[i] = uint32(i*2654435761 + 7)
	}
	toks[3], toks[17] = 0xffffffff, 0
	for _, parent := range []BlockHash{0, 1, Seed("m", "lora", "salt"), ^BlockHash(0)} {
		for n := 0; n <= len(toks); n++ {
			if got, want := ChainBlock(parent, toks[:n]), xxBuffered(parent, toks[:n]); got != want {
				t.Fatalf("parent %x, %d tokens: ChainBlock %x, xxhash.Sum64 %x", parent, n, got, want)
			}
		}
	}
}

// BenchmarkChainBlock compares ChainBlock on a 16-token block with the buffered
// xxhash.Sum64 form it replaces.
//
// Compare two runs:
//
//	go test -run x -bench ChainBlock -count 6 ./proto > new.txt; benchstat old.txt new.txt
func BenchmarkChainBlock(b *testing.B) {
	toks := make([]uint32, 16)
	for i := range toks {
		toks[i] = uint32(i * 977)
	}
	b.Run("words", func(b *testing.B) {
		b.ReportAllocs()
		var h BlockHash
		for b.Loop() {
			h = ChainBlock(h, toks)
		}
	})
	b.Run("buffered", func(b *testing.B) {
		b.ReportAllocs()
		var h BlockHash
		var buf [8 + 4*16]byte
		for b.Loop() {
			binary.LittleEndian.PutUint64(buf[:8], uint64(h))
			for i, t := range toks {
				binary.LittleEndian.PutUint32(buf[8+4*i:], t)
			}
			h = BlockHash(xxhash.Sum64(buf[:]))
		}
	})
}
