package report

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/bench/workload"
)

// Summary is everything one comparison reports: what ran and each policy's result.
type Summary struct {
	Workload string          `json:"workload"`
	Command  string          `json:"command,omitempty"`
	Setup    Setup           `json:"setup"`
	Bounds   workload.Bounds `json:"bounds"`
	// TTFTBounds, when computed, bound the TTFT percentiles (see [IdleTTFT]).
	TTFTBounds *TTFTBounds    `json:"ttft_bounds,omitempty"`
	Results    []Result       `json:"results"`
	Requests   int            `json:"requests"`
	Extra      map[string]any `json:"extra,omitempty"`
}

// Setup states the machine and fleet a comparison ran on.
type Setup struct {
	Machine      string  `json:"machine"`
	Workers      int     `json:"workers"`
	Profile      string  `json:"profile"`
	TimeScale    float64 `json:"time_scale"`
	BlockSize    int     `json:"block_size"`
	KVBlocks     int     `json:"kv_blocks_per_worker"`
	PromptTokens int64   `json:"prompt_tokens"`
	OutputTokens int64   `json:"output_tokens"`
	ArrivalSpan  float64 `json:"arrival_span_s"`
	// LoRA are the adapters requests were spread over (workload.SpreadModels); empty
	// when they named the base model.
	LoRA []string `json:"lora,omitempty"`
	// Replicas is the number of routers (requests round-robin over them); ReplicaSync
	// whether they shared state over NATS.
	Replicas    int  `json:"replicas,omitempty"`
	ReplicaSync bool `json:"replica_sync,omitempty"`
	// Valkey is the server of the _valkey runs (kvbench run --valkey), "" without.
	Valkey string `json:"valkey,omitempty"`
}

// WriteMarkdown writes the comparison table.
func WriteMarkdown(w io.Writer, s *Summary) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Workload **%s**: %d requests, %d prompt tokens, %d output tokens, arrivals over %.1f s.  \n",
		s.Workload, s.Requests, s.Setup.PromptTokens, s.Setup.OutputTokens, s.Setup.ArrivalSpan)
	fmt.Fprintf(&b, "Fleet: %d kvsim workers, profile %s, time scale %g, block size %d, KV capacity %d blocks = %d tokens per worker.  \n",
		s.Setup.Workers, s.Setup.Profile, s.Setup.TimeScale, s.Setup.BlockSize, s.Setup.KVBlocks, s.Setup.KVBlocks*s.Setup.BlockSize)
	if len(s.Setup.LoRA) > 0 {
		fmt.Fprintf(&b, "Requests name LoRA adapters %s of the base model (a conversation keeps one; conversations sharing a system prompt share one).  \n", strings.Join(s.Setup.LoRA, ", "))
	}
	if s.Setup.Replicas > 1 {
		how := "sharing load and routing decisions over NATS (router/replica)"
		if !s.Setup.ReplicaSync {
			how = "independent (no replica sync)"
		}
		fmt.Fprintf(&b, "Routers: %d replicas, %s, each reading every worker's events; requests round-robin over them.  \n", s.Setup.Replicas, how)
	}
	if s.Setup.Valkey != "" {
		fmt.Fprintf(&b, "Rows ending in _valkey: the routers' index kept in %s (index.backend valkey), shared by the replicas instead of any NATS sync.  \n", s.Setup.Valkey)
	}
	fmt.Fprintf(&b, "Bounds from the workload: infinite cache %.1f%%, one pooled LRU cache of the fleet's %d blocks %.1f%%.  \n",
		100*s.Bounds.Infinite, s.Bounds.PooledBlocks, 100*s.Bounds.PooledLRU)
	if t := s.TTFTBounds; t != nil {
		fmt.Fprintf(&b, "TTFT of each request alone on an idle worker (kvsim's step model, no queueing): with the infinite cache p50 %s, p90 %s, p99 %s (no policy can do better); with the pooled LRU cache p50 %s, p90 %s, p99 %s.  \n",
			ms(t.Infinite.P50), ms(t.Infinite.P90), ms(t.Infinite.P99), ms(t.PooledLRU.P50), ms(t.PooledLRU.P90), ms(t.PooledLRU.P99))
	}
	fmt.Fprintf(&b, "Machine: %s. TTFT/ITL/E2E are wall-clock at the client (time-scaled: divide by the time scale for modelled seconds). Load is simulated busy time over wall time, sim lag the engines' time lost to running late on the host (CPU contention; latencies are inflated when it is above a few percent); process CPU is router + fleet + load generator (one process), router CPU the router's share of it (goroutine-labelled CPU profile, 100 Hz); host load is the 1-minute load average after the run.\n\n", s.Setup.Machine)
	b.WriteString("| policy | hit rate | router-predicted hit | % of inf. bound | % of pooled-LRU bound | TTFT p50 | TTFT p90 | TTFT p99 | ITL mean | E2E p50 | E2E p90 | out tok/s | load | sim lag | imbalance | process CPU s | router CPU s | host load | errors |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range s.Results {
		router := "n/a"
		if r.CPUSplit != nil {
			router = fmt.Sprintf("%.1f", r.CPUSplit.Router)
		}
		fmt.Fprintf(&b, "| %s | %.1f%% | %.1f%% | %s | %s | %s | %s | %s | %s | %s | %s | %.0f | %.0f%% | %.1f%% | %.2f | %.1f | %s | %.1f | %d |\n",
			r.Label(), 100*r.HitRate, 100*r.PredictedHitRate, ratio(r.HitRate, s.Bounds.Infinite), ratio(r.HitRate, s.Bounds.PooledLRU),
			ms(r.TTFT.P50), ms(r.TTFT.P90), ms(r.TTFT.P99), ms(r.ITL.Mean), ms(r.E2E.P50), ms(r.E2E.P90),
			r.OutputTPS, 100*r.Load, 100*r.Lag, r.Imbalance, r.CPU, router, r.HostLoad, r.Errors)
	}
	writePDTable(&b, s)
	_, err := io.WriteString(w, b.String())
	return err
}

// writePDTable writes, when s holds P/D runs (Config.PD), the table of aggregated vs
// disaggregated serving: hit rate (the prefill pool's for P/D), TTFT and ITL
// percentiles, output tokens/s.
func writePDTable(b *strings.Builder, s *Summary) {
	pd := ""
	for _, r := range s.Results {
		if r.PD != "" {
			pd = r.PD
			break
		}
	}
	if pd == "" {
		return
	}
	fmt.Fprintf(b, "\nPrefill/decode disaggregation (P:D protocol %s) against aggregated serving on the same number of workers. Hit rate: cached over prompt tokens on the prefill pool (P/D) or on every worker (aggregated). ITL: each request's mean gap between streamed tokens after the first, percentiles over requests.\n\n", pd)
	b.WriteString("| policy | serving | hit rate | TTFT p50 | TTFT p90 | TTFT p99 | ITL p50 | ITL p90 | ITL p99 | E2E p50 | out tok/s | sim lag | host load | errors |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range s.Results {
		serving := "aggregated"
		if r.PD != "" {
			serving = "P/D " + r.PD
		}
		fmt.Fprintf(b, "| %s | %s | %.1f%% | %s | %s | %s | %s | %s | %s | %s | %.0f | %.1f%% | %.1f | %d |\n",
			r.Policy, serving, 100*r.HitRate, ms(r.TTFT.P50), ms(r.TTFT.P90), ms(r.TTFT.P99),
			ms(r.ITL.P50), ms(r.ITL.P90), ms(r.ITL.P99), ms(r.E2E.P50), r.OutputTPS, 100*r.Lag, r.HostLoad, r.Errors)
	}
}

func ratio(a, b float64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*a/b)
}

func ms(s float64) string {
	switch {
	case s >= 10:
		return fmt.Sprintf("%.1f s", s)
	case s >= 1:
		return fmt.Sprintf("%.2f s", s)
	}
	return fmt.Sprintf("%.1f ms", 1000*s)
}

// WriteDir writes report.md, report.json, each policy's per-request outcomes
// (requests_<policy>.jsonl, requests_<policy>_pd.jsonl for a P/D run) and the PNG plots into dir (created if needed).
func WriteDir(dir string, s *Summary) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("report dir: %w", err)
	}
	f, err := os.Create(filepath.Join(dir, "report.md"))
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if err := WriteMarkdown(f, s); err != nil {
		_ = f.Close()
		return fmt.Errorf("report.md: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("report.md: %w", err)
	}
	j, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("report.json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), append(j, '\n'), 0o644); err != nil {
		return fmt.Errorf("report.json: %w", err)
	}
	for i := range s.Results {
		if err := writeOutcomes(dir, &s.Results[i]); err != nil {
			return err
		}
	}
	return WritePlots(dir, s)
}

// outcomeLine is one line of requests_<policy>.jsonl; times in seconds.
type outcomeLine struct {
	I               int     `json:"i"`
	Sent            float64 `json:"sent_s"`
	TTFT            float64 `json:"ttft_s"`
	E2E             float64 `json:"e2e_s"`
	Worker          string  `json:"worker"`
	Prompt          int     `json:"prompt"`
	Cached          int     `json:"cached"`
	PredictedBlocks int     `json:"predicted_blocks"`
	Tokens          int     `json:"tokens"`
	Err             string  `json:"err,omitempty"`
}

// writeOutcomes writes r's per-request outcomes as requests_<policy>.jsonl in dir, one
// JSON object a line in request order (nothing when r has none).
func writeOutcomes(dir string, r *Result) error {
	if len(r.Outcomes) == 0 {
		return nil
	}
	var b strings.Builder
	enc := json.NewEncoder(&b)
	for i, o := range r.Outcomes {
		if err := enc.Encode(outcomeLine{
			I: i, Sent: o.Sent.Seconds(), TTFT: o.TTFT.Seconds(), E2E: o.E2E.Seconds(), Worker: o.Worker,
			Prompt: o.Prompt, Cached: o.Cached, PredictedBlocks: o.PredictedBlocks, Tokens: o.Tokens, Err: o.Err,
		}); err != nil {
			return fmt.Errorf("requests_%s.jsonl: %w", r.Label(), err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "requests_"+r.Label()+".jsonl"), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("requests_%s.jsonl: %w", r.Label(), err)
	}
	return nil
}

// TTFTBounds are lower bounds on TTFT percentiles from the workload: each request alone
// on an idle kvsim engine (no queueing, no other request in its steps) with the prompt
// tokens the infinite cache or the pooled LRU cache would have had cached (see
// [IdleTTFT]). Wall seconds at the run's time scale, like the measured TTFTs.
type TTFTBounds struct {
	Infinite  Percentiles `json:"infinite"`
	PooledLRU Percentiles `json:"pooled_lru"`
}

// IdleTTFT computes the TTFT bounds of workload w (its bounds b, from
// workload.ComputeBounds) on engines of profile prof computing at most maxBatched tokens
// per step, at timeScale. Since every request's TTFT is at least its idle infinite-cache
// TTFT, every percentile of a run is at least the bound's: the infinite-cache figures
// bound any policy; the pooled-LRU ones are what a perfectly shared cache of the fleet's
// size would give without queueing (a policy can beat them only by out-hitting that
// cache).
func IdleTTFT(w *workload.Workload, b workload.Bounds, prof sim.Profile, maxBatched int, timeScale float64) TTFTBounds {
	one := func(cached []int) Percentiles {
		if len(cached) != len(w.Requests) {
			return Percentiles{}
		}
		v := make([]float64, len(cached))
		for i, c := range cached {
			v[i] = prof.IdleTTFT(len(w.Requests[i].Prompt), c, maxBatched).Seconds() * timeScale
		}
		return percentiles(v)
	}
	return TTFTBounds{Infinite: one(b.InfiniteCached), PooledLRU: one(b.PooledCached)}
}
