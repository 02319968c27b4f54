package upstream

import (
	"sync/atomic"
	"time"
)

// drainState is a worker's drain flag. A drained worker is not a routing candidate
// ([Pool.Candidates]) but keeps serving the requests already sent to it; its health
// checks, event feed and index entries carry on, so undraining it restores it at once
// with its cache intact.
type drainState struct {
	// since is when the worker was drained, in Unix nanoseconds; 0 when it is not.
	since atomic.Int64
}

// Drain stops routing new requests to the worker; requests in flight finish normally.
// It reports whether the worker was not drained before. Safe for concurrent use.
func (w *Worker) Drain() bool {
	return w.drain.since.CompareAndSwap(0, time.Now().UnixNano())
}

// Undrain makes the worker a routing candidate again (if it is available). It reports
// whether the worker was drained. Safe for concurrent use.
func (w *Worker) Undrain() bool {
	return w.drain.since.Swap(0) != 0
}

// Drained reports whether the worker is drained. One atomic load.
func (w *Worker) Drained() bool { return w.drain.since.Load() != 0 }

// DrainedSince returns when the worker was drained; the zero time when it is not.
func (w *Worker) DrainedSince() time.Time {
	if ns := w.drain.since.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}
