// Package admin is kvroute's admin JSON API and dashboard page.
//
// [New] returns an http.Handler that the router serves on its admin listener
// (admin.listen, default 127.0.0.1:9090) and/or on the main listener under
// admin.path_prefix. It reads everything through a [Backend] the composition root
// (cmd/stack) fills in: the router's traffic through [TrafficSource] (the router's Server
// implements it), its decisions through [DecisionSource]. This package defines the view
// types and the interfaces, so it does not import the router.
//
// Endpoints (paths relative to the mount point):
//
//	GET  /                          the dashboard page (assets embedded, no CDN)
//	GET  /assets/{file}             its script and style sheet
//	GET  /api/overview              everything the page polls each second, in one answer
//	GET  /api/workers               every worker (see WorkerView)
//	GET  /api/workers/{id}          one worker, with its per-second traffic series
//	GET  /api/stats                 windowed traffic figures, tokenizer mode and errors
//	GET  /api/decisions?n=50        recent routing decisions with cost breakdown (n <= 256)
//	GET  /api/prefixes?n=20         hottest shared prefixes and their holders
//	POST /api/workers/{id}/drain    stop routing new requests to the worker
//	POST /api/workers/{id}/undrain  route to it again
//	POST /api/workers/{id}/clear    drop the worker's prefix-index entries
//	POST /api/reload                re-read the config file; says what was applied
//	POST /api/index/query           which workers hold how much of a request's prefix (index.go)
//	GET  /api/index/snapshot        the index in its versioned dump format
//	POST /api/index/restore         install a snapshot (all or nothing)
//
// Invariants:
//   - Auth: when Options.RequireToken is set (the listener is not loopback) every
//     request needs the token, as "Authorization: Bearer TOKEN" or the cookie the page
//     sets after "GET /?token=TOKEN". Write actions (POST) always need the bearer header
//     (never the cookie, so another site cannot make a browser post them), and are
//     refused with 403 when no token is configured at all. POST /api/index/query is a
//     read (it changes nothing): it follows the GET rules.
//   - Errors are JSON: {"error": "..."} with a 4xx/5xx status; the index endpoints, whose
//     clients are other schedulers, answer OpenAI-shaped errors
//     ({"error":{"message","type","param","code"}}, one status map: indexStatus).
//   - The index query is answered by the router's own hashing path ([IndexQuerier],
//     implemented by the router's Server), so it agrees with the router's decisions.
//   - The handler never blocks on the request path of the router: it reads snapshots.
package admin
