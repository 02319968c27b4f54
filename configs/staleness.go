package configs

import (
	"math"
	"time"
)

// Staleness bounds how stale a worker's KV-event entries may be (issue #19); its keys
// sit directly under events.
type Staleness struct {
	// MaxStaleness is how far behind a worker's event feed may fall while the worker
	// serves requests before its confirmed index entries count as predictions (weighed
	// StaleWeight by the router): the feed's last batch arrived more than this after the
	// engine stamped it, or the worker has been receiving requests for longer than this
	// since the engine time of its last batch. An idle worker publishes nothing and is
	// never stale. A worker counts as serving while it has a request in flight or got
	// one within events.dead_after. 0s disables the bound (lag and age are still
	// reported). Default 10s: a healthy feed lags by milliseconds (vLLM publishes every
	// engine step), so GC pauses and network hiccups stay far below it; on kvsim, feeds
	// 2 and 5 s late made the router over-predict its hits by 7-9 points and gained
	// nothing from the downgrade, a feed 20 s late by 22 points (bench/RESULTS.md "Stale
	// event feeds"); and it is a third of events.dead_after, which purges a silent
	// feed's entries altogether.
	MaxStaleness time.Duration `yaml:"max_staleness"`
	// StaleWeight is what a leading block of a stale worker counts for in the
	// cache_aware cost and in the predicted cached tokens, against 1 for a fresh
	// worker's, in [0, 1]: 0 routes to a stale worker on load alone. Default 0.5.
	StaleWeight float64 `yaml:"stale_weight"`
}

func defaultStaleness() Staleness { return Staleness{MaxStaleness: 10 * time.Second, StaleWeight: 0.5} }

// validate appends the staleness settings' problems with bad.
func (s *Staleness) validateStaleness(bad func(format string, args ...any)) {
	if s.MaxStaleness < 0 {
		bad("events.max_staleness: %q must not be negative (0s disables it)", s.MaxStaleness.String())
	} else if s.MaxStaleness > 0 && s.MaxStaleness < 100*time.Millisecond {
		bad("events.max_staleness: %q is below 100ms, the order of a healthy feed's lag under load; 0s disables it", s.MaxStaleness.String())
	}
	if !(s.StaleWeight >= 0 && s.StaleWeight <= 1) || math.IsNaN(s.StaleWeight) {
		bad("events.stale_weight: %v must be in [0, 1]", s.StaleWeight)
	}
}
