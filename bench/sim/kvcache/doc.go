// Package kvcache is the simulator's paged KV-cache block pool, modelled on vLLM v1's
// BlockPool (vllm/v1/core/block_pool.py) and FreeKVCacheBlockQueue.
//
// The pool holds a fixed number of blocks. A block is either referenced by one or more
// running requests (pinned, never evicted) or sits in the free queue. The free queue is
// ordered by eviction priority: allocation pops from its head, a freed block is appended
// at its tail, so the least recently freed block goes first (LRU). A block in the free
// queue may still carry a hash (it is an evictable cache entry); allocating it evicts the
// entry and reports the hash, which the engine publishes as BlockRemoved.
//
// Invariants:
//   - Every block is in exactly one of two states: ref > 0 (not in the free queue) or
//     ref == 0 (in the free queue).
//   - A hash maps to the blocks committed with it; several blocks may carry the same hash
//     when two requests computed the same block concurrently (vLLM behaves the same and
//     publishes one BlockStored and later one BlockRemoved for each copy).
//   - Lookups only return leading blocks of a chain; the caller decides the hit limit.
//
// A Pool is not safe for concurrent use: the engine owns it and serializes access.
package kvcache
