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
//
// Invariants:
//   - Auth: when Options.RequireToken is set (the listener is not loopback) every
//     request needs the token, as "Authorization: Bearer TOKEN" or the cookie the page
//     sets after "GET /?token=TOKEN". Write actions (POST) always need the bearer header
//     (never the cookie, so another site cannot make a browser post them), and are
//     refused with 403 when no token is configured at all.
//   - Errors are JSON: {"error": "..."} with a 4xx/5xx status.
//   - The handler never blocks on the request path of the router: it reads snapshots.
package admin
