package proto

import (
	"encoding/binary"

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
// previous block, or the seed for the first block) is parent: xxhash64 over the parent's
// 8 little-endian bytes followed by each token id as 4 little-endian bytes. It does not
// allocate.
func ChainBlock(parent BlockHash, tokens []uint32) BlockHash {
	var d xxhash.Digest
	d.Reset()
	var buf [64]byte
	binary.LittleEndian.PutUint64(buf[:8], uint64(parent))
	n := 8
	for _, t := range tokens {
		if n+4 > len(buf) {
			_, _ = d.Write(buf[:n])
			n = 0
		}
		binary.LittleEndian.PutUint32(buf[n:], t)
		n += 4
	}
	_, _ = d.Write(buf[:n])
	return BlockHash(d.Sum64())
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
