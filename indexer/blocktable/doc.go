// Package blocktable is an open-addressing hash table from 64-bit keys to a 32-bit value
// and a 32-bit touch stamp, built for kvroute's block index: tens of millions of entries,
// lookups that cost one cache miss, and no long pause when it grows.
//
// Layout: 256 independent shards chosen by the top byte of a seeded mix of the key; each
// shard is a power-of-two array of 16-byte slots {key, value, touch} with linear probing
// and backward-shift deletion (no tombstones). A shard doubles when it passes 3/4 load,
// so growth rehashes 1/256 of the table at a time: at 10 million entries a grow moves
// about 40,000 slots (well under a millisecond) instead of pausing for the whole table.
//
// Why not a Go map: Go's swiss map splits a large map into many small tables behind a
// directory, so a lookup at 10 million entries touches the directory, the table header
// and the group (two to three cache misses), its values cannot be updated in place
// (the touch stamp must be written by concurrent readers with an atomic store), and it
// cannot be sampled at random (needed for approximate-LRU eviction). The benchmarks in
// this package compare both (see BenchmarkLookup).
//
// Invariants:
//   - A slot is empty exactly when its value is 0; callers never store value 0.
//   - Every key lives in the shard picked by the top byte of mix(key) and is reachable
//     from its home position by linear probing without crossing an empty slot.
//   - Load per shard stays at or below 3/4.
//
// Concurrency: a Table is not safe for concurrent mutation. Any number of goroutines may
// call Find and Get concurrently with each other when no goroutine mutates; pointers
// returned by Find stay valid until the next Insert or Delete, and their Touch field may
// be updated with sync/atomic by those concurrent readers.
package blocktable
