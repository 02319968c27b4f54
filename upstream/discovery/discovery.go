// Package discovery is the contract between the sources that find workers at run time
// (sub-packages dns and kubernetes) and the worker pool that applies what they find
// (upstream.Pool.Sync).
//
// A source reports its whole current view each time it changes: the pool adds the
// members it has not seen, drains and removes the ones that are gone, and drains (or
// undrains) the ones whose readiness changed. A source that loses its backend (a DNS
// server that stops answering, a Kubernetes API that goes away) reports nothing until
// it is back, so the pool keeps the last known fleet; it never reports an empty view
// because of an error.
package discovery

import (
	"context"
	"net/netip"

	"github.com/kvroute/kvroute/configs"
)

// Member is one worker a source found.
type Member struct {
	// Worker is the worker with its defaults filled ([configs.WorkerTemplate.Worker]);
	// its ID is stable for as long as the source sees the same worker (a pod name, an
	// address and port).
	Worker configs.Worker
	// Ready is false for a worker that exists but must take no new requests (a pod
	// whose Ready condition is false): it is drained, not removed.
	Ready bool
}

// Source finds workers. Run reports the source's full view through update each time
// it changes (and at least once when it first has one), never concurrently, until ctx
// ends; it returns nil when ctx ends and an error only when the source cannot start at
// all. update must not keep the slice.
type Source interface {
	// Name is the source's name in the workers' "source" field, logs and metrics:
	// "dns" or "kubernetes".
	Name() string
	Run(ctx context.Context, update func([]Member)) error
}

// thisNetwork is 0.0.0.0/8, "this host on this network" (RFC 1122 section 3.2.1.3): a
// source address only, never a destination.
var thisNetwork = netip.MustParsePrefix("0.0.0.0/8")

// Unusable returns why no worker can be reached at addr, or "" when one can: the one
// address check of every source (a DNS answer, a pod IP). addr must be unmapped (an
// IPv4-mapped IPv6 address is checked as IPv4 by its caller).
func Unusable(addr netip.Addr) string {
	switch {
	case !addr.IsValid():
		return "invalid address"
	case addr.Zone() != "":
		return "address with a zone"
	case addr.IsUnspecified():
		return "unspecified address"
	case addr.Is4() && thisNetwork.Contains(addr):
		return "\"this network\" address (0.0.0.0/8)"
	case addr.IsMulticast():
		return "multicast address"
	case addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "broadcast address"
	case addr.Is6() && addr.IsLinkLocalUnicast():
		return "IPv6 link-local address (no zone to reach it)"
	}
	return ""
}
