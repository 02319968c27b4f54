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
