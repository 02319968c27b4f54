package router

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/upstream"
)

// This file is the wait queue (config section queue): a request that finds every
// available worker of its model full (filtered out by cache_aware.max_inflight or
// max_kv_usage) waits here for a free slot instead of failing, as in Dynamo
// (--router-queue-threshold) and the SGLang gateway (--queue-size). Issue #18.
//
// Order: priority classes, highest first, FIFO within a class; the order holds per model
// (a model whose workers are free is not held up behind another's waiters). Only the
// first waiter of a model in that order picks a worker; a newcomer of a model with
// waiters queues behind them instead of racing them for the freed slot.
//
// Dispatch: every load's end (upstream.Worker.BeginNotify) wakes the first waiter of each
// model in the queue; a waiter that got a worker wakes the next, in case there is room
// for it too, so a freed slot costs at most one failed pick and there is no thundering
// herd. The first waiter also retries every queuePoll, for the capacity that frees
// without a load ending (a KV cache that drains, a worker that joins, the other replicas'
// load), and every waiter checks as often that its client is still there.
//
// Cost while the fleet is not full: one atomic load (waitQueue.ahead) per request and
// one per load end (waitQueue.released).
//
// Memory: a queued request holds its body, counted in limits.max_inflight_body_bytes
// from its headers to its handler's end like any request in flight, so the queue adds
// at most max_size bodies of max_body_bytes, within that budget.

// Errors of the queue (statusOf maps them).
var (
	// errQueueFull is a full fleet with a full (or disabled) queue.
	errQueueFull = errors.New("every worker serving the model is at capacity and the router's queue is full: retry after the time in the Retry-After header")
	// errQueueTimeout is a request that waited queue.timeout without a worker freeing.
	errQueueTimeout = errors.New("every worker serving the model stayed at capacity for the router's queue timeout: retry after the time in the Retry-After header")
	// errPriority is an x-kvroute-priority header that names no class, or a class above
	// the API key's.
	errPriority = errors.New("invalid x-kvroute-priority header")
)

// priorityHeader names the request header that chooses a queue class.
const priorityHeader = "x-kvroute-priority"

// queuePoll is how often a waiter checks its client and the first waiter of a model
// retries its pick without being woken.
const queuePoll = 100 * time.Millisecond

// Why a request left the queue without a worker: the reason label of
// kvroute_router_queue_rejected_total.
const (
	queueFull = iota
	queueTimeout
	queueClientGone
	numQueueReasons
)

var queueReasonLabels = [numQueueReasons]string{"full", "timeout", "client_gone"}

// waitQueue is the router's queue of requests waiting for a worker. Safe for concurrent
// use; it must not be copied.
type waitQueue struct {
	max      int
	timeout  time.Duration
	classes  []string
	defClass int
	// keyClass is the class of each API key (gate.keys order), -1 for none; nil when
	// no key has one.
	keyClass []int
	// depth counts the queued requests: the one figure the request path reads while
	// the fleet is not full.
	depth atomic.Int64
	// meanWait is a moving average of the dispatched requests' waits, in nanoseconds,
	// for Retry-After.
	meanWait atomic.Int64
	// ended is released as a func value, made once so that a load does not allocate it.
	ended func()

	// mu guards lanes.
	mu sync.Mutex
	// lanes holds one FIFO of waiters per class, highest class first.
	lanes [][]*waiter

	depthG   []prometheus.Gauge
	waitH    []prometheus.Observer
	rejected [][numQueueReasons]prometheus.Counter
}

// waiter is one queued request.
type waiter struct {
	model string
	class int
	// picky is a retry: it excludes the workers it tried, so it may not be able to take
	// a slot the others could. It neither waits to be first nor holds the others back,
	// and every wake-up wakes it.
	picky bool
	since time.Time
	// wake is signalled (never blocking: capacity 1) when a slot may be free.
	wake chan struct{}
}

// newWaitQueue builds the queue of cfg and registers its metrics with reg.
func newWaitQueue(cfg *configs.Config, reg prometheus.Registerer) (*waitQueue, error) {
	qc := cfg.Queue
	q := &waitQueue{
		max: qc.MaxSize, timeout: qc.Timeout, classes: slices.Clone(qc.Classes), defClass: max(0, qc.ClassIndex(qc.DefaultClass)),
		lanes: make([][]*waiter, len(qc.Classes)),
	}
	q.ended = q.released
	for i, k := range cfg.Auth.Keys {
		if k.Priority == "" {
			continue
		}
		if q.keyClass == nil {
			q.keyClass = make([]int, len(cfg.Auth.Keys))
			for j := range q.keyClass {
				q.keyClass[j] = -1
			}
		}
		q.keyClass[i] = qc.ClassIndex(k.Priority)
	}
	depth := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kvroute_router_queue_depth",
		Help: "Requests waiting in the router's queue for a worker with a free slot, by priority class.",
	}, []string{"class"})
	wait := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "kvroute_router_queue_wait_seconds", Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14),
		Help: "Time requests spent in the router's queue, by priority class, whatever ended the wait (a worker, the timeout, the client leaving).",
	}, []string{"class"})
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kvroute_router_queue_rejected_total",
		Help: "Requests that found every worker at capacity and got no worker, by priority class and reason: full (the queue " +
			"was full or off: 429), timeout (queue.timeout passed: 429), client_gone (the client disconnected while queued).",
	}, []string{"class", "reason"})
	for _, c := range []prometheus.Collector{depth, wait, rejected} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register queue metrics: %w", err)
		}
	}
	for _, name := range q.classes {
		q.depthG = append(q.depthG, depth.WithLabelValues(name))
		q.waitH = append(q.waitH, wait.WithLabelValues(name))
		var r [numQueueReasons]prometheus.Counter
		for i := range r {
			r[i] = rejected.WithLabelValues(name, queueReasonLabels[i])
		}
		q.rejected = append(q.rejected, r)
	}
	return q, nil
}

// ahead reports whether requests for model are queued: a newcomer then queues behind
// them. One atomic load while the queue is empty.
func (q *waitQueue) ahead(model string) bool {
	if q.depth.Load() == 0 {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, lane := range q.lanes {
		for _, w := range lane {
			if w.model == model {
				return true
			}
		}
	}
	return false
}

// enter queues a request for model in class (picky for a retry); nil when the queue is
// full (or off).
func (q *waitQueue) enter(model string, class int, picky bool) *waiter {
	q.mu.Lock()
	defer q.mu.Unlock()
	if int(q.depth.Load()) >= q.max {
		return nil
	}
	w := &waiter{model: model, class: class, picky: picky, since: time.Now(), wake: make(chan struct{}, 1)}
	q.lanes[class] = append(q.lanes[class], w)
	q.depth.Add(1)
	q.depthG[class].Inc()
	return w
}

// leave removes w from the queue and records its wait; dispatched says it got a worker.
// It then wakes the new first waiters: the slot w got may not have been the only one,
// and a waiter that left without a worker may have been first.
func (q *waitQueue) leave(w *waiter, dispatched bool) {
	waited := time.Since(w.since)
	q.mu.Lock()
	lane := q.lanes[w.class]
	if i := slices.Index(lane, w); i >= 0 {
		q.lanes[w.class] = slices.Delete(lane, i, i+1)
		q.depth.Add(-1)
		q.depthG[w.class].Dec()
	}
	q.wakeFirstLocked()
	q.mu.Unlock()
	q.waitH[w.class].Observe(waited.Seconds())
	if dispatched {
		old := q.meanWait.Load()
		q.meanWait.Store(old + (int64(waited)-old)/8) // a lost race only skips a sample
	}
}

// first reports whether w may pick: it is the first waiter of its model that is not
// picky, or it is picky.
func (q *waitQueue) first(w *waiter) bool {
	if w.picky {
		return true
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, lane := range q.lanes {
		for _, o := range lane {
			if o.model == w.model && !o.picky {
				return o == w
			}
		}
	}
	return false
}

// released is called at the end of every load (a slot is free): it wakes the first
// waiter of each model. One atomic load while the queue is empty.
func (q *waitQueue) released() {
	if q.depth.Load() == 0 {
		return
	}
	q.mu.Lock()
	q.wakeFirstLocked()
	q.mu.Unlock()
}

// maxWakeModels bounds the models one wake-up visits: the first waiters of further
// models find their slots by polling (queuePoll).
const maxWakeModels = 8

// wakeFirstLocked signals the first waiter of each model, up to maxWakeModels, and the
// picky waiters before them. q.mu must be held.
func (q *waitQueue) wakeFirstLocked() {
	var seen [maxWakeModels]string
	n := 0
	for _, lane := range q.lanes {
		for _, w := range lane {
			if !w.picky && slices.Contains(seen[:n], w.model) {
				continue
			}
			select {
			case w.wake <- struct{}{}:
			default: // already signalled
			}
			if w.picky {
				continue
			}
			seen[n] = w.model
			if n++; n == maxWakeModels {
				return
			}
		}
	}
}

// reject counts a request of class that got no worker.
func (q *waitQueue) reject(class, reason int) { q.rejected[class][reason].Inc() }

// retryAfter is the Retry-After of a 429 from the queue, in seconds: the mean wait of
// the requests dispatched lately (what a retry would face), at least 1 and at most the
// queue timeout.
func (q *waitQueue) retryAfter() int64 {
	s := (time.Duration(q.meanWait.Load()) + time.Second - 1) / time.Second
	return int64(max(1, min(s, (q.timeout+time.Second-1)/time.Second)))
}

// priority returns the queue class of the request in ctx: its x-kvroute-priority
// header, else its API key's class, else queue.default_class. A header that names no
// class, or one above the key's, is an errPriority. It does not allocate unless it
// fails or an API key has a class (the key is then looked up again).
func (s *Server) priority(ctx *fasthttp.RequestCtx) (int, error) {
	q := s.queue
	keyClass := -1
	if q.keyClass != nil {
		if k, _ := s.gate.authenticate(&ctx.Request.Header); k >= 0 {
			keyClass = q.keyClass[k]
		}
	}
	v := headerFold(&ctx.Request.Header, priorityHeader)
	if len(v) == 0 {
		if keyClass >= 0 {
			return keyClass, nil
		}
		return q.defClass, nil
	}
	c := -1
	for i, name := range q.classes {
		if name == string(v) {
			c = i
			break
		}
	}
	switch {
	case c < 0:
		if len(v) > 64 {
			v = v[:64]
		}
		return 0, fmt.Errorf("%w: %q is not a priority class (%s)", errPriority, v, strings.Join(q.classes, ", "))
	case keyClass >= 0 && c < keyClass:
		return 0, fmt.Errorf("%w: %q is above the class of this API key, %q", errPriority, v, q.classes[keyClass])
	}
	return c, nil
}

// route chooses the worker of one attempt and begins its load: pick's choice, or, when
// every candidate is at capacity or requests of the model are already queued, the
// queue's. A nil worker with a nil error means no available worker serves the model at
// all. The error is errQueueFull, errQueueTimeout or errClientGone.
func (s *Server) route(ctx *fasthttp.RequestCtx, st *routeState, reqID string, attempt, class int) (*upstream.Worker, int, *upstream.Load, error) {
	w, overlap, load, wait := s.routeNow(st, reqID, attempt)
	if !wait {
		return w, overlap, load, nil
	}
	return s.await((*fasthttpClient)(ctx), st, reqID, attempt, class)
}

// routeNow is route without the queue: wait is true when the request must wait in it
// (every candidate is full, or requests of the model are queued already); the caller
// then calls await.
func (s *Server) routeNow(st *routeState, reqID string, attempt int) (w *upstream.Worker, overlap int, load *upstream.Load, wait bool) {
	if s.queue.ahead(st.req.Model) {
		return nil, 0, nil, true
	}
	t0 := time.Now()
	w, overlap = s.pick(st, reqID, attempt)
	s.metrics.decisions.Observe(time.Since(t0).Seconds())
	if w != nil {
		return w, overlap, s.beginLoad(w, st, overlap), false
	}
	return nil, 0, nil, st.guarded > 0
}

// waiterGone tells a queued request whether its client has gone.
type waiterGone interface{ gone() bool }

// fasthttpClient is a waiterGone for a request of the HTTP API.
type fasthttpClient fasthttp.RequestCtx

func (c *fasthttpClient) gone() bool { return clientGone((*fasthttp.RequestCtx)(c).Conn()) }

// await queues the request until it is the first of its model and a worker has room
// for it, and begins its load there.
func (s *Server) await(client waiterGone, st *routeState, reqID string, attempt, class int) (*upstream.Worker, int, *upstream.Load, error) {
	q := s.queue
	wt := q.enter(st.req.Model, class, len(st.tried) > 0)
	if wt == nil {
		q.reject(class, queueFull)
		return nil, 0, nil, errQueueFull
	}
	deadline := time.NewTimer(q.timeout)
	defer deadline.Stop()
	tick := time.NewTicker(queuePoll)
	defer tick.Stop()
	for {
		if q.first(wt) {
			w, overlap := s.pick(st, reqID, attempt)
			if w != nil {
				load := s.beginLoad(w, st, overlap) // before the next waiter looks
				q.leave(wt, true)
				return w, overlap, load, nil
			}
			if st.guarded == 0 { // no longer full but gone: not the queue's to answer
				q.leave(wt, false)
				return nil, 0, nil, nil
			}
		}
		select {
		case <-wt.wake:
		case <-tick.C:
			if client.gone() {
				q.leave(wt, false)
				q.reject(class, queueClientGone)
				return nil, 0, nil, errClientGone
			}
		case <-deadline.C:
			q.leave(wt, false)
			q.reject(class, queueTimeout)
			return nil, 0, nil, errQueueTimeout
		}
	}
}

// failRoute answers a request route could not place: a 429 with Retry-After when the
// fleet stayed full, nothing (the connection is closed) when the client has gone.
func (s *Server) failRoute(ctx *fasthttp.RequestCtx, model string, start time.Time, err error) {
	if errors.Is(err, errClientGone) {
		ctx.SetConnectionClose()
		s.count("", model, statusClientClosed, start)
		return
	}
	var b [20]byte
	ctx.Response.Header.SetBytesV("Retry-After", strconv.AppendInt(b[:0], s.queue.retryAfter(), 10))
	s.fail(ctx, model, err)
}
