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
type metrics struct {
	reg      *prometheus.Registry
	ttft     prometheus.Observer
	itl      prometheus.Observer
	e2e      prometheus.Observer
	finished *prometheus.CounterVec
}

func newMetrics(cfg *Config, numBlocks int, st *engineStats) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{reg: reg}
	if cfg.Engine == "sglang" {
		m.sglang(cfg, numBlocks, st)
		return m
	}
	labels := prometheus.Labels{"model_name": cfg.Model, "engine": "0"}
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, f))
	}
	counter := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, f))
	}
	gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
		func() float64 { return float64(st.running.Load()) })
	gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
		func() float64 { return float64(st.waiting.Load()) })
	gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
		func() float64 { return float64(st.usedBlocks.Load()) / float64(numBlocks) })
	counter("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.",
		func() float64 { return float64(st.prefixQueries.Load()) })
	counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.",
		func() float64 { return float64(st.prefixHits.Load()) })
	counter("vllm:num_preemptions_total", "Cumulative number of preemption from the engine.",
		func() float64 { return float64(st.preemptions.Load()) })
	counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.",
		func() float64 { return float64(st.promptTokens.Load()) })
	counter("vllm:generation_tokens_total", "Number of generation tokens processed.",
		func() float64 { return float64(st.generatedTokens.Load()) })
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "vllm:cache_config_info", Help: "Information of the LLMEngine CacheConfig",
		ConstLabels: prometheus.Labels{
			"engine": "0", "block_size": strconv.Itoa(cfg.BlockSize), "num_gpu_blocks": strconv.Itoa(numBlocks),
			"enable_prefix_caching": "True", "cache_dtype": "auto",
		},
	}, func() float64 { return 1 }))
	m.histograms("vllm:", labels)
	m.finished = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vllm:request_success_total", Help: "Count of successfully processed requests.", ConstLabels: labels,
	}, []string{"finished_reason"})
	reg.MustRegister(m.finished)
	return m
}

func (m *metrics) histograms(prefix string, labels prometheus.Labels) {
	h := func(name, help string, b []float64) prometheus.Observer {
		v := prometheus.NewHistogram(prometheus.HistogramOpts{Name: prefix + name, Help: help, Buckets: b, ConstLabels: labels})
		m.reg.MustRegister(v)
		return v
	}
	m.ttft = h("time_to_first_token_seconds", "Histogram of time to first token in seconds.", ttftBuckets)
	m.itl = h("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", itlBuckets)
	m.e2e = h("e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", e2eBuckets)
}

// sglang registers SGLang's names for the same gauges (python/sglang/srt/metrics).
func (m *metrics) sglang(cfg *Config, numBlocks int, st *engineStats) {
	labels := prometheus.Labels{"model_name": cfg.Model}
	gauge := func(name, help string, f func() float64) {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, f))
	}
	counter := func(name, help string, f func() float64) {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, f))
	}
	gauge("sglang:num_running_reqs", "The number of running requests.",
		func() float64 { return float64(st.running.Load()) })
	gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.",
		func() float64 { return float64(st.waiting.Load()) })
	gauge("sglang:token_usage", "The token usage.",
		func() float64 { return float64(st.usedBlocks.Load()) / float64(numBlocks) })
	counter("sglang:prompt_tokens_total", "Number of prefill tokens processed.",
		func() float64 { return float64(st.promptTokens.Load()) })
	counter("sglang:generation_tokens_total", "Number of generation tokens processed.",
		func() float64 { return float64(st.generatedTokens.Load()) })
	counter("sglang:cached_tokens_total", "Number of cached prompt tokens.",
		func() float64 { return float64(st.cachedTokens.Load()) })
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sglang:cache_config_info", Help: "Information of the cache config.",
		ConstLabels: prometheus.Labels{"page_size": strconv.Itoa(cfg.BlockSize), "num_pages": strconv.Itoa(numBlocks)},
	}, func() float64 { return 1 }))
	m.histograms("sglang:", labels)
	m.finished = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sglang:num_requests_total", Help: "Number of finished requests.", ConstLabels: labels,
	}, []string{"finished_reason"})
	m.reg.MustRegister(m.finished)
}
