// Package report runs kvbench's routing-policy comparison and writes its results.
//
// [Compare] replays one [workload.Workload] under each policy in turn, each time against
// a fresh kvsim fleet (empty caches) and a fresh in-process kvroute [stack.Stack], and
// measures per policy: the workers' hit rate (cached_tokens over prompt tokens, from
// kvsim Stats), client-side TTFT, inter-token and end-to-end latency percentiles, output
// tokens/s, the fleet's load (simulated busy time over wall time), load imbalance
// (max/mean of workers' in-flight requests, sampled) and the process's CPU time.
// With [Config.PD] (kvbench run --pd P:D) each policy runs twice side by side: aggregated
// serving on P+D workers of role both, then P prefill workers on 127.0.0.1 and D decode
// workers on 127.0.0.2 (127.0.0.1 where the host lacks it) behind a router with their
// roles and pd.protocol; the policy picks the prefill worker. A P/D run's hit rate is the
// prefill pool's (a decode worker counts its pulled tokens as cached), and the report adds
// a table of both runs' TTFT and ITL percentiles.
// [WriteDir] writes report.md, report.json and PNG plots drawn with the standard library's
// image and image/png, labelled with golang.org/x/image's basicfont.
//
// Invariants:
//   - Every policy sees byte-identical requests at identical offsets (the workload is
//     built once); only follow-up turns wait for their previous turn, whose finish time
//     depends on the policy.
//   - Latencies are wall-clock at the client; kvsim's modelled durations are multiplied
//     by its time scale, so a figure in modelled seconds is the wall figure divided by
//     the time scale (host scheduling noise is not divided).
//   - The router, the fleet and the load generator share one process, so the CPU figure
//     is their sum; policies differ only in the router's share.
//   - Peer policies (bench/policies) route through the same router, pool, index and
//     scraped metrics as kvroute's own, with only the selector swapped.
package report
