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
// pipelined batches of up to 512 changes per script call; Match asks the server in one
// round trip: a read-only Lua script walks the request's block keys and returns only
// the per-worker answer (blocks, confirmed blocks, blocks per flags value for the score
// with the process's tier weights), so the reply is bounded by the number of workers
// holding the first block (MaxWorkers, default 4096) times the 32 flag values. The local
// index does the event semantics (parent resolution, reference counts per engine hash
// and tier, token-less CPU stores, clears that keep predictions), so the shared copy
// answers exactly what an in-memory index would for the same events
// (TestMatchEqualsInMemory compares them over random event streams).
//
// # Key layout
//
// With the prefix P (index.valkey.prefix, default "kvroute:"):
//
//	P b:<8-byte big-endian own hash>   hash: one field per (worker, kind), and "#"
//	    "<ev epoch>t<rank>:<id>"       the worker's tier flags (1<<tier: GPU 1, CPU 2, disk 4, other 8)
//	    "<pred epoch>p<rank>:<id>"     the expiry (unix ms) of the worker's prediction
//	    "#"                            the number of tier fields: the key's TTL rule
//	P ev                               hash: worker -> events epoch (missing = 0)
//	P ep                               hash: worker -> prediction epoch (missing = 0)
//
// Block keys carry kvroute's own chained hash, which already covers model, LoRA and
// cache_salt, so one prefix serves every model of a fleet.
//
// # Epochs
//
// A field counts only when the epoch in its name is the worker's current one. A clear
// of a worker (engine restart, AllBlocksCleared, a feed gap: ClearWorker; a removed
// worker: RemoveWorker) deletes the fields the process knows of and then bumps both of
// the worker's epochs; a feed's first batch (ClearEvents) bumps only the events epoch,
// so predictions stay. A bump makes every older field of the worker invisible at once,
// including those no process knows of any more: written by a router that restarted
// since, or whose deletion was lost during an outage. Such fields stay in memory until
// their key expires or is evicted; run the server with maxmemory and
// maxmemory-policy allkeys-lru (the index is a cache: an evicted key is a missed
// prefix, never a wrong answer).
//
// # TTLs
//
// A prediction's field holds its expiry: Match ignores it from then on, whatever the
// process that wrote it does. A key with tier fields has no TTL; a key with predictions
// only expires with its latest prediction (or PredictedTTL after its last tier field
// went), so the predictions of a router that died do not stay. Prediction expiry is
// compared with the Matching process's clock: routers sharing a server need clocks in
// sync to well under the prediction TTL (120 s by default).
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
// keeps its predictions. On the server, a (worker, block) entry is one hash field
// (about 30 to 40 bytes with the field name) plus about 90 bytes per block key. Match
// runs one script per request, whose cost grows with the request's blocks times the
// workers holding them (an HMGET of two fields per open worker per block): see
// bench/RESULTS.md, "Shared index in Valkey (issue 19)".
package valkeyindex
