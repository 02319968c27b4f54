package indexer

import (
	"encoding/binary"

	"github.com/cespare/xxhash/v2"

	"github.com/kvroute/kvroute/proto"
)

// chainFastTokens is the largest block (in tokens) chainBlock hashes in one shot.
const chainFastTokens = 32

// chainBlock returns proto.ChainBlock(parent, tokens), computed for blocks of up to
// chainFastTokens tokens with one xxhash.Sum64 call over a stack buffer instead of a
// streaming digest (xxhash gives the same value either way; TestChainBlockMatchesProto
// checks it), which roughly halves the cost of hashing a 16-token block on ingest.
func chainBlock(parent proto.BlockHash, tokens []uint32) proto.BlockHash {
	if len(tokens) > chainFastTokens {
		return proto.ChainBlock(parent, tokens)
	}
	var buf [8 + 4*chainFastTokens]byte
	binary.LittleEndian.PutUint64(buf[:8], uint64(parent))
	for i, t := range tokens {
		binary.LittleEndian.PutUint32(buf[8+4*i:], t)
	}
	return proto.BlockHash(xxhash.Sum64(buf[:8+4*len(tokens)]))
}
