package router

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fakeDNS answers dpResolver's lookups from a table it can change, counting them.
type fakeDNS struct {
	mu      sync.Mutex
	answers map[string][]netip.Addr
	fail    error
	calls   int
}

func (f *fakeDNS) lookup(_ context.Context, host string) ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.fail != nil {
		return nil, f.fail
	}
	if a, ok := f.answers[host]; ok {
		return append([]netip.Addr(nil), a...), nil
	}
	return nil, errors.New("no such host")
}

func (f *fakeDNS) setFail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

func (f *fakeDNS) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func (f *fakeDNS) set(host string, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers[host] = nil
	for _, a := range addrs {
		f.answers[host] = append(f.answers[host], netip.MustParseAddr(a))
	}
}

// settle waits until r has no lookup in flight.
func (r *dpResolver) settle(t *testing.T) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		r.mu.Lock()
		busy := false
		for _, h := range r.hosts {
			busy = busy || h.busy
		}
		r.mu.Unlock()
		if !busy {
			return
		}
	}
	t.Fatal("a lookup never ended")
}

// The resolver: no address before the first answer, then the answer's first address;
// renewed in the background after dpResolveEvery; a failed renewal keeps the old
// addresses and is retried after dpResolveRetry; a failed connection moves the name on to
// its next address; gen counts the lookups; retain drops the names no worker has.
func TestDPResolver(t *testing.T) {
	dns := &fakeDNS{answers: map[string][]netip.Addr{}}
	dns.set("w", "10.0.0.1", "10.0.0.2")
	r := newDPResolver(slog.New(slog.NewTextHandler(io.Discard, nil)))
	r.lookup = dns.lookup
	t0 := time.Now()

	if _, ok := r.addr("w", t0); ok {
		t.Fatal("an address before the first answer")
	}
	r.settle(t)
	a, ok := r.addr("w", t0)
	if !ok || a != netip.MustParseAddr("10.0.0.1") || r.gen.Load() != 1 {
		t.Fatalf("addr %v %v, gen %d: want 10.0.0.1, gen 1", a, ok, r.gen.Load())
	}
	if dns.count() != 1 {
		t.Fatalf("%d lookups within dpResolveEvery, want 1", dns.count())
	}

	// A failed connection to the current address moves on, and has the name looked up
	// again at its next use; one to another address changes nothing.
	r.failed("w", netip.MustParseAddr("10.0.0.9"))
	if r.addr("w", t0); dns.count() != 1 {
		t.Fatal("a failed connection to an address not in use made a lookup")
	}
	r.failed("w", netip.MustParseAddr("10.0.0.1"))
	if a, _ := r.addr("w", t0); a != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("after a failed connection: %v, want 10.0.0.2", a)
	}
	r.settle(t)
	if dns.count() != 2 || r.gen.Load() != 2 {
		t.Fatalf("%d lookups after a failed connection, want 2", dns.count())
	}
	if a, _ := r.addr("w", t0); a != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("after the lookup of an unchanged answer: %v, want 10.0.0.2 kept", a)
	}

	// Due for renewal: the old address until the new answer, then the new one.
	dns.set("w", "10.0.0.3")
	later := time.Now().Add(dpResolveEvery + time.Second)
	if a, _ := r.addr("w", later); a != netip.MustParseAddr("10.0.0.2") {
		t.Fatalf("during the renewal: %v, want the old 10.0.0.2", a)
	}
	r.settle(t)
	if a, _ := r.addr("w", time.Now()); a != netip.MustParseAddr("10.0.0.3") || dns.count() != 3 {
		t.Fatalf("after the renewal: %v (%d lookups), want 10.0.0.3 (3)", a, dns.count())
	}

	// A failed renewal keeps the addresses and is retried after dpResolveRetry.
	dns.setFail(errors.New("server misbehaving"))
	much := time.Now().Add(2*dpResolveEvery + time.Second)
	r.addr("w", much)
	r.settle(t)
	if a, ok := r.addr("w", time.Now()); !ok || a != netip.MustParseAddr("10.0.0.3") {
		t.Fatalf("after a failed renewal: %v %v, want 10.0.0.3 kept", a, ok)
	}
	n := dns.count()
	r.addr("w", time.Now().Add(dpResolveRetry/2))
	r.settle(t)
	if dns.count() != n {
		t.Fatalf("looked up again %d times before dpResolveRetry", dns.count()-n)
	}
	r.addr("w", time.Now().Add(dpResolveRetry+time.Second))
	r.settle(t)
	if dns.count() != n+1 {
		t.Fatalf("%d lookups after dpResolveRetry, want 1", dns.count()-n)
	}
	if g := r.gen.Load(); g != 5 {
		t.Fatalf("gen %d after 5 lookups", g)
	}

	// A name no worker has any more is forgotten; the others are kept.
	dns.setFail(nil)
	dns.set("v", "10.0.1.1")
	r.addr("v", time.Now())
	r.settle(t)
	r.retain(map[string]bool{"v": true})
	r.mu.Lock()
	_, kept := r.hosts["w"]
	_, keptV := r.hosts["v"]
	r.mu.Unlock()
	if kept || !keptV {
		t.Fatalf("after retain(v): w kept %v, v kept %v", kept, keptV)
	}
}

// warm waits for the first answers, and no longer than its timeout.
func TestDPResolverWarm(t *testing.T) {
	dns := &fakeDNS{answers: map[string][]netip.Addr{}}
	dns.set("a", "10.0.0.1")
	block := make(chan struct{})
	r := newDPResolver(slog.New(slog.NewTextHandler(io.Discard, nil)))
	r.lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
		if host == "slow" {
			select {
			case <-block:
			case <-ctx.Done():
			}
		}
		return dns.lookup(ctx, host)
	}
	r.warm([]string{"a"}, 5*time.Second)
	if _, ok := r.addr("a", time.Now()); !ok {
		t.Fatal("warm returned before the answer")
	}
	start := time.Now()
	r.warm([]string{"a", "slow"}, 50*time.Millisecond)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("warm waited %v past its 50ms timeout", d)
	}
	close(block)
	r.settle(t)
}
