// Package stack is kvroute's composition root: it builds a router ([router.Server]) with
// everything it runs and runs it. [NewStack] builds, from one [configs.Config], the
// worker pool, the prefix index (and the routing history for
// cache_aware.affinity_weight), the prompt hasher of the configured tokenize modes
// (stack.go: newHasher), the KV-event source (ZMQ feeds through kvevents.Manager, or a
// NATS consumer) and its index sink, the replica sync, the metrics scraper and the HTTP
// server; [Stack.Run] starts them, serves, and drains; [Stack.RunIndexer] starts the
// same background parts and serves only the index API, /metrics and /health (kvroute
// indexer, indexer.go). snapshot.go keeps index.snapshot_file. admin.go wires the admin API
// (router/admin): its listener or its mount under admin.path_prefix, its backend, and
// config reload.
//
// Invariants:
//   - Nothing runs before [Stack.Run]; every goroutine Run starts ends before it returns,
//     and the closers (connections, the tokenizer client) run after them.
//   - Start order: the pool's first health checks, the index, the scraper, the snapshot
//     file's restore, the replica's warm start from a peer before the event feeds start (the restore replaces the
//     dumped workers' entries), then the feeds, the admin API, and the listener; ready
//     is called only once the listener serves.
//   - The index sink: a feed reset clears the worker's entries (a new feed keeps the
//     router's predictions), a removed feed removes the worker from the index.
//   - A busy admin port is logged and skipped, never stops routing; an admin listener
//     beyond loopback without a token is an error.
//   - A config reload applies only the cache_aware weights (a new policy swapped in
//     between two decisions, [router.Server.ReplacePolicy]); every other change is
//     reported as needing a restart, since the rest of the config is read without
//     synchronization on the request path.
//
// Users: cmd/kvroute (serve, demo, indexer), bench/report, bench/chaos, and the tests that need a
// whole router (here, router/admin, configs).
package stack
