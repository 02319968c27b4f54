package router

import (
	"github.com/kvroute/kvroute/indexer"
)

// overlapCached returns worker id's overlap in ms, the best of its data-parallel ranks as
// bestMatch (ties to the rank with the higher score), and that rank's tier-weighted
// score (indexer.WorkerMatch.Score: a CPU-offloaded block counts at
// cache_aware.tier_weights.cpu), 0, 0 when it has none. A rank whose event feed is
// stale counts staleWeight of both, as bestMatch does (events.stale_weight).
func overlapCached(ms []indexer.WorkerMatch, id string, staleWeight float64) (blocks int, cached float64) {
	for i := range ms {
		m := &ms[i]
		if m.Worker.ID != id {
			continue
		}
		n, sc := m.Blocks, m.Score
		if m.Stale {
			n, sc = int(float64(n)*staleWeight), sc*staleWeight
		}
		if n > blocks || n == blocks && sc > cached {
			blocks, cached = n, sc
		}
	}
	return blocks, cached
}

// tierCounts returns the per-tier block counts of a match for the index query API, by
// tier name, only the tiers holding at least one block (nil when none does).
func tierCounts(m *indexer.WorkerMatch) map[string]int {
	var out map[string]int
	for t, n := range m.Tiers {
		if n <= 0 {
			continue
		}
		if out == nil {
			out = make(map[string]int, 2)
		}
		out[indexer.Tier(t).String()] = int(n)
	}
	return out
}
