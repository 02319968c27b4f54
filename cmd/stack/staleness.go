package stack

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/upstream/kvevents"
)

// This file wires the KV-event staleness bound (events.max_staleness, issue #19): the
// monitor reads the ZMQ feeds' states and the pool's routing record, and marks a stale
// feed in the index, whose Match then counts that worker's confirmed blocks as
// predictions (weighed events.stale_weight by the router) until the feed catches up.

// newStaleness builds the monitor of the ZMQ feeds; none with the NATS source, whose
// consumer keeps no per-feed state the monitor could read.
func (st *Stack) newStaleness(reg prometheus.Registerer) error {
	if st.Events == nil {
		return nil
	}
	s, err := kvevents.NewStaleness(kvevents.StalenessOptions{
		MaxStaleness: st.Config.Events.MaxStaleness, IdleAfter: st.Config.Events.DeadAfter,
		Feeds: st.Events.States,
		Routed: func(id string) (time.Time, int64) {
			if w := st.Pool.Worker(id); w != nil {
				return w.LastRouted(), w.InFlight()
			}
			return time.Time{}, 0
		},
		Mark:       func(k proto.WorkerKey, stale bool) { st.Index.SetStale(k, stale) },
		Registerer: reg, Logger: st.log,
	})
	if err != nil {
		return fmt.Errorf("events staleness: %w", err)
	}
	st.Staleness = s
	return nil
}

// feedStates is the admin API's view of the feeds: their states with the monitor's
// verdict.
func (st *Stack) feedStates() []kvevents.WorkerState {
	states := st.Events.States()
	if st.Staleness != nil {
		st.Staleness.Annotate(states)
	}
	return states
}
