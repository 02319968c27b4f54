package sim

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// vLLM's histogram buckets (vllm/v1/metrics/loggers.py).
var (
	ttftBuckets = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
		0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0}
	itlBuckets = []float64{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
		1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0}
	e2eBuckets = []float64{0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
		40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0}
)

// metrics are one worker's Prometheus metrics, named as the imitated engine names them.
// Every DP rank registers its own series, told apart by vLLM's "engine" label (the DP
// engine index) or, for SGLang, a "dp_rank" label when there are several ranks.
type metrics struct {
	reg       *prometheus.Registry
	cfg       *Config
	numBlocks int
}

// rankMetrics are the series a request handler observes for one rank.
type rankMetrics struct {
	ttft     prometheus.Observer
	itl      prometheus.Observer
	e2e      prometheus.Observer
	finished *prometheus.CounterVec
}

func newMetrics(cfg *Config, numBlocks int) *metrics {
	return &metrics{reg: prometheus.NewRegistry(), cfg: cfg, numBlocks: numBlocks}
}

// rank registers rank i's series, reading st.
func (m *metrics) rank(i int, st *engineStats) *rankMetrics {
	cfg, reg := m.cfg, m.reg
	sglang := cfg.Engine == "sglang"
	prefix := "vllm:"
	labels := prometheus.Labels{"model_name": cfg.Model, "engine": strconv.Itoa(i)}
	if sglang {
		prefix = "sglang:"
		labels = prometheus.Labels{"model_name": cfg.Model}
		if cfg.DataParallelSize > 1 {
			labels["dp_rank"] = strconv.Itoa(i)
		}
	}
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: prefix + name, Help: help, ConstLabels: labels}, f))
	}
	counter := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: prefix + name, Help: help, ConstLabels: labels}, f))
	}
	usage := func() float64 { return float64(st.usedBlocks.Load()) / float64(m.numBlocks) }
	running := func() float64 { return float64(st.running.Load()) }
	// Requests pulling their KV count as waiting, as vLLM's WAITING_FOR_REMOTE_KVS do.
	waiting := func() float64 { return float64(st.waiting.Load() + st.pdWaiting.Load()) }
	prompt := func() float64 { return float64(st.promptTokens.Load()) }
	generated := func() float64 { return float64(st.generatedTokens.Load()) }
	info := prometheus.Labels{}
	finishedName, finishedHelp := "request_success_total", "Count of successfully processed requests."
	if sglang {
		// python/sglang/srt/metrics/collector.py
		gauge("num_running_reqs", "The number of running requests.", running)
		gauge("num_queue_reqs", "The number of requests in the waiting queue.", waiting)
		gauge("token_usage", "The token usage.", usage)
		counter("prompt_tokens_total", "Number of prefill tokens processed.", prompt)
		counter("generation_tokens_total", "Number of generation tokens processed.", generated)
		counter("cached_tokens_total", "Number of cached prompt tokens.",
			func() float64 { return float64(st.cachedTokens.Load()) })
		info["page_size"], info["num_pages"] = strconv.Itoa(cfg.BlockSize), strconv.Itoa(m.numBlocks)
		if cfg.DataParallelSize > 1 {
			info["dp_rank"] = strconv.Itoa(i)
		}
		finishedName, finishedHelp = "num_requests_total", "Number of finished requests."
	} else {
		// vllm/v1/metrics/loggers.py
		gauge("num_requests_running", "Number of requests in model execution batches.", running)
		gauge("num_requests_waiting", "Number of requests waiting to be processed.", waiting)
		gauge("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage)
		counter("prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.",
			func() float64 { return float64(st.prefixQueries.Load()) })
		counter("prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.",
			func() float64 { return float64(st.prefixHits.Load()) })
		if cfg.CPUBlocks > 0 {
			// The CPU offload tier is vLLM's KV connector: its loads are the external
			// prefix cache's hits (vllm/v1/metrics/loggers.py).
			counter("external_prefix_cache_queries_total", "External prefix cache queries from KV connector cross-instance cache sharing, in terms of number of queried tokens.",
				func() float64 { return float64(st.prefixQueries.Load()) })
			counter("external_prefix_cache_hits_total", "External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached tokens.",
				func() float64 { return float64(st.cpuLoadedTokens.Load()) })
		}
		counter("num_preemptions_total", "Cumulative number of preemption from the engine.",
			func() float64 { return float64(st.preemptions.Load()) })
		counter("prompt_tokens_total", "Number of prefill tokens processed.", prompt)
		counter("generation_tokens_total", "Number of generation tokens processed.", generated)
		info["engine"], info["block_size"], info["num_gpu_blocks"] = strconv.Itoa(i), strconv.Itoa(cfg.BlockSize), strconv.Itoa(m.numBlocks)
		info["enable_prefix_caching"], info["cache_dtype"] = "True", "auto"
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: prefix + "cache_config_info", Help: "Information of the cache config.", ConstLabels: info,
	}, func() float64 { return 1 }))
	h := func(name, help string, b []float64) prometheus.Observer {
		v := prometheus.NewHistogram(prometheus.HistogramOpts{Name: prefix + name, Help: help, Buckets: b, ConstLabels: labels})
		reg.MustRegister(v)
		return v
	}
	rm := &rankMetrics{
		ttft: h("time_to_first_token_seconds", "Histogram of time to first token in seconds.", ttftBuckets),
		itl:  h("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", itlBuckets),
		e2e:  h("e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", e2eBuckets),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + finishedName, Help: finishedHelp, ConstLabels: labels,
		}, []string{"finished_reason"}),
	}
	reg.MustRegister(rm.finished)
	return rm
}
