// Package dns is the discovery source that finds workers in DNS (configs.DNSDiscovery):
// the addresses of a name for Docker Compose services and headless Kubernetes services
// (type A), or the targets and ports of its SRV records for Consul and Nomad (type
// SRV).
//
// # Lookups
//
// [Source.Run] looks the name up at once and then every interval, each lookup bounded
// by the timeout (for type SRV the timeout covers the SRV query and the resolution of
// every target). It uses the standard library's resolver in its pure-Go form
// (net.Resolver with PreferGo), so /etc/resolv.conf's search list and ndots apply to a
// name without a trailing dot and /etc/hosts is read first, as for any lookup on the
// host; give a fully qualified name ("vllm.default.svc.cluster.local.") to ask for
// exactly that name. With a server configured, every query the resolver would send to
// the servers of resolv.conf goes to that host:port instead, over UDP and over TCP
// when an answer is truncated.
//
//   - Type A (and its alias AAAA) asks for the A and AAAA records of the name: one
//     member per address, on the configured port, with id "IP:PORT" ("[IPv6]:PORT").
//   - Type SRV asks for the SRV records of the name and resolves every target to its
//     addresses: one member per address and record port, id as for type A. Priority
//     and weight are ignored (every target is a worker; the router balances by its own
//     scores), and a target that appears in several records or resolves to an address
//     another target has is one member per distinct address and port.
//
// Every member is Ready: DNS has no notion of readiness (the pool's own health checks
// decide whether a worker takes requests).
//
// # Invariants
//
//   - update gets the full view, sorted by worker id, and only when the set of ids
//     differs from the last view reported; the first view is reported at the first
//     lookup that gives one. The worker of an id is a function of the id and the
//     template, so equal ids mean equal members.
//   - update is never called with an empty view, and never because of an error.
//   - A record that names no usable worker is skipped, never fatal: an address no
//     worker can have (unspecified, 0.0.0.0/8, multicast, broadcast, IPv6 link-local,
//     which needs a zone DNS cannot give), an SRV record with port 0, an SRV target
//     "." or one with no addresses (reason bad_address or bad_port), and a worker that
//     fails configs.ValidateWorker (reason invalid_worker). Each is counted at every
//     lookup that sees it and logged at warn when it first appears in an answer, not
//     again while it stays (so the memory for it is bounded by one answer).
//   - A lookup that fails (timeout, SERVFAIL, refused, an unreachable server) keeps the
//     last view: no update call. It is counted as result="error" and logged at warn on
//     the first failure of a streak (and when the cause changes), at debug after, and
//     at info when lookups answer again. The resolver runs with StrictErrors, so an
//     A+AAAA lookup with one half failing fails as a whole instead of dropping every
//     worker of the other family; an SRV lookup whose target cannot be resolved for a
//     reason other than "no such host" fails as a whole for the same reason.
//
// # No records
//
// A name with no records (NXDOMAIN, or an answer without records of the type) also
// keeps the last view, counted as result="error" and logged like a failure, and so does
// an answer whose every record was skipped. This is a choice: DNS cannot tell "zero
// workers" from "the records are being replaced", and the second is the common case.
// Docker Compose's embedded DNS drops a service's name while its containers are
// recreated; CoreDNS and kube-dns answer NXDOMAIN for a Kubernetes headless service
// none of whose pods is ready (kubernetes/dns issue 234 and PR 245, which made it the
// DNS spec), which a rolling restart or a readiness probe failing on every pod at once
// (an overloaded fleet) produces. Resolvers also cache that negative answer for the zone's SOA minimum (RFC 2308
// section 5), stretching a blip into seconds or minutes. The costs are asymmetric:
// applying an empty view drains the whole fleet and the router refuses every request,
// while keeping a view whose workers are really gone costs nothing the pool's health
// checks do not already handle (they eject a worker that stops answering). Scaling a
// DNS-discovered fleet to zero therefore leaves the last workers in the pool, ejected
// by health checks, until the name has records again or the router restarts. At the
// first lookup there is no view to keep: nothing is reported until the name resolves.
//
// # Concurrency
//
// A [Source] is immutable after [New]; each Run keeps its state on its own goroutine
// and calls update from it, never concurrently. Run may be called again after it
// returned, but not twice at once.
//
// # Decoding
//
// The package decodes no outside input of its own: the DNS wire format is decoded by
// the standard library's resolver, and what the package checks (addresses, ports,
// workers) arrives typed (net.IP, uint16). There is therefore no fuzz test; the
// address checks are table-tested.
//
// # Metrics
//
// Through [discovery.Metrics], with source="dns":
// kvroute_discovery_lookups_total{result="ok|error"}, kvroute_discovery_members (the
// members in the last view reported) and
// kvroute_discovery_rejected_total{reason="bad_address|invalid_worker|bad_port"}.
package dns
