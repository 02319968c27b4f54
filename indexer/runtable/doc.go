// Package runtable maps 64-bit keys to nonzero 32-bit values, built for kvroute's block
// index: the keys are chained block hashes, and consecutive blocks of a chain usually
// have the same value (the same holder set), so the table stores them together as runs.
// Looking up a request's chain then costs one hash-table probe per run (the first block
// of each run the request enters) plus a sequential comparison of the request's hashes
// with the run's array (see [Span]), instead of one cache miss per block.
//
// Layout:
//   - Runs: records {keys array, live range [lo, len), value, touch stamp, parent and next
//     hints}, at most MaxRun keys each. A key's value is its run's value; its touch stamp
//     (last use, for sampled-LRU eviction) is its run's.
//   - Slots: 1024 shards chosen by the top 10 bits of a seeded mix of the key, each an
//     open-addressing array of 8-byte slots {run id (32 bits), offset in the run's array
//     (12 bits), low 20 bits of the key's mixed hash} with linear probing in Robin Hood
//     order and backward-shift deletion. The key itself is not in the slot: a probe
//     compares the 20 hash bits and then the key in the run's array, so a block costs 8
//     bytes of slot (at 60 to 75% load once large: shards fill to 3/4 and grow by a
//     quarter) plus 8 bytes in its run's array.
//
// Maintenance: a key inserted with its parent (the previous block of its chain) appends
// to the run its parent ends when the values agree. Changing one key's value isolates it
// (its run splits in up to three, moving the shorter parts, at most MaxRun/2 slots
// rewritten), then merges it with the run ending with its parent and the run starting
// with its child when they have the new value, so a chain whose blocks change value one
// at a time, in any order, ends in as few runs as one stored at once. Deleting the first
// or last key of a run is O(1); in the middle it splits the run. Arrays that become
// mostly dead space are repacked.
//
// Why runs and not a radix tree: a radix tree also stores chains as compressed paths, but
// finding where a request enters it and every holder change in the middle of a path walk
// pointers; here every block is one probe away (BlockRemoved, a holder change and an
// eviction address single blocks) and a lookup walks arrays. The per-key cost is 16 bytes
// plus load slack, against 16 bytes plus slack for a plain hash table of {key, value}.
//
// Invariants (checked by [Table.Check] in the tests):
//   - Every key of every live run has exactly one slot, naming its run and offset and
//     reachable from its home position without crossing an empty slot; every occupied
//     slot names a live key.
//   - Runs are non-empty, hold at most MaxRun keys and have a nonzero value; their arrays
//     have fewer than 4096 slots (offsets fit 12 bits).
//   - Only values are semantics: the chain order inside runs and the parent/next hints
//     only make Span longer; a wrong hint never makes a key report another value.
//
// Concurrency: a Table is not safe for concurrent mutation. Any number of goroutines may
// call Get, Span and Pos while no goroutine mutates; the touch stamp Span returns may be
// updated with sync/atomic by those readers (the index holds its read lock for this).
package runtable
