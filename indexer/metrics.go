package indexer

import (
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/proto"
)

// metrics exposes the index to Prometheus. Counters and gauges are read from the index
// at scrape time by a collector (nothing is updated per event); the two histograms are
// observed directly.
type metrics struct {
	ix    *Index
	apply prometheus.Histogram
	match prometheus.Histogram

	events, blockOps, dropped, evictions, clears, predicted, expired      *prometheus.Desc
	blocks, workerBlocks, workerPredicted, workerEntries, sets, runs, mem *prometheus.Desc
}

func newMetrics(ix *Index, reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{ix: ix}
	m.apply = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "kvroute_indexer_apply_duration_seconds",
		Help:    "Time to apply one event batch, lock waits included.",
		Buckets: prometheus.ExponentialBuckets(1e-6, 4, 10),
	})
	m.match = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "kvroute_indexer_match_duration_seconds",
		Help:    "Time of one Match call, lock waits included (sampled: one call in Options.SampleEvery).",
		Buckets: prometheus.ExponentialBuckets(2.5e-7, 2, 14),
	})
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("kvroute_indexer_"+name, help, labels, nil)
	}
	m.events = d("events_total", "KV events applied, by kind.", "kind")
	m.blockOps = d("block_ops_total", "Block store and remove operations applied.", "op")
	m.dropped = d("dropped_blocks_total", "Blocks of events not applied, by reason.", "reason")
	m.evictions = d("evictions_total", "Entries dropped by the index's own bounds, by reason.", "reason")
	m.clears = d("worker_clears_total", "Worker clears (engine restart, unrecoverable gap, AllBlocksCleared).")
	m.predicted = d("predicted_inserted_total", "Predicted (worker, block) entries inserted.")
	m.expired = d("predicted_expired_total", "Predicted entries that expired unconfirmed.")
	m.blocks = d("blocks", "Distinct blocks indexed.")
	m.workerBlocks = d("worker_blocks", "Blocks indexed per worker and tier.", "worker", "dp_rank", "tier")
	m.workerPredicted = d("worker_predicted_blocks", "Predicted blocks per worker.", "worker", "dp_rank")
	m.workerEntries = d("worker_engine_entries", "Engine-hash map entries per worker.", "worker", "dp_rank")
	m.sets = d("holder_sets", "Distinct holder sets in use.")
	m.runs = d("runs", "Runs (chain segments with one holder set) the blocks are stored in.")
	m.mem = d("memory_bytes", "Estimated memory held by the index structures.")
	for _, c := range []prometheus.Collector{m.apply, m.match, m} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register indexer metrics: %w", err)
		}
	}
	return m, nil
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.events, m.blockOps, m.dropped, m.evictions, m.clears, m.predicted,
		m.expired, m.blocks, m.workerBlocks, m.workerPredicted, m.workerEntries, m.sets, m.runs, m.mem} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	s := m.ix.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for k, v := range s.Events {
		name := "unknown"
		if k > 0 {
			name = proto.EventKind(k).String()
		}
		counter(m.events, v, name)
	}
	counter(m.blockOps, s.BlockStores, "store")
	counter(m.blockOps, s.BlockRemoves, "remove")
	for r, v := range s.Dropped {
		counter(m.dropped, v, DropReason(r).String())
	}
	for r, v := range s.Evictions {
		counter(m.evictions, v, EvictReason(r).String())
	}
	counter(m.clears, s.Clears)
	counter(m.predicted, s.PredictedInserted)
	counter(m.expired, s.PredictedExpired)
	gauge(m.blocks, float64(s.Blocks))
	gauge(m.sets, float64(s.HolderSets))
	gauge(m.runs, float64(s.Runs))
	gauge(m.mem, float64(s.MemoryBytes))
	for _, w := range s.Workers {
		rank := strconv.Itoa(w.Worker.DPRank)
		for t, v := range w.Blocks {
			gauge(m.workerBlocks, float64(v), w.Worker.ID, rank, Tier(t).String())
		}
		gauge(m.workerPredicted, float64(w.Predicted), w.Worker.ID, rank)
		gauge(m.workerEntries, float64(w.EngineEntries), w.Worker.ID, rank)
	}
}
