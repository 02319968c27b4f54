// Package indexer is the router's single source of truth about which worker holds which
// prefix: it applies every worker's KV-cache events (proto.Batch) and answers, for a
// request's chain of block hashes, how many leading blocks each worker holds.
//
// # Model
//
// Blocks are identified by kvroute's own chained hash (proto.ChainBlock over the token
// ids carried by BlockStored, seeded by proto.Seed(model, lora, cache_salt), the salt
// taken from vLLM's extra_keys when it can be told apart: see eventSalt), never by the
// engine's hash, which is not reproducible outside the engine. Because the hash is
// chained, one block hash names the whole prefix up to that block, so the index needs no
// tree of pointers: a table from block hash to "who holds it", walked along the request,
// gives each worker's leading overlap (the length of the run of leading blocks it holds).
// The table stores consecutive blocks of a chain with the same holders together (runs),
// so the walk costs one lookup per run, not per block. Each worker also has a table
// engine hash -> own hash (plus per-tier reference counts), used to resolve
// BlockRemoved, parent links and token-less stores.
//
// Event rules (see Apply): a store whose parent the worker never stored is dropped
// (Dynamo does the same: its hashes cannot be computed); a token-less store (CPU offload)
// resolves through the engine table or is dropped; duplicate stores and removes are
// reference counted per (worker, engine hash, tier); BlockRemoved leaves the children
// indexed, and Match stops at the gap; AllBlocksCleared, ClearWorker and RemoveWorker
// drop everything the worker had, predictions included; ClearEvents (a feed's first batch)
// drops the event-backed entries and keeps the predictions. Every dropped block is counted
// by reason. Data-parallel rank is part of a worker's identity (WorkerKey), and a batch's
// rank overrides the caller's.
//
// # Data structures
//
//   - Node table (package runtable): own hash -> holder-set id, stored as runs: a run is
//     an array of up to 1024 consecutive blocks of one chain with the same holder set,
//     plus one last-touch stamp; an 8-byte slot per block (run id, offset, 20 hash bits)
//     in 1024 linear-probing shards finds any block. Match looks up the request's first
//     block, then compares the following request hashes with the run's array (sequential
//     reads) and looks up again only where the run ends or the request leaves it. A
//     stored block whose parent ends a run with the same holders is appended to it; a
//     holder change in the middle of a run splits it (moving at most 512 slots) and
//     merges the changed block with neighbouring runs of its new set, so chains stay in
//     few runs whatever order their blocks change in (random-order and end-first changes
//     are tested to coalesce into one run).
//   - Holder sets (sets.go): hash-consed, immutable sorted lists of (worker id, tier and
//     prediction flags). A run (and every block) names its set by a 4-byte id; a chain
//     stored by the same workers shares one set. Match only recomputes the intersection
//     of candidate workers when the set id changes along the request, so a 512-block
//     request held by 64 workers costs a few lookups and a handful of merges, not
//     512 x 64 checks; and the per-block cost does not grow with the fleet (1024 workers
//     and more: ids are 24-bit).
//   - Engine tables (engtable.go): per worker, engine-hash fingerprint (48 bits) ->
//     {own hash, 4-bit refcount per tier}, 16-byte slots, open addressing, one probe
//     sequence per store.
//   - Predictions (predict.go): per worker own hash -> expiry, plus a min-heap of
//     expiries; a prediction is a flag on the block's holder entry (so a predicted chain
//     is a run like any other).
//   - Both hash tables fill to 7/8 and grow by a quarter once past 1024 slots (multiply-
//     shift placement, no power-of-two sizes), so a large table is always 70 to 87.5%
//     full; doubling would leave it 44% full after every resize.
//
// Ingest warms slots in groups of 32 blocks (compute the slot addresses of the group,
// load them in a tight loop so that the cache misses overlap, then apply the blocks):
// Go has no prefetch instruction. The chained hash of a 16-token block is computed in
// one xxhash call over a stack buffer (chainBlock, equal to proto.ChainBlock by test).
//
// Why not a radix tree. A literal radix tree over the hash chain (github.com/armon/go-radix
// keyed by the concatenated hashes, as in the design card) must be given the full path
// of every block it inserts, but events only give the parent's engine hash, so the path
// has to be kept per block, and go-radix stores each leaf's full key: memory grows with
// the square of the chain length (BenchmarkRadixComparison/goradix-path: 4,409 bytes per
// block at 20k blocks). Keyed by each block's hash alone (goradix-flat), go-radix is a
// slower hash map: a pointer chase per byte-level node instead of one probe. What a
// compressed tree does well, walking a long shared prefix with sequential reads, the
// runs do too, while every single block stays one probe away for the events that name
// single blocks (BlockRemoved, a holder change, eviction). BenchmarkRadixComparison (64
// workers, 512-block requests, 100k blocks; CPU per Match; AMD EPYC VM, Go 1.26.8,
// 2026-11-22, after this change / the previous per-block hash table, both measured in
// one session):
//
//	structure                       CPU per Match   p50       p99       bytes per block
//	runs (this package)             2.1 us          1.6 us    3.7 us    17-20 + holder entries
//	per-block hash table (before)   11.1 us         8.5 us    29.7 us   21-43 + holder entries
//	go-radix, key = block hash      277 us          274 us    422 us    -
//	go-radix, key = chain path      46 us           37 us     104 us    4,409
//
// # Invariants
//
//   - A node exists iff at least one worker has a flag on it; its set is never empty.
//   - Every tier flag of (worker, block) is backed by an engine entry of that worker with
//     that own hash and a nonzero refcount on that tier, and every prediction flag by an
//     entry of the worker's prediction map (checked by checkInvariants in the tests).
//     The converse can fail only after eviction: an evicted node leaves the engine
//     entries, so later removes still resolve.
//   - Per-worker per-tier block counts equal the number of nodes carrying the flag.
//   - A worker id is reused only after every flag of the previous owner is gone
//     (clears and removals are serialized by clearMu).
//   - Every block is in exactly one run, and a run's blocks all have the run's holder
//     set (runtable.Table.Check, called by checkInvariants in the tests).
//   - Bounds: at most Options.MaxBlocks nodes after every write (sampled-LRU eviction by
//     last store/match time of runs: the end of the oldest of 8 runs taken at random,
//     8 to 64 blocks at a time, so a chain is shortened from its end), at most
//     Options.MaxBlocksPerWorker engine entries per worker, at most Options.MaxPredicted
//     predictions.
//
// # Concurrency
//
// One RWMutex. Match takes the read lock and updates the last-touch stamps of the runs it
// walks with atomic stores, only when the (1 s) stamp changes, so concurrent matches of
// a hot prefix do not bounce cache lines. Writers hold the write lock for at most 256
// block operations at a time (a large batch or a worker clear releases and retakes it;
// one operation moves at most 512 slots of a split run), so a Match waits at most a few
// tens of microseconds behind ingest, and Go's RWMutex keeps a stream of readers from
// starving writers. Each worker's events must be applied in order by one goroutine (its
// event source); different workers may be applied concurrently.
//
// # Limits
//
//   - The own hash covers tokens, model, LoRA name and cache_salt only: multimodal
//     extra keys are not in it, so two requests with equal placeholder tokens but
//     different images match each other's blocks. The salt is recovered from a chain
//     root's extra keys when they hold nothing else besides the LoRA key (text-only
//     requests); engines that publish no extra_keys (vLLM before they were added, kvsim)
//     and salted multimodal requests are indexed unsalted, so a salted request (hashed
//     with its salt by the router) matches only its predictions there.
//   - KV-cache groups of hybrid models (group_idx) are reference counted together: a
//     block counts as held while any group holds it.
//   - Eviction is sampled LRU (Redis-style) over runs, not exact: a match or store
//     touches a whole run, including blocks past the point where the request left it.
//     After a node is evicted, the reference counts of a block stored under two engine
//     hashes of one worker may clear its flag one remove early.
//   - Runs only form along parent links the index sees: token-less stores (CPU offload)
//     and dumps written before this version (Restore of any version-1 dump works, but
//     older ones were not in chain order) build one run per block until holder changes
//     merge them, so matching such blocks costs a lookup each, as before runs.
//   - A reference count that reaches 15 saturates and never drops (the block then stays
//     until a clear, an eviction or the worker cap).
//   - Predictions are swept on every write and by Run; between sweeps Match may report
//     a prediction up to the sweep interval past its expiry.
//
// # Memory
//
// Per distinct block: one 8-byte slot (tables 70 to 87.5% full once large, so 9 to 11.5
// bytes) and 8 bytes in its run's array (arrays are sized to the stored event and
// repacked when mostly dead, so up to twice that after splits), plus a 56-byte run
// record per run. Per (block, worker) entry: one 16-byte engine slot (18 to 23 bytes),
// plus a share of the holder set (4 bytes per member, shared by every block with the
// same holders). Predictions cost about 21 bytes each (Go map) plus 24 bytes per heap
// item. Stats.MemoryBytes and kvroute_indexer_memory_bytes report the estimate;
// BenchmarkMemoryPerEntry compares it with the Go heap (within 1% for chains stored by
// one worker, 7% low for the 4-holder case, whose run arrays grow by copying).
//
// # Measurements
//
// The goals and Dynamo's published figures are side by side in bench/RESULTS.md,
// section "Indexer". Measured 2026-11-22 06:19-07:02 UTC on the project VM (AMD EPYC
// under KVM, 2 vCPUs, 32 MiB L3, Go 1.26.8), shared with other engineers' jobs (load
// average 1 to 10 during the runs; background fuzzers paused), this version and the
// previous one (per-block hash table, commit 564cfab) run alternately from built test
// binaries; cpu-ns/op and block-ops/cpu-s are process CPU time. Commands:
//
//	go test -run x -bench '^BenchmarkMatch10M$' -benchtime 20000x -count 3 ./indexer
//	go test -run x -bench 'ApplyMooncake|MemoryPerEntry' -benchtime 3x ./indexer
//	go test -run x -bench 'RadixComparison|MatchDuringIngest|^BenchmarkMatch$' -benchtime 20000x ./indexer
//
// The case, 512-block request, 64 workers, 10,000,384 indexed blocks in 29,298
// runs (BenchmarkMatch10M, 5 runs): p50 1.7 to 2.8 us, p99 3.0 to 3.9 us, 2.0 to 3.3 us
// CPU per Match (before: p50 33 to 37 us, p99 62 to 76 us): goal p99 <= 10 us met. The
// request enters 2 runs (the shared system prompt, the worker's conversation), so the
// cost is two lookups, 510 sequential hash comparisons and one holder-set merge.
//
// Match, 1M indexed blocks, half of each request a system prompt every worker holds, the
// other half held by one worker; CPU per call / p50 / p99, in microseconds; 0
// allocations (BenchmarkMatch):
//
//	workers  64 blocks          512 blocks          2048 blocks
//	8        0.39 / 0.28 / 0.60 0.71 / 0.56 / 1.5   2.0 / 1.7 / 3.8
//	64       1.7 / 1.4 / 2.2    2.1 / 1.7 / 4.0     3.5 / 3.1 / 5.1
//	512      14.1 / 10.6 / 34.1 13.4 / 11.1 / 31.0  16.7 / 13.1 / 36.9
//
// With 512 workers the cost is building and intersecting the 512-entry answer, not the
// lookups.
//
// Ingest, BenchmarkApplyMooncake (first 2000 requests of the Mooncake conversation
// trace, 8 workers with 131,072-block LRU caches, 1,453,856 block operations, 1,032,704
// blocks indexed at the end, fresh index each iteration so table growth is included):
// 2.1 to 3.2M block operations per CPU-second over 5 runs (before: 2.3 to 3.0M in the
// same session); at capacity (MaxBlocks 200k, nearly every new block evicts one) 2.0 to
// 2.8M over 3 runs (before 1.1 to 1.4M). Goal >= 10M/s per core: not met. Each stored block costs a
// chained xxhash of its 16 tokens (47 ns here) and a node-table and an engine-table
// access, each a cache miss that warming in groups of 32 only partly overlaps (in a KVM
// guest without huge pages, TLB misses are expensive); resizes take about a fifth of the
// CPU profile when ingest starts from an empty index (growing by a quarter, for the
// memory goal, resizes more often than doubling; an A/B of the two was within this
// machine's run-to-run noise of +-20%). Dynamo publishes > 10M events+requests/s and
// 170M block ops/s on 24 threads (about 7M per thread) for its "flash indexer".
//
// Memory (BenchmarkMemoryPerEntry, Go heap in use, whole index): 40.1 bytes per
// (block, worker) entry with one holder per block at 2^20 entries, 41.6 at 1.5 x 2^20
// (before: 64.1 and 53-54); 29.6 to 29.8 bytes per entry (119 per block) with 4 holders
// per block (before 40.1). Goal <= 48: met at both points; at the least full point of
// both tables (70%) a chain stored by one worker costs about 43 bytes per entry (22.9
// engine slot, 11.4 node slot, 8 in the run, under 1 for run records and sets).
//
// Under concurrent ingest (BenchmarkMatchDuringIngest, 2 matching goroutines and one
// ingest goroutine on the 2 shared cores, 1M blocks): Match p50 22 us, p99 118 us (three
// runnable goroutines on two cores: mostly waiting for a CPU), ingest 1.9M block ops/s
// meanwhile (before: p50 69 us, p99 294 us, 0.78M/s): neither side starves.
package indexer
