package workload

import (
	"github.com/kvroute/kvroute/bench/sim/kvcache"
	"github.com/kvroute/kvroute/proto"
)

// Bounds are the cache hit rates a workload allows, whatever the routing.
type Bounds struct {
	// PromptTokens is the sum of prompt lengths.
	PromptTokens int64
	// Infinite is the share of prompt tokens in full blocks whose whole prefix an earlier
	// request sent (a cache that never evicts and is shared by every worker).
	Infinite float64
	// PooledLRU is the same share for one LRU cache of PooledBlocks blocks, requests
	// served one at a time in arrival order; 0 when PooledBlocks is 0.
	PooledLRU    float64
	PooledBlocks int
	// InfiniteCached and PooledCached are each request's cached prompt tokens under the
	// two caches, in request order (PooledCached empty without the pooled bound): the
	// input of latency bounds such as report.IdleTTFT. Not serialized.
	InfiniteCached []int `json:"-"`
	PooledCached   []int `json:"-"`
}

// ComputeBounds computes the bounds at blockSize tokens per block; pooledBlocks is the
// fleet's total KV capacity in blocks (0 skips the pooled bound). Like vLLM, a hit covers
// at most len(prompt)-1 tokens.
func ComputeBounds(w *Workload, blockSize, pooledBlocks int) Bounds {
	b := Bounds{PooledBlocks: pooledBlocks}
	seen := make(map[proto.BlockHash]struct{})
	var pool *kvcache.Pool
	if pooledBlocks > 0 {
		pool = kvcache.New(pooledBlocks)
	}
	var infHit, lruHit int64
	var hashes []proto.BlockHash
	var u64 []uint64
	var ids []kvcache.BlockID
	for _, r := range w.Requests {
		b.PromptTokens += int64(len(r.Prompt))
		hashes = proto.HashBlocks(hashes[:0], proto.Seed("", "", ""), r.Prompt, blockSize)
		n := 0
		for n < len(hashes) {
			if _, ok := seen[hashes[n]]; !ok {
				break
			}
			n++
		}
		inf := max(0, min(n*blockSize, len(r.Prompt)-1))
		infHit += int64(inf)
		b.InfiniteCached = append(b.InfiniteCached, inf)
		for _, h := range hashes {
			seen[h] = struct{}{}
		}
		if pool == nil {
			continue
		}
		u64 = u64[:0]
		for _, h := range hashes {
			u64 = append(u64, uint64(h))
		}
		if len(u64) > pooledBlocks {
			u64 = u64[:pooledBlocks]
		}
		m := pool.Match(u64)
		lru := max(0, min(m*blockSize, len(r.Prompt)-1))
		lruHit += int64(lru)
		b.PooledCached = append(b.PooledCached, lru)
		ids = pool.Touch(ids[:0], u64[:m])
		var err error
		ids, _, err = pool.Allocate(ids, len(u64)-m, nil)
		if err != nil {
			// Cannot happen: every block is freed after each request and len(u64) <= capacity.
			pool.Free(ids[:m])
			continue
		}
		for i := m; i < len(u64); i++ {
			pool.Commit(ids[i], u64[i])
		}
		pool.Free(ids)
	}
	if b.PromptTokens > 0 {
		b.Infinite = float64(infHit) / float64(b.PromptTokens)
		b.PooledLRU = float64(lruHit) / float64(b.PromptTokens)
	}
	return b
}
