package admin

import "time"

// The router's own figures the admin API shows: its traffic, recorded by the router's
// Server (which implements [TrafficSource] and fills these types), and its recent
// routing decisions with their explanations (adapted by the composition root, cmd/stack,
// into [Decision]). They are defined here, by the package that shows them, so that this
// package does not import the router.

// TrafficSource is the router's record of its own traffic. Implementations must be safe
// for concurrent use; each call returns a fresh snapshot that the caller owns.
type TrafficSource interface {
	// Traffic returns the windowed request statistics as of now.
	Traffic() TrafficStats
	// WorkerTraffic returns worker id's share of the traffic (zero figures for an id it
	// has not seen), with its per-second series when series is true.
	WorkerTraffic(id string, series bool) WorkerTraffic
}

// DecisionSource lists the router's recent routing decisions. Implementations must be
// safe for concurrent use.
type DecisionSource interface {
	// Decisions returns up to n (n >= 1) of the most recent decisions, newest first;
	// the slice is the caller's.
	Decisions(n int) []Decision
}

// Decision is one routing decision as the admin API shows it: the router's record with
// a one-line explanation for people, in a form JSON can carry (an infinite cost is
// null).
type Decision struct {
	Time         time.Time `json:"time"`
	RequestID    string    `json:"request_id"`
	Model        string    `json:"model"`
	Policy       string    `json:"policy"`
	PromptTokens int       `json:"prompt_tokens"`
	Blocks       int       `json:"blocks"`
	Exact        bool      `json:"exact"` // token-exact hashes (not approx)
	Chosen       string    `json:"chosen"`
	// Attempt is 0 for the first attempt, 1 for the first retry, and so on.
	Attempt    int         `json:"attempt"`
	Candidates []Candidate `json:"candidates"`
	// Phase is "prefill" or "decode" for the two picks of a disaggregated request (the
	// decode pick's costs are load: decode_cost the KV usage in percent, queue_cost
	// requests in flight plus queued decode tokens), "aggregated_prefill_pool" or
	// "aggregated_decode_pool" for a P/D fallback, "" otherwise.
	Phase string `json:"phase,omitempty"`
	// Explanation says in one line why the chosen worker was chosen.
	Explanation string `json:"explanation"`
	// PredictedCachedTokens is the prompt tokens the chosen worker was believed to hold.
	PredictedCachedTokens int `json:"predicted_cached_tokens"`
	// Reported is what the worker's answer said of the prompt
	// (usage.prompt_tokens_details.cached_tokens); nil before the answer, and for
	// answers without it.
	Reported *ReportedUsage `json:"reported"`
}

// ReportedUsage is what a worker reported of a request's prompt.
type ReportedUsage struct {
	PromptTokens int `json:"prompt_tokens"`
	CachedTokens int `json:"cached_tokens"`
}

// Candidate is one candidate's figures at decision time; costs are in blocks and nil
// when not finite: the load guard gives a worker over its bar an infinite total cost
// (LoadGuarded).
type Candidate struct {
	Worker         string   `json:"worker"`
	OverlapBlocks  int      `json:"overlap_blocks"`
	AffinityBlocks int      `json:"affinity_blocks,omitempty"` // routing history
	InFlight       int64    `json:"in_flight"`
	PendingPrefill int64    `json:"pending_prefill_tokens"`
	ActiveBlocks   int64    `json:"active_blocks"`
	PrefillCost    *float64 `json:"prefill_cost"`
	DecodeCost     *float64 `json:"decode_cost"`
	QueueCost      *float64 `json:"queue_cost"`
	TotalCost      *float64 `json:"total_cost"`
	LoadGuarded    bool     `json:"load_guarded"`
}

// TrafficStats is a snapshot of the router's windowed request statistics.
type TrafficStats struct {
	// Start is when the statistics began (the server's creation).
	Start time.Time `json:"start"`
	// Windows has the 1m, 5m and 15m figures, globally and per model.
	Windows []TrafficWindow `json:"windows"`
	// Series has one point per second for the last seconds (router.SeriesSeconds of them), oldest first.
	Series []TrafficPoint `json:"series"`
}

// TrafficWindow is one window's figures.
type TrafficWindow struct {
	// Name is "1m", "5m" or "15m"; Seconds the window's length; Elapsed the part of it
	// the router has been running (rates divide by it).
	Name    string  `json:"name"`
	Seconds int64   `json:"seconds"`
	Elapsed float64 `json:"elapsed_seconds"`
	// Global is every model together; Models is per model name.
	Global TrafficFigures            `json:"global"`
	Models map[string]TrafficFigures `json:"models"`
}

// TrafficFigures are one window's figures for one model, worker or all of them.
type TrafficFigures struct {
	// Finished counts requests that ended in the window (answered, failed or rejected);
	// Errors those among them with status >= 500 or 499 (client gone mid-response).
	Finished uint64 `json:"finished"`
	Errors   uint64 `json:"errors"`
	// Routed counts requests committed to a worker (a response started); Decisions counts
	// routing decisions, one per attempt, retries included (global figures only).
	Routed    uint64 `json:"routed"`
	Decisions uint64 `json:"decisions,omitempty"`
	// PromptTokens is the routed requests' prompt tokens (exact in engine mode, estimated
	// in approx mode); PredictedHitTokens the part of them the index predicted the chosen
	// worker held (leading cached blocks x block size).
	PromptTokens       uint64 `json:"prompt_tokens"`
	PredictedHitTokens uint64 `json:"predicted_hit_tokens"`
	// HitRate is PredictedHitTokens / PromptTokens; nil when no prompt was routed.
	HitRate *float64 `json:"hit_rate"`
	// Reported: over the answers whose usage said how many prompt tokens were cached,
	// the prompt tokens the workers reported, the cached tokens the router predicted
	// and the cached tokens the workers reported; PredictedRate and ReportedRate are the
	// last two over the first (nil without such answers): the router's hit rate side by
	// side with the engines' for the same requests.
	Reported ReportedFigures `json:"reported"`
	// RequestsPerSecond and DecisionsPerSecond are Finished and Decisions over Elapsed.
	RequestsPerSecond  float64 `json:"requests_per_second"`
	DecisionsPerSecond float64 `json:"decisions_per_second,omitempty"`
	// TTFT is the time from a request's arrival at the router to the first response byte
	// sent to its client (for streams, the first chunk), over the window's requests.
	TTFT TTFTFigures `json:"ttft"`
}

// TTFTFigures are time-to-first-byte percentiles in milliseconds, estimated from a
// histogram with 1.4x bins (within one bin of the exact value); nil when Count is 0.
type TTFTFigures struct {
	Count uint64   `json:"count"`
	P50   *float64 `json:"p50_ms"`
	P90   *float64 `json:"p90_ms"`
	P99   *float64 `json:"p99_ms"`
}

// TrafficPoint is one second of global figures, for time-series charts.
type TrafficPoint struct {
	// T is the second, in Unix seconds.
	T                  int64    `json:"t"`
	Finished           uint32   `json:"finished"`
	Routed             uint32   `json:"routed"`
	Decisions          uint32   `json:"decisions"`
	PromptTokens       uint64   `json:"prompt_tokens"`
	PredictedHitTokens uint64   `json:"predicted_hit_tokens"`
	TTFTCount          uint32   `json:"ttft_count"`
	TTFTP50            *float64 `json:"ttft_p50_ms"`
	TTFTP95            *float64 `json:"ttft_p95_ms"`
	// ReportedPromptTokens, ReportedPredictedTokens and ReportedCachedTokens are the
	// second's ReportedFigures sums.
	ReportedPromptTokens    uint64 `json:"reported_prompt_tokens"`
	ReportedPredictedTokens uint64 `json:"reported_predicted_tokens"`
	ReportedCachedTokens    uint64 `json:"reported_cached_tokens"`
}

// ReportedFigures compare predicted and reported cached tokens over the same answers.
type ReportedFigures struct {
	Answers         uint64   `json:"answers"`
	PromptTokens    uint64   `json:"prompt_tokens"`
	PredictedTokens uint64   `json:"predicted_cached_tokens"`
	CachedTokens    uint64   `json:"cached_tokens"`
	PredictedRate   *float64 `json:"predicted_hit_rate"`
	ReportedRate    *float64 `json:"reported_hit_rate"`
}

// WorkerTraffic is one worker's share of the router's traffic.
type WorkerTraffic struct {
	// Routed, PromptTokens and PredictedHitTokens are totals since start; HitRate is
	// their ratio (nil before the first routed prompt).
	Routed             uint64   `json:"routed"`
	Errors             uint64   `json:"errors"`
	PromptTokens       uint64   `json:"prompt_tokens"`
	PredictedHitTokens uint64   `json:"predicted_hit_tokens"`
	HitRate            *float64 `json:"hit_rate"`
	// Reported compares predicted and reported cached tokens since start.
	Reported ReportedFigures `json:"reported"`
	// PredictionDrift is true while the worker reports far fewer cached tokens than
	// predicted (kvroute_router_prediction_drift).
	PredictionDrift bool `json:"prediction_drift"`
	// Window5m is the worker's figures over the last 5 minutes.
	Window5m TrafficFigures `json:"window_5m"`
	// Series is the worker's last seconds (router.SeriesSeconds of them), oldest first.
	Series []TrafficPoint `json:"series,omitempty"`
}
