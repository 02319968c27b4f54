// Package scrape reads the engines' own view of their load and KV cache from their
// Prometheus /metrics endpoints, for the cache-aware policy: the block size (which must
// equal the router's hashing block size), the cache capacity, the running and waiting
// queues, the KV-cache usage and the prefix-cache counters.
//
// [Parse] turns one vLLM or SGLang exposition into a [Sample]. It is a hand-written line
// parser rather than prometheus/common's expfmt: it builds no metric families, reads
// only the dozen metrics it needs, accepts OpenMetrics bodies as well as the classic
// text format, and is checked against expfmt by the tests (BenchmarkParse and
// BenchmarkParseExpfmt measure the difference).
//
// A [Scraper] polls a changing set of targets on an interval and reports every result
// through a callback. It uses net/http rather than fasthttp: a scrape is cancelled the
// moment its context ends (fasthttp's client only takes a deadline), gzip bodies are
// decoded transparently, and at one request per worker per interval the client's cost
// is small next to parsing (BenchmarkScrape measures both together).
//
// Invariants:
//   - Parse never panics and keeps no reference to its input; a returned Sample's
//     values are finite and non-negative, KVUsage is in [0, 1], and an error names the
//     offending line.
//   - Series of one metric (per model_name, per data-parallel engine) are summed, except
//     KV usage, which is their mean; vLLM's deprecated names are read only when the
//     current ones are absent.
//   - A Scraper never has two requests in flight for the same target: a target still
//     being scraped when its next round comes is skipped that round. Callbacks for one
//     target never run concurrently; callbacks for different targets may.
//   - Every goroutine a Scraper starts ends when the context given to [Scraper.Run]
//     ends, and Run returns only after they have.
package scrape
