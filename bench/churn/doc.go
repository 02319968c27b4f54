// Package churn measures the fleet under churn (issue 17): a real router
// ([stack.Stack], policy cache_aware, KV events over ZMQ with replay) discovering kvsim
// pods through DNS (a loopback zone, [dnstest]) while an open-loop multi-turn chat load
// runs, and the scenario changes the records: a rolling restart of four workers, a
// scale-up from two to six, a scale-down from six to two.
//
// The pods are kvsim workers ([sim.StartWorker]) on 127.0.0.2-127.0.0.7, sharing one
// set of HTTP, event and replay ports ([sim.SharedPorts]) as the pods of one Deployment
// do, so the DNS answer alone says who is in the fleet.
//
// Each scenario reports what the clients saw over the whole run (sent, completed,
// clean errors, lost), how fast the changes took effect (a DNS record appearing to the
// first answer of its worker; a record disappearing to the index holding no entry for
// its worker), and the hit rate before, during and after the change, both as the
// workers report it (usage.prompt_tokens_details.cached_tokens over prompt tokens) and
// as the router predicted it (x-kvroute-cached-blocks).
//
// Invariants of the package itself: the load is open loop ([Run] sends each request at
// a time fixed in advance, waiting only for the previous turn of its conversation), so
// a slow router or a drain does not lower the offered load; [Run] never cancels a
// request it has sent; outcomes are classified by what reached the client
// ([chaos.Post]).
//
// A short version of each scenario runs in `go test ./bench/churn/`; the full one,
// which writes the table of bench/RESULTS.md, with scripts/churn.sh.
package churn
