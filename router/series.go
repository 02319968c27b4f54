package router

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// seriesKey names the series of one worker and model ("" for none).
type seriesKey struct{ worker, model string }

// seriesSet is the metric children a routed request updates, looked up once per worker
// and model and kept: a request then pays one map read under a read lock and an atomic
// load per series instead of a label lookup (label hashing, validation and a lock) per
// series. Each child is made at its first update, so the exported series stay exactly
// those the requests made.
type seriesSet struct {
	k            seriesKey
	m            *metrics
	ok           atomic.Pointer[prometheus.Counter]  // requests_total{worker, model, status="200"}
	promptTokens atomic.Pointer[prometheus.Counter]  // worker, model
	predictedHit atomic.Pointer[prometheus.Counter]  // model
	duration     atomic.Pointer[prometheus.Observer] // model
	ttfb         atomic.Pointer[prometheus.Observer] // model
	overlapRatio atomic.Pointer[prometheus.Observer] // model
}

// child returns the child in p, made by mk at the first call (two racing first calls
// store the same child: the vector returns one child per label values).
func child[T any](p *atomic.Pointer[T], set *seriesSet, mk func(*seriesSet) T) T {
	if c := p.Load(); c != nil {
		return *c
	}
	c := mk(set)
	p.Store(&c)
	return c
}

func (set *seriesSet) okCounter() prometheus.Counter {
	return child(&set.ok, set, func(set *seriesSet) prometheus.Counter {
		return set.m.requests.WithLabelValues(set.k.worker, set.k.model, "200")
	})
}

func (set *seriesSet) promptTokensCounter() prometheus.Counter {
	return child(&set.promptTokens, set, func(set *seriesSet) prometheus.Counter {
		return set.m.promptTokens.WithLabelValues(set.k.worker, set.k.model)
	})
}

func (set *seriesSet) predictedHitCounter() prometheus.Counter {
	return child(&set.predictedHit, set, func(set *seriesSet) prometheus.Counter {
		return set.m.predictedHit.WithLabelValues(set.k.model)
	})
}

func (set *seriesSet) durationObserver() prometheus.Observer {
	return child(&set.duration, set, func(set *seriesSet) prometheus.Observer {
		return set.m.duration.WithLabelValues(set.k.model)
	})
}

func (set *seriesSet) ttfbObserver() prometheus.Observer {
	return child(&set.ttfb, set, func(set *seriesSet) prometheus.Observer {
		return set.m.ttfb.WithLabelValues(set.k.model)
	})
}

func (set *seriesSet) overlapObserver() prometheus.Observer {
	return child(&set.overlapRatio, set, func(set *seriesSet) prometheus.Observer {
		return set.m.overlapRatio.WithLabelValues(set.k.model)
	})
}

// seriesCache holds the seriesSet of each worker and model met so far; labels are
// bounded (see metrics), and a worker's sets go with it (Server.ForgetWorker).
type seriesCache struct {
	mu   sync.RWMutex
	sets map[seriesKey]*seriesSet
}

// series returns the set of worker and model, made at first use.
func (s *Server) series(worker, model string) *seriesSet {
	c := &s.seriesCache
	k := seriesKey{worker, model}
	c.mu.RLock()
	set := c.sets[k]
	c.mu.RUnlock()
	if set != nil {
		return set
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if set = c.sets[k]; set == nil {
		if c.sets == nil {
			c.sets = map[seriesKey]*seriesSet{}
		}
		set = &seriesSet{k: k, m: s.metrics}
		c.sets[k] = set
	}
	return set
}

// forget drops the sets of a worker that left; the caller deletes its series.
func (c *seriesCache) forget(worker string) {
	c.mu.Lock()
	for k := range c.sets {
		if k.worker == worker {
			delete(c.sets, k)
		}
	}
	c.mu.Unlock()
}
