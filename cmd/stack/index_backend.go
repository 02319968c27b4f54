package stack

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/indexer/valkeyindex"
)

// newIndex builds the prefix index of index.backend: in memory, or shared in Valkey
// (then st.Index is the process's own part of it, which the Valkey backend embeds).
func (st *Stack) newIndex(reg prometheus.Registerer) error {
	cfg := st.Config
	local := indexer.Options{MaxBlocks: cfg.CacheAware.MaxIndexedBlocks, PredictedTTL: cfg.CacheAware.PredictionTTL, Registerer: reg,
		TierWeights: indexer.TierWeightsOf(cfg.CacheAware.TierWeights)}
	if cfg.Index.Backend != "valkey" {
		ix, err := indexer.New(local)
		if err != nil {
			return fmt.Errorf("indexer: %w", err)
		}
		st.Index = ix
		return nil
	}
	vc := cfg.Index.Valkey
	v, err := valkeyindex.New(valkeyindex.Options{
		URL: vc.URL, Prefix: vc.Prefix, Timeout: vc.Timeout,
		Local: local, Registerer: reg, Logger: st.log,
	})
	if err != nil {
		return fmt.Errorf("index backend valkey: %w", err)
	}
	st.Shared, st.Index = v, v.Index
	st.closers = append(st.closers, v.Close)
	return nil
}

// Backend is the index the router, the feeds, the replica sync and the admin API use.
func (st *Stack) Backend() indexer.Backend {
	if st.Shared != nil {
		return st.Shared
	}
	return st.Index
}
