// Package valkeyindex keeps the router's prefix index in a Valkey or Redis server
// (index.backend: valkey), so that several routers and standalone indexers (kvroute
// indexer) pointed at the same server and key prefix match against one shared copy:
// each process writes what its own event feeds and routing decisions say, and every
// Match sees everything every process wrote. It needs Redis 7 (EVAL_RO, RESP3) or
// any Valkey; the client is github.com/valkey-io/valkey-go, which works with both.
//
// # Design
//
// An [Index] embeds an in-memory *indexer.Index (the process's own part: the events of
// the workers it ingests and its own predictions), told of every entry change through
// indexer.Mirror. The changes are queued and written in the background by Run, in
// pipelined batches of up to 512 changes per script call. Match is one MGET: the
// request's block values, the slot epochs and the slot table's version, read in one
// atomic step; the client computes the per-worker answer (leading blocks, confirmed
// blocks, tier-weighted score) from those bytes. The server's cost is one key lookup per
// block and no script; the client's is a pass over the block values, which skips a block
// whose value is byte-equal to the one before (a chain stored or predicted in one go, so
// for long shared prefixes most of them), much as the in-memory index pays per run. The
// local index does the event semantics (parent resolution, reference counts per engine
// hash and tier, token-less CPU stores, clears that keep predictions), so the shared copy
// answers exactly what an in-memory index would for the same events
// (TestMatchEqualsInMemory compares them over random event streams).
//
// Why not the server-side walk of the first version (a read-only Lua script doing an
// HMGET of two fields per still-open worker per block, returning only the answer): its
// cost was blocks times workers field lookups plus Lua tables: a Match p50 of 26 to 44
// ms for a 512-block request on 64 workers against 0.37 to 0.40 ms for this layout,
// measured in alternation on the same loaded machine (bench/RESULTS.md, "Shared index
// in Valkey (issue 19)"). What this layout pays instead is reply size: 5 bytes per
// (worker, block) entry of the blocks read, 83 kB for that request, which is most of the
// server's 200 us per MGET there. Fixed 11-byte entries (every entry with room for a
// prediction) made it 180 kB, with 240 to 290 us of server time and a p50 of 0.5 ms (an
// earlier run of the same benchmark, load average 17 to 23), and an MGET of 512 values
// of 704 bytes took the server 264 us against 81 us for 320 bytes and 38 us for 11
// (load average 6): the reply's size is the cost, hence the variable-size entries.
//
// # Key layout
//
// With the prefix P (index.valkey.prefix, default "kvroute:"):
//
//	P k:<8-byte big-endian own hash>  string: one entry per worker (slot) holding the block:
//	    slot        uint16            the worker's slot
//	    flags       uint8             tier flags in the low 4 bits (1<<tier: GPU 1, CPU 2, disk 4,
//	                                  other 8); 0x80: the entry has a prediction
//	    ev epoch    uint16            only with tier flags: the slot's events epoch when they were written
//	    pred epoch  uint16            only with 0x80: the slot's prediction epoch when it was written
//	    pred expiry uint32            only with 0x80: unix seconds (rounded up)
//	P epochs                          string: per slot, events epoch and prediction epoch (uint16 each); 0 0: not in use
//	P slot                            hash: worker ("<dp rank>:<id>") -> slot
//	P slotw                           hash: slot -> worker
//	P slotver                         string: the slot table's version, a new value whenever it changes
//	P slotvern, P slotnext            counters: of versions, of fresh slots handed out
//	P slotfree                        list: freed slots
//
// All integers are big-endian. Block keys carry kvroute's own chained hash, which
// already covers model, LoRA and cache_salt, so one prefix serves every model of a
// fleet. A worker gets a slot the first time a process writes something for it; the
// write script allocates it (a freed one first) and changes the slot table's version.
// Match caches the slot table with its version and reads it again (a second round trip)
// only when the version in the MGET differs. The version is the server's time and a
// counter, so a table rebuilt after a flush or a restart of an empty server never
// carries a version a client cached. Entries are appended in write order; a worker has
// at most one per block value.
//
// # Epochs
//
// An entry's tier flags count only while the slot's events epoch equals the one in the
// entry, its prediction only while the prediction epochs are equal and the expiry is
// after the Matching process's clock. A clear of a worker (engine restart,
// AllBlocksCleared, a feed gap: ClearWorker) deletes the entries the process knows of
// and then bumps both of the slot's epochs; a feed's first batch (ClearEvents) bumps
// only the events epoch, so predictions stay; a removed worker (RemoveWorker) has both
// bumped and its slot freed, and the next new worker gets it: the bumped epochs make
// every entry left in a block value invisible to the new worker as to the old one. A
// bump makes every older entry of the worker invisible at once, including those no
// process knows of any more: written by a router that restarted since, or whose deletion
// was lost during an outage. Every write of a block value drops its invisible entries
// (stale epochs, expired predictions); values never written again stay until they expire
// or are evicted: run the server with maxmemory and maxmemory-policy allkeys-lru (the
// index is a cache: an evicted key is a missed prefix, never a wrong answer). Epochs are
// 16 bits: a slot whose epoch would pass 65535 is retired (epochs 0, which no entry
// carries; never handed out again) and its worker gets a fresh slot at its next write,
// so old entries never count again by wrapping. Slots are uint16: after 65,536 fresh
// slots (new workers beyond the freed slots, and retirements) the write script fails
// and the prefix must be flushed.
//
// # TTLs
//
// A prediction's entry holds its expiry: Match ignores it from then on, whatever the
// process that wrote it does. A block value with tier flags has no TTL; one with
// predictions only expires with its latest prediction (set at each write, relative to
// the writing process's clock), so the predictions of a router that died do not stay;
// an empty one is deleted. Prediction expiry is compared with the Matching process's
// clock: routers sharing a server need clocks in sync to well under the prediction TTL
// (120 s by default).
//
// # Outage
//
// When a Match fails or takes longer than index.valkey.timeout (50 ms), the request is
// matched on the process's own index, and the server is considered down: routing goes
// on with the events this process ingests, its own predictions and load, and no request
// fails because of the server. Errors are counted in
// kvroute_index_backend_errors_total{op="match"|"write"|"resync"|"connect"} and logged at
// most once every 10 s with the count since the last line. Writes queued meanwhile are
// dropped (the queue is bounded). Run pings the server every second; once it answers,
// the process rewrites its part: for each worker whose events it applies a bump of the
// worker's events epoch and every entry, and its own live predictions; then Match uses
// the server again. What is lost: the predictions other processes made before or
// during the outage, until they rewrite theirs (each one does once it reconnects), and
// when the server restarted empty, the entries of workers whose events only a process
// that is gone applied.
//
// # Several writers for one worker
//
// Two processes that both consume a worker's events write the same fields: the writes
// are states, not increments, so duplicates are harmless; a clear by one bumps the
// epoch for both (the other's fields of that worker are dropped and rewritten by its
// next events for them). A process that only predicts for a worker never writes its tier
// fields.
//
// # Memory and cost
//
// Each process that ingests events keeps its own index for those workers (the
// in-memory index's per-entry cost, see package indexer); a router that only predicts
// keeps its predictions. On the server, a (worker, block) entry is 5 bytes in its block
// value (11 with a prediction), plus the key's own overhead (about 60 to 90 bytes per block key, whatever the
// number of holders); the slot table is a few dozen bytes per worker. A write of an
// entry reads and rewrites its block value in the write script (cost linear in the
// holders of that block). Match costs the server one lookup per request block (MGET;
// a block no worker holds is a missing key) and sends back every entry of the blocks
// read: 5 to 11 bytes per holder per block; the client decodes them in one pass,
// skipping a value equal to the one before. A request is cut to the blocks whose values
// would fit in 16 MiB with every slot in use holding them with a prediction (8192
// blocks, MaxMatchBlocks, up to 186 workers), so a reply stays bounded on large fleets.
// See bench/RESULTS.md, "Shared index in Valkey (issue 19)", for the figures.
package valkeyindex
