package admin

import (
	"strconv"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/upstream"
)

// WorkerView is one worker as the admin API shows it.
type WorkerView struct {
	ID  string `json:"id"`
	URL string `json:"url"`
	// Source is where the worker came from: static (config file or --worker), api
	// (POST /api/workers), dns or kubernetes; Joined is when it joined.
	Source string    `json:"source"`
	Joined time.Time `json:"joined"`
	// State sums up routing eligibility: "available", "joining" (not checked yet),
	// "drained" (healthy but taking no new requests), "not_ready" (its source says it
	// must take none, such as an unready pod), "leaving" (removed, its requests
	// finishing), "ejected" (passive ejection after failed requests: the circuit is
	// open), "unhealthy" (active checks fail) or "no_models".
	State        string    `json:"state"`
	Ready        bool      `json:"ready"`
	Available    bool      `json:"available"`
	Healthy      bool      `json:"healthy"`
	Ejected      bool      `json:"ejected"`
	EjectedUntil time.Time `json:"ejected_until,omitzero"`
	Drained      bool      `json:"drained"`
	DrainedSince time.Time `json:"drained_since,omitzero"`
	Models       []string  `json:"models"`
	// BaseModel is the model its KV events are indexed under (never a LoRA adapter).
	BaseModel string `json:"base_model"`
	Events    string `json:"events,omitempty"`
	Replay    string `json:"replay,omitempty"`
	DPRanks   int    `json:"dp_ranks"`
	LastError string `json:"last_error,omitempty"`
	// Changes are the worker's last state changes (joined, available, unavailable,
	// ready, not_ready, models, leaving, left), oldest first.
	Changes []upstream.StateChange `json:"changes"`
	// InFlight, PendingPrefillTokens and ActiveBlocks are this router's own load
	// bookkeeping for the worker (upstream.Load).
	InFlight             int64 `json:"in_flight"`
	PendingPrefillTokens int64 `json:"pending_prefill_tokens"`
	ActiveBlocks         int64 `json:"active_blocks"`
	// Engine is the worker's own figures from its /metrics; nil when not scraped recently.
	Engine *EngineView `json:"engine"`
	// Index is the worker's part of the prefix index; nil when the router has no index.
	Index *IndexView `json:"index"`
	// Feeds are the worker's KV-event feeds, one per DP rank; empty when it publishes none.
	Feeds []FeedView `json:"feeds"`
	// EventsStale is true while any of its feeds is stale (FeedView.Stale).
	EventsStale bool `json:"events_stale"`
	// Traffic is the worker's share of the router's traffic; nil without a
	// Backend.Traffic.
	Traffic *WorkerTraffic `json:"traffic"`
}

// EngineView is a worker's scraped engine metrics.
type EngineView struct {
	Running    float64 `json:"running"`
	Waiting    float64 `json:"waiting"`
	KVUsage    float64 `json:"kv_usage"` // 0..1
	BlockSize  int     `json:"block_size"`
	NumBlocks  int     `json:"num_blocks"`
	AgeSeconds float64 `json:"age_seconds"`
	// PrefixQueries and PrefixHits are the engine's own cumulative prefix-cache counters
	// (prompt tokens looked up and found) and PrefixHitRate their ratio since the engine
	// started; nil when it reports none.
	PrefixQueries float64  `json:"prefix_cache_queries_tokens"`
	PrefixHits    float64  `json:"prefix_cache_hits_tokens"`
	PrefixHitRate *float64 `json:"prefix_cache_hit_rate"`
}

// IndexView is a worker's part of the prefix index, summed over its DP ranks.
type IndexView struct {
	// Blocks counts indexed blocks per tier name (gpu, cpu, disk) confirmed by events.
	Blocks map[string]int64 `json:"blocks"`
	// Predicted counts blocks the router predicts from its own decisions, unconfirmed.
	Predicted int64 `json:"predicted"`
	Ranks     int   `json:"ranks"`
}

// FeedView is one KV-event feed (one DP rank of a worker).
type FeedView struct {
	Rank      int    `json:"rank"`
	Endpoint  string `json:"endpoint"`
	Connected bool   `json:"connected"`
	// Seq is the last applied event sequence number (nil before the first).
	Seq *uint64 `json:"seq"`
	// Batches and Events applied; Gaps in the sequence seen; Replays made to fill them;
	// Resets of the worker's entries (restart, unrecoverable gap, dead publisher).
	Batches      uint64 `json:"batches"`
	Events       uint64 `json:"events"`
	Gaps         uint64 `json:"gaps"`
	Replays      uint64 `json:"replays"`
	Resets       uint64 `json:"resets"`
	DecodeErrors uint64 `json:"decode_errors"`
	LastReset    string `json:"last_reset,omitempty"`
	LastError    string `json:"last_error,omitempty"`
	// LagSeconds is the engine's timestamp of the last batch to its application
	// (kvroute_events_lag_seconds); nil when unknown.
	LagSeconds *float64 `json:"lag_seconds"`
	// LastEventAgeSeconds is how long ago the last batch was applied; nil before the first.
	LastEventAgeSeconds *float64 `json:"last_event_age_seconds"`
	// Epoch is the feed's epoch: resets of the worker's entries so far
	// (kvroute_events_epoch).
	Epoch uint64 `json:"epoch"`
	// Stale is true while the feed lags or stays silent beyond events.max_staleness
	// while the worker serves requests (kvroute_events_stale): the worker's confirmed
	// entries count as predictions until it catches up; StaleSince is since when.
	Stale      bool      `json:"stale"`
	StaleSince time.Time `json:"stale_since,omitzero"`
}

// PrefixView is one hot shared prefix.
type PrefixView struct {
	// Hash is the prefix's last block hash, in hex.
	Hash string `json:"hash"`
	// Depth is the prefix length in blocks.
	Depth int `json:"depth"`
	// SampledMatches is the Space-Saving count of sampled index matches that reached
	// this prefix (an over-estimate by at most SampledError); Requests estimates the
	// routed requests that used it: SampledMatches x the sampling period.
	SampledMatches uint64 `json:"sampled_matches"`
	SampledError   uint64 `json:"sampled_error"`
	Requests       uint64 `json:"requests_estimate"`
	// Workers hold the prefix's last block now ("id" or "id#rank").
	Workers []string `json:"workers"`
}

// StatsView is the router-wide figures.
type StatsView struct {
	// Traffic is the windowed request statistics; nil without a Backend.Traffic.
	Traffic *TrafficStats `json:"traffic"`
	// Tokenize is the tokenizer mode and its error counters since start.
	Tokenize TokenizeView `json:"tokenize"`
	// Index sums the prefix index up; nil without one.
	Index *IndexSummary `json:"index"`
	// Queue is the router's wait queue (config section queue).
	Queue QueueView `json:"queue"`
}

// QueueView is the router's wait queue: the requests that found every worker of their
// model full, read from the kvroute_router_queue_* metrics (empty without a Gatherer).
type QueueView struct {
	// Depth is the requests waiting now, by priority class.
	Depth map[string]float64 `json:"depth"`
	// Rejected counts the requests that left without a worker since start, by reason:
	// full, timeout, client_gone.
	Rejected map[string]float64 `json:"rejected"`
	// Left counts the requests that left the queue since start, however; WaitSeconds is
	// their total wait (the mean wait is WaitSeconds / Left).
	Left        uint64  `json:"left"`
	WaitSeconds float64 `json:"wait_seconds"`
}

// TokenizeView is the tokenizer's mode and failures.
type TokenizeView struct {
	Mode string `json:"mode"`
	// Errors counts failed tokenizations per reason (kvroute_tokenize_errors_total);
	// Fallbacks the requests hashed in approx mode instead (kvroute_tokenize_fallbacks_total).
	Errors    map[string]float64 `json:"errors"`
	Fallbacks map[string]float64 `json:"fallbacks"`
	// Calls and CacheHits count /tokenize calls and answers from the cache.
	Calls     float64 `json:"calls"`
	CacheHits float64 `json:"cache_hits"`
}

// IndexSummary is the prefix index's size and activity.
type IndexSummary struct {
	Blocks           int    `json:"blocks"`
	PredictedEntries int    `json:"predicted_entries"`
	MemoryBytes      int    `json:"memory_bytes"`
	Matches          uint64 `json:"matches"`
	Clears           uint64 `json:"clears"`
	BlockStores      uint64 `json:"block_stores"`
	BlockRemoves     uint64 `json:"block_removes"`
}

// families indexes gathered metrics by name.
type families map[string]*dto.MetricFamily

func (h *handler) gather() families {
	out := families{}
	if h.b.Gatherer == nil {
		return out
	}
	mfs, _ := h.b.Gatherer.Gather() // a partial result is still worth showing
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// byLabel returns metric name's values keyed by the value of label.
func (f families) byLabel(name, label string) map[string]float64 {
	out := map[string]float64{}
	mf := f[name]
	if mf == nil {
		return out
	}
	for _, m := range mf.GetMetric() {
		key := ""
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label {
				key = lp.GetValue()
			}
		}
		switch {
		case m.Counter != nil:
			out[key] += m.Counter.GetValue()
		case m.Gauge != nil:
			out[key] += m.Gauge.GetValue()
		}
	}
	return out
}

func (f families) total(name string) float64 {
	var t float64
	for _, v := range f.byLabel(name, "") {
		t += v
	}
	return t
}

func (h *handler) statsView(fam families) StatsView {
	v := StatsView{Tokenize: TokenizeView{
		Mode:      h.b.Info.TokenizeMode,
		Errors:    fam.byLabel("kvroute_tokenize_errors_total", "reason"),
		Fallbacks: fam.byLabel("kvroute_tokenize_fallbacks_total", "reason"),
		Calls:     fam.total("kvroute_tokenize_calls_total"),
		CacheHits: fam.total("kvroute_tokenize_cache_hits_total"),
	}}
	v.Queue = QueueView{
		Depth:    fam.byLabel("kvroute_router_queue_depth", "class"),
		Rejected: fam.byLabel("kvroute_router_queue_rejected_total", "reason"),
	}
	if mf := fam["kvroute_router_queue_wait_seconds"]; mf != nil {
		for _, m := range mf.GetMetric() {
			v.Queue.Left += m.GetHistogram().GetSampleCount()
			v.Queue.WaitSeconds += m.GetHistogram().GetSampleSum()
		}
	}
	if h.b.Traffic != nil {
		t := h.b.Traffic.Traffic()
		v.Traffic = &t
	}
	if h.b.Index != nil {
		s := h.b.Index.Stats()
		v.Index = &IndexSummary{
			Blocks: s.Blocks, PredictedEntries: s.PredictedEntries, MemoryBytes: s.MemoryBytes,
			Matches: s.Matches, Clears: s.Clears, BlockStores: s.BlockStores, BlockRemoves: s.BlockRemoves,
		}
	}
	return v
}

// workerViews builds the view of every worker, or only of worker only (with its
// traffic series) when only is not "".
func (h *handler) workerViews(fam families, ix *indexer.Stats, only string) []WorkerView {
	lag := fam.byLabel("kvroute_events_lag_seconds", "worker")
	feeds := map[string][]FeedView{}
	if h.b.Feeds != nil {
		now := time.Now()
		for _, s := range h.b.Feeds() {
			fv := FeedView{
				Rank: s.Key.DPRank, Endpoint: s.Endpoint, Connected: s.Connected,
				Batches: s.Batches, Events: s.Events, Gaps: s.Gaps, Replays: s.Replays, Resets: s.Resets,
				DecodeErrors: s.DecodeErrors, LastReset: s.LastReset, LastError: s.LastError,
				Epoch: s.Epoch, Stale: s.Stale, StaleSince: s.StaleSince,
			}
			if s.HaveSeq {
				seq := s.LastSeq
				fv.Seq = &seq
			}
			if l, ok := lag[s.Key.String()]; ok {
				fv.LagSeconds = &l
			}
			if !s.LastEvent.IsZero() {
				age := now.Sub(s.LastEvent).Seconds()
				fv.LastEventAgeSeconds = &age
			}
			feeds[s.Key.ID] = append(feeds[s.Key.ID], fv)
		}
	}
	var out []WorkerView
	for _, w := range append(h.b.Pool.Workers(), h.b.Pool.Leaving()...) {
		if only != "" && w.ID != only {
			continue
		}
		out = append(out, h.workerView(w, ix, feeds[w.ID], only != ""))
		if only != "" {
			break // a current member comes before a leaving one of the same id
		}
	}
	return out
}

func (h *handler) workerView(w *upstream.Worker, ix *indexer.Stats, feeds []FeedView, series bool) WorkerView {
	st := w.State()
	v := WorkerView{
		ID: st.ID, URL: st.URL, Source: st.Source, Joined: st.Joined, Ready: st.Ready,
		Available: st.Available, Healthy: st.Healthy, Ejected: st.Ejected,
		EjectedUntil: st.EjectedUntil, Drained: w.Drained(), DrainedSince: w.DrainedSince(),
		Models: st.Models, BaseModel: st.BaseModel, Events: st.Events, Replay: st.Replay, DPRanks: st.DPRanks,
		LastError: st.LastError, Changes: st.Changes,
		InFlight: w.InFlight(), PendingPrefillTokens: w.PendingPrefillTokens(), ActiveBlocks: w.ActiveBlocks(),
		Feeds: feeds,
	}
	if v.Feeds == nil {
		v.Feeds = []FeedView{}
	}
	for _, f := range v.Feeds {
		v.EventsStale = v.EventsStale || f.Stale
	}
	switch {
	case st.State == "leaving":
		v.State = "leaving"
	case st.State == "joining":
		v.State = "joining"
	case v.Ejected:
		v.State = "ejected"
	case !v.Healthy:
		v.State = "unhealthy"
	case len(v.Models) == 0:
		v.State = "no_models"
	case v.Drained:
		v.State = "drained"
	case !v.Ready:
		v.State = "not_ready"
	default:
		v.State = "available"
	}
	if m, ok := w.Metrics(h.b.MetricsMaxAge); ok {
		v.Engine = &EngineView{
			Running: m.Running, Waiting: m.Waiting, KVUsage: m.KVUsage, BlockSize: m.BlockSize, NumBlocks: m.NumBlocks,
			AgeSeconds: time.Since(m.At).Seconds(), PrefixQueries: m.PrefixQueries, PrefixHits: m.PrefixHits,
		}
		if m.PrefixQueries > 0 {
			r := m.PrefixHits / m.PrefixQueries
			v.Engine.PrefixHitRate = &r
		}
	}
	if ix != nil {
		iv := &IndexView{Blocks: map[string]int64{}}
		for t := range indexer.NumTiers {
			iv.Blocks[indexer.Tier(t).String()] = 0
		}
		for _, ws := range ix.Workers {
			if ws.Worker.ID != w.ID {
				continue
			}
			iv.Ranks++
			iv.Predicted += ws.Predicted
			for t, n := range ws.Blocks {
				iv.Blocks[indexer.Tier(t).String()] += n
			}
		}
		v.Index = iv
	}
	if h.b.Traffic != nil {
		t := h.b.Traffic.WorkerTraffic(w.ID, series)
		v.Traffic = &t
	}
	return v
}

func (h *handler) prefixViews(ix *indexer.Stats, n int) []PrefixView {
	out := []PrefixView{}
	if ix == nil {
		return out
	}
	for _, p := range ix.Hot {
		if len(out) == n {
			break
		}
		pv := PrefixView{
			Hash: strconv.FormatUint(uint64(p.Hash), 16), Depth: p.Depth,
			SampledMatches: p.Matches, SampledError: p.Error, Requests: p.Matches * uint64(h.b.SampleEvery),
			Workers: make([]string, 0, len(p.Workers)),
		}
		for _, k := range p.Workers {
			pv.Workers = append(pv.Workers, k.String())
		}
		out = append(out, pv)
	}
	return out
}
