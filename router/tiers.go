package router

import (
	"github.com/kvroute/kvroute/indexer"
)

// overlapCached returns worker id's overlap in ms, the best of its data-parallel ranks as
// bestMatch (ties to the rank with the higher score), and that rank's tier-weighted
// score (indexer.WorkerMatch.Score: a CPU-offloaded block counts at
// cache_aware.tier_weights.cpu), 0, 0 when it has none.
func overlapCached(ms []indexer.WorkerMatch, id string) (blocks int, cached float64) {
	for i := range ms {
		if m := &ms[i]; m.Worker.ID == id && (m.Blocks > blocks || m.Blocks == blocks && m.Score > cached) {
			blocks, cached = m.Blocks, m.Score
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
