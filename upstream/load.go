package upstream

import (
	"container/heap"
	"sync/atomic"
	"time"
)

// Load is one request's share of a worker's load as this router accounts it: one
// request in flight, its prompt tokens not yet prefilled, and the KV blocks it holds.
// The router adds it when it routes ([Worker.Begin]), marks the prefill done at the first
// token ([Load.FirstToken]) and removes it at completion, cancel or error ([Load.End]).
// Entries still open after their lifetime (a bug, or a lost completion) are expired by
// the pool's loop, so the bookkeeping cannot drift for good. Methods are safe for
// concurrent use and idempotent.
type Load struct {
	w        *Worker
	prefill  int64
	blocks   int64
	begun    time.Time
	deadline time.Time
	state    atomic.Uint32 // loadActive, loadDecoding, loadEnded
	// estimateIdx is the load's index in the worker's estimates plus one (0: not in
	// them), under the worker's loadMu; an int32 beside state keeps Load in 112 bytes.
	estimateIdx int32
	// estimateAt is when the prefill of a request whose first token cannot be seen is
	// taken as done (unix ns, set by EstimateFirstToken under the worker's loadMu; 0:
	// not estimated).
	estimateAt int64
	// ended is called once the load has ended (see BeginNotify); nil for none.
	ended func()
	// prev and next link the worker's open loads (loadList), under its loadMu; nil
	// once the load has left the list.
	prev, next *Load
}

// loadList is a worker's open loads, an intrusive doubly linked list guarded by the
// worker's loadMu: a request adds and removes its entry in O(1) without allocating, and
// a sweep (the pool loop's expiry) costs the loads open now. It was a map, and a Go map
// keeps the buckets of its largest size: after an overload every sweep iterated the
// overload's capacity. In a perf profile of round_robin at 8.7k req/s, taken after
// overloaded windows, the sweeps (then of the estimates too, now a heap) were 8% of
// kvroute's CPU; BenchmarkSettleSweep (16 loads open after a burst of 10,000,
// 2026-12-07, load average 2.5) 3.9 us per sweep with the map, 26 ns with the list.
// The zero value is an empty list.
type loadList struct{ head Load }

func (ll *loadList) push(l *Load) {
	if ll.head.next == nil {
		ll.head.next, ll.head.prev = &ll.head, &ll.head
	}
	l.prev, l.next = ll.head.prev, &ll.head
	ll.head.prev.next = l
	ll.head.prev = l
}

// remove takes l out of the list; it reports false when l was not in it.
func (ll *loadList) remove(l *Load) bool {
	if l.next == nil {
		return false
	}
	l.prev.next, l.next.prev = l.next, l.prev
	l.prev, l.next = nil, nil
	return true
}

// all yields the open loads; the caller holds loadMu and does not change the list.
func (ll *loadList) all(yield func(*Load) bool) {
	if ll.head.next == nil {
		return
	}
	for l := ll.head.next; l != &ll.head; l = l.next {
		if !yield(l) {
			return
		}
	}
}

// len counts the open loads (for tests); the caller holds loadMu.
func (ll *loadList) len() int {
	n := 0
	for range ll.all {
		n++
	}
	return n
}

const (
	loadActive uint32 = iota
	loadDecoding
	loadEnded
)

// Begin counts a request on the worker: in flight, prefillTokens of prompt to prefill and
// blocks of KV cache held, for at most lifetime. The returned Load must be ended.
func (w *Worker) Begin(prefillTokens, blocks int64, lifetime time.Duration) *Load {
	return w.BeginNotify(prefillTokens, blocks, lifetime, nil)
}

// BeginNotify is [Worker.Begin] with ended, when not nil, called once the load has
// ended (by [Load.End] or by expiry), in the goroutine that ended it, after the worker's
// counters no longer include it: the router's wait queue learns from it that a slot is
// free. ended must be quick and must not block.
func (w *Worker) BeginNotify(prefillTokens, blocks int64, lifetime time.Duration, ended func()) *Load {
	now := time.Now()
	l := &Load{w: w, prefill: prefillTokens, blocks: blocks, begun: now, deadline: now.Add(lifetime), ended: ended}
	w.inFlight.Add(1)
	w.lastRouted.Store(now.UnixNano())
	w.pendingPrefill.Add(prefillTokens)
	w.activeBlocks.Add(blocks)
	w.loadMu.Lock()
	w.loads.push(l)
	w.loadMu.Unlock()
	return l
}

// FirstToken marks the request's prefill done, as seen on the response: its prompt
// tokens stop counting as pending prefill, and the time it took teaches the worker's
// prefill-speed estimate.
func (l *Load) FirstToken() {
	if l.prefillDone() {
		l.w.observePrefill(l.prefill, time.Since(l.begun))
	}
}

// EstimateFirstToken is for requests whose first token the router cannot see (a
// non-streaming response arrives whole at the end): their prefill stops counting as
// pending after the worker's estimated prefill time for it, instead of at completion,
// which would overstate the worker's queued prefill for the whole generation.
//
// No timer per request (a timer's insertion interrupts the network poller, a measurable
// share of a proxied request's CPU): the worker keeps the earliest estimate, and
// [Worker.PendingPrefillTokens] (or the pool's loop) settles the estimates that have
// passed when it finds that time gone.
func (l *Load) EstimateFirstToken() {
	w := l.w
	at := time.Now().UnixNano() + l.prefill*w.prefillNsPerToken.Load()
	w.loadMu.Lock()
	if l.next != nil { // still open
		l.estimateAt = at
		if l.estimateIdx == 0 {
			heap.Push(&w.estimates, l)
		} else {
			heap.Fix(&w.estimates, int(l.estimateIdx-1))
		}
		if n := w.nextEstimate.Load(); n == 0 || at < n {
			w.nextEstimate.Store(at)
		}
	}
	w.loadMu.Unlock()
}

// settleEvery bounds how often a worker's estimates are settled: at most once per
// millisecond, so that many requests in flight with estimates a few microseconds apart
// do not cost a settle on every read. An estimate is late by at
// most this much, against prefill times of milliseconds and more.
const settleEvery = int64(time.Millisecond)

// settleEstimates ends the estimated prefills due by now (unix ns) and keeps the
// earliest one still to come (or now + settleEvery if sooner). The estimates are a heap
// by time, so a settle costs the estimates due (log n each), not the loads open: it was
// a sweep of every open load, and under an overload, with thousands of non-streamed
// requests open, the sweeps were 4% of kvroute's CPU (perf, cache_aware, 2 KB chat
// offered at 10k req/s, more than kvroute serves on the 2-core VM, 2026-12-07).
// BenchmarkSettleSweep with 4,096 loads open: 8.2-8.5 us per settle with the sweep, 18
// ns with the heap; BenchmarkLoadLifecycle (a request's Begin, estimate and End) 267-282
// ns against 278-289 ns, the same within the noise.
func (w *Worker) settleEstimates(now int64) {
	var next int64
	w.loadMu.Lock()
	for len(w.estimates) > 0 {
		l := w.estimates[0]
		if l.estimateAt > now {
			next = l.estimateAt
			break
		}
		heap.Pop(&w.estimates)
		l.estimateAt = 0
		l.prefillDone()
	}
	if next != 0 && next < now+settleEvery {
		next = now + settleEvery
	}
	w.nextEstimate.Store(next)
	w.loadMu.Unlock()
}

func (l *Load) prefillDone() bool {
	if l.state.CompareAndSwap(loadActive, loadDecoding) {
		l.w.pendingPrefill.Add(-l.prefill)
		return true
	}
	return false
}

// minPrefillSample is the smallest prefill, in tokens, whose time teaches the estimate:
// below it the time is mostly queueing and overhead.
const minPrefillSample = 64

// defaultPrefillNsPerToken starts the estimate: 50 us per token (20k tokens/s), a
// mid-size model on one modern GPU.
const defaultPrefillNsPerToken = 50_000

// observePrefill folds one observed prefill (tokens in d) into the worker's estimate, an
// exponentially weighted moving average with weight 1/8.
func (w *Worker) observePrefill(tokens int64, d time.Duration) {
	if tokens < minPrefillSample {
		return
	}
	sample := int64(d) / tokens
	old := w.prefillNsPerToken.Load()
	w.prefillNsPerToken.Store(old + (sample-old)/8)
}

// PrefillNsPerToken returns the worker's estimated prefill time per uncached prompt
// token, learned from the first tokens of its streamed responses.
func (w *Worker) PrefillNsPerToken() int64 { return w.prefillNsPerToken.Load() }

// End removes the request from the worker's load.
func (l *Load) End() {
	prev := l.state.Swap(loadEnded)
	if prev == loadEnded {
		return
	}
	if prev == loadActive {
		l.w.pendingPrefill.Add(-l.prefill)
	}
	l.w.activeBlocks.Add(-l.blocks)
	l.w.inFlight.Add(-1)
	l.w.loadMu.Lock()
	l.w.loads.remove(l)
	if l.estimateIdx != 0 {
		heap.Remove(&l.w.estimates, int(l.estimateIdx-1))
		l.estimateAt = 0
	}
	l.w.loadMu.Unlock()
	if l.ended != nil {
		l.ended()
	}
}

// expireLoads ends the loads whose lifetime has passed and returns how many.
func (w *Worker) expireLoads(now time.Time) int {
	var stale []*Load
	w.settleEstimates(now.UnixNano())
	w.loadMu.Lock()
	for l := range w.loads.all {
		if now.After(l.deadline) {
			stale = append(stale, l)
		}
	}
	w.loadMu.Unlock()
	for _, l := range stale {
		l.End()
	}
	return len(stale)
}

// PendingPrefillTokens returns the prompt tokens routed to the worker by this router
// that have not produced a first token yet (nor reached their estimated first token,
// see [Load.EstimateFirstToken]).
func (w *Worker) PendingPrefillTokens() int64 {
	if next := w.nextEstimate.Load(); next != 0 {
		if now := time.Now().UnixNano(); now >= next {
			w.settleEstimates(now)
		}
	}
	return w.pendingPrefill.Load()
}

// ActiveBlocks returns the KV blocks held by the requests this router has in flight on
// the worker.
func (w *Worker) ActiveBlocks() int64 { return w.activeBlocks.Load() }

// LastRouted returns when the router last counted a request on the worker
// ([Worker.Begin]); zero before the first. The KV-event staleness bound reads it: a
// worker that received requests after its feed's last event is serving. One atomic load.
func (w *Worker) LastRouted() time.Time {
	if ns := w.lastRouted.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// estimateHeap is a worker's open loads with an estimated first token, a min-heap by
// estimateAt (container/heap), guarded by the worker's loadMu.
type estimateHeap []*Load

func (h estimateHeap) Len() int           { return len(h) }
func (h estimateHeap) Less(i, j int) bool { return h[i].estimateAt < h[j].estimateAt }
func (h estimateHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].estimateIdx, h[j].estimateIdx = int32(i+1), int32(j+1)
}

func (h *estimateHeap) Push(x any) {
	l := x.(*Load) //nolint:forcetypeassert // the heap's only type
	l.estimateIdx = int32(len(*h) + 1)
	*h = append(*h, l)
}

func (h *estimateHeap) Pop() any {
	old := *h
	l := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	l.estimateIdx = 0
	return l
}
