package router

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Worker host names on the event loop. A loop connects with non-blocking system calls
// and cannot wait for a DNS answer, so the names of the workers it reaches are looked up
// by a resolver the loops share, in goroutines, and kept:
//
//   - the data plane looks up every worker's name when it starts, waiting up to
//     dpResolveWarm, so a router started with named workers serves them from its loops
//     from its first request;
//   - a name first seen later (a worker added at run time) is looked up on first use;
//     until its first answer the loops hand their requests to the fasthttp server
//     (kvroute_router_dataplane_handoffs_total{reason="workers"}), which dials by name;
//   - an answer is used for dpResolveEvery, then looked up again in the background while
//     the loops go on with the old addresses (connections already open stay open, as
//     with the fasthttp client);
//   - a failed lookup keeps the addresses of the last answer and is tried again after
//     dpResolveRetry, logged at warn level;
//   - a name with several addresses is reached at the first; a connection to it that
//     fails moves the name on to the next, as net.Dialer tries them in order (the attempt
//     that failed is retried as any failed connection is, before its first byte), and
//     has the name looked up again at its next use;
//   - a name no worker of the pool has any more is forgotten when a loop sees the pool
//     change (retain), so the resolver's memory follows the fleet.

// dpResolveEvery is how long a loop uses a host name's answer before looking it up again:
// the fasthttp client's DNS cache keeps an answer a minute (fasthttp.TCPDialer), this is
// half.
const dpResolveEvery = 30 * time.Second

// dpResolveRetry is how soon a failed lookup is tried again.
const dpResolveRetry = 5 * time.Second

// dpResolveWarm bounds the wait for the workers' first lookups when the data plane starts.
const dpResolveWarm = 2 * time.Second

// dpResolveTimeout bounds one lookup.
const dpResolveTimeout = 5 * time.Second

// dpResolver looks up worker host names for the loops and keeps the answers. Safe for
// concurrent use.
type dpResolver struct {
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)
	retry  time.Duration // dpResolveRetry
	log    *slog.Logger
	// gen counts the lookups that ended: a loop checks again which workers it can serve
	// when it has changed.
	gen atomic.Uint64

	mu    sync.Mutex
	hosts map[string]*dpHost
}

// dpHost is what the resolver knows of one name.
type dpHost struct {
	addrs []netip.Addr // the last answer; empty until one came
	cur   int          // the address connections go to, addrs[cur % len(addrs)]
	next  time.Time    // when to look the name up again
	busy  bool         // a lookup is in flight
}

func newDPResolver(log *slog.Logger) *dpResolver {
	return &dpResolver{lookup: func(ctx context.Context, host string) ([]netip.Addr, error) {
		return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	}, retry: dpResolveRetry, log: log, hosts: map[string]*dpHost{}}
}

// addr returns the address to connect to for host, ok false while no lookup has answered;
// it starts a lookup when the name is new or its answer is due for renewal.
func (r *dpResolver) addr(host string, now time.Time) (netip.Addr, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.hosts[host]
	if h == nil {
		h = &dpHost{}
		r.hosts[host] = h
	}
	if !h.busy && !now.Before(h.next) {
		h.busy = true
		go r.resolve(host, h)
	}
	if len(h.addrs) == 0 {
		return netip.Addr{}, false
	}
	return h.addrs[h.cur%len(h.addrs)], true
}

// resolve looks host up once and records the answer.
func (r *dpResolver) resolve(host string, h *dpHost) {
	ctx, cancel := context.WithTimeout(context.Background(), dpResolveTimeout)
	addrs, err := r.lookup(ctx, host)
	cancel()
	for i, a := range addrs {
		addrs[i] = a.Unmap()
	}
	now := time.Now()
	r.mu.Lock()
	h.busy = false
	if err == nil && len(addrs) > 0 {
		if !slices.Equal(addrs, h.addrs) {
			h.addrs, h.cur = addrs, 0
		}
		h.next = now.Add(dpResolveEvery)
	} else {
		h.next = now.Add(r.retry)
		r.log.Warn("event loop: worker host name not resolved", "host", host, "err", err, "kept", len(h.addrs))
	}
	r.mu.Unlock()
	r.gen.Add(1)
}

// retain forgets the names not in keep (a pool's worker names).
func (r *dpResolver) retain(keep map[string]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name := range r.hosts {
		if !keep[name] {
			delete(r.hosts, name) // a lookup in flight still ends on its own entry
		}
	}
}

// failed records that a connection to a, host's address, failed: the next connections
// go to its next address, and the name is looked up again at its next use (the worker
// may have moved: a pod restarted elsewhere).
func (r *dpResolver) failed(host string, a netip.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.hosts[host]
	if h == nil || len(h.addrs) == 0 || h.addrs[h.cur%len(h.addrs)] != a {
		return
	}
	h.cur++
	if !h.busy {
		h.next = time.Time{}
	}
}

// warm looks up hosts and waits until each has been answered or failed, or timeout has
// passed.
func (r *dpResolver) warm(hosts []string, timeout time.Duration) {
	for _, h := range hosts {
		r.addr(h, time.Now())
	}
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		r.mu.Lock()
		busy := false
		for _, h := range hosts {
			if e := r.hosts[h]; e != nil && e.busy {
				busy = true
			}
		}
		r.mu.Unlock()
		if !busy {
			return
		}
	}
}
