package upstream

import (
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
	deadline time.Time
	state    atomic.Uint32 // loadActive, loadDecoding, loadEnded
}

const (
	loadActive uint32 = iota
	loadDecoding
	loadEnded
)

// Begin counts a request on the worker: in flight, prefillTokens of prompt to prefill and
// blocks of KV cache held, for at most lifetime. The returned Load must be ended.
func (w *Worker) Begin(prefillTokens, blocks int64, lifetime time.Duration) *Load {
	l := &Load{w: w, prefill: prefillTokens, blocks: blocks, deadline: time.Now().Add(lifetime)}
	w.inFlight.Add(1)
	w.pendingPrefill.Add(prefillTokens)
	w.activeBlocks.Add(blocks)
	w.loadMu.Lock()
	w.loads[l] = struct{}{}
	w.loadMu.Unlock()
	return l
}

// FirstToken marks the request's prefill done: its prompt tokens stop counting as
// pending prefill.
func (l *Load) FirstToken() {
	if l.state.CompareAndSwap(loadActive, loadDecoding) {
		l.w.pendingPrefill.Add(-l.prefill)
	}
}

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
	delete(l.w.loads, l)
	l.w.loadMu.Unlock()
}

// expireLoads ends the loads whose lifetime has passed and returns how many.
func (w *Worker) expireLoads(now time.Time) int {
	var stale []*Load
	w.loadMu.Lock()
	for l := range w.loads {
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
// that have not produced a first token yet.
func (w *Worker) PendingPrefillTokens() int64 { return w.pendingPrefill.Load() }

// ActiveBlocks returns the KV blocks held by the requests this router has in flight on
// the worker.
func (w *Worker) ActiveBlocks() int64 { return w.activeBlocks.Load() }
