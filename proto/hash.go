package proto

import (
	"math/bits"

	"github.com/cespare/xxhash/v2"
)

// BlockHash is kvroute's own hash of one full token block, chained with every block
// before it (see [ChainBlock]). Equal hashes mean equal prefixes up to and including the
// block, for the same seed.
type BlockHash uint64

// Seed returns the chain's starting value for a model, a LoRA adapter name ("" for the
// base model) and a cache salt ("" for none). Requests that must not share cache entries
// (different models, adapters or salts) get different seeds, so their chains never meet.
func Seed(model, lora, cacheSalt string) BlockHash {
	var d xxhash.Digest
	d.Reset()
	_, _ = d.WriteString(model)
	_, _ = d.Write([]byte{0})
	_, _ = d.WriteString(lora)
	_, _ = d.Write([]byte{0})
	_, _ = d.WriteString(cacheSalt)
	return BlockHash(d.Sum64())
}

// ChainBlock returns the hash of one full block of tokens whose parent (the hash of the
// previous block, or the seed for the first block) is parent: xxhash64 (seed 0) over the
// parent's 8 little-endian bytes followed by each token id as 4 little-endian bytes. It
// does not allocate.
//
// It computes XXH64 directly on 64-bit words (the parent, then two tokens per word)
// instead of filling a byte buffer for xxhash.Sum64: the value is the same
// (TestChainBlockMatchesXXHash checks every length up to 80 tokens), and a 16-token
// block costs about a third of the buffered form (BenchmarkChainBlock).
func ChainBlock(parent BlockHash, tokens []uint32) BlockHash {
	n := len(tokens)
	length := uint64(8 + 4*n)
	var h uint64
	w := uint64(parent) // the next 8-byte word; tokens[i:] follow it
	i := 0
	if length >= 32 {
		p1, p2 := xxPrime1, xxPrime2 // variables: the seeds wrap around
		v1, v2, v3, v4 := p1+p2, p2, uint64(0), -p1
		// First stripe: the parent and tokens 0-5.
		v1 = xxRound(v1, w)
		v2 = xxRound(v2, tokWord(tokens, 0))
		v3 = xxRound(v3, tokWord(tokens, 2))
		v4 = xxRound(v4, tokWord(tokens, 4))
		i = 6
		for ; i+8 <= n; i += 8 {
			v1 = xxRound(v1, tokWord(tokens, i))
			v2 = xxRound(v2, tokWord(tokens, i+2))
			v3 = xxRound(v3, tokWord(tokens, i+4))
			v4 = xxRound(v4, tokWord(tokens, i+6))
		}
		h = bits.RotateLeft64(v1, 1) + bits.RotateLeft64(v2, 7) + bits.RotateLeft64(v3, 12) + bits.RotateLeft64(v4, 18)
		h = xxMerge(h, v1)
		h = xxMerge(h, v2)
		h = xxMerge(h, v3)
		h = xxMerge(h, v4)
		h += length
	} else {
		h = xxPrime5 + length
		// The parent is the first tail word.
		h ^= xxRound(0, w)
		h = bits.RotateLeft64(h, 27)*xxPrime1 + xxPrime4
	}
	for ; i+2 <= n; i += 2 {
		h ^= xxRound(0, tokWord(tokens, i))
		h = bits.RotateLeft64(h, 27)*xxPrime1 + xxPrime4
	}
	if i < n {
		h ^= uint64(tokens[i]) * xxPrime1
		h = bits.RotateLeft64(h, 23)*xxPrime2 + xxPrime3
	}
	h ^= h >> 33
	h *= xxPrime2
	h ^= h >> 29
	h *= xxPrime3
	h ^= h >> 32
	return BlockHash(h)
}

// XXH64's primes.
const (
	xxPrime1 uint64 = 11400714785074694791
	xxPrime2 uint64 = 14029467366897019727
	xxPrime3 uint64 = 1609587929392839161
	xxPrime4 uint64 = 9650029242287828579
	xxPrime5 uint64 = 2870177450012600261
)

// tokWord returns tokens i and i+1 as one little-endian 64-bit word.
func tokWord(tokens []uint32, i int) uint64 {
	return uint64(tokens[i]) | uint64(tokens[i+1])<<32
}

func xxRound(acc, input uint64) uint64 {
	acc += input * xxPrime2
	acc = bits.RotateLeft64(acc, 31)
	return acc * xxPrime1
}

func xxMerge(acc, val uint64) uint64 {
	acc ^= xxRound(0, val)
	return acc*xxPrime1 + xxPrime4
}

// HashBlocks appends to dst the chained hashes of every full block of tokens (blockSize
// tokens each; a trailing partial block is not hashed) starting from seed, and returns the
// extended slice. blockSize must be positive. With a dst of enough capacity it does not
// allocate.
func HashBlocks(dst []BlockHash, seed BlockHash, tokens []uint32, blockSize int) []BlockHash {
	parent := seed
	for i := 0; i+blockSize <= len(tokens); i += blockSize {
		parent = ChainBlock(parent, tokens[i:i+blockSize])
		dst = append(dst, parent)
	}
	return dst
}
