package proto

import (
	"testing"
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
