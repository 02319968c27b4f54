#!/usr/bin/env python3
"""Engine /metrics bodies rendered by prometheus_client, the library vLLM and SGLang
expose their metrics with, registered with the names, types and label sets of their
sources (vllm/v1/metrics/loggers.py PrometheusStatLogger; the v0 names for "vllm-old";
python/sglang/srt/metrics/collector.py). Used by the scrape package's tests (through
Debian's python3-prometheus-client, scripts/deps.d/40-scrape.sh) and to regenerate the
committed bodies in this directory:

    engine_metrics.py SPEC_JSON            print the text exposition (format 0.0.4)
    engine_metrics.py SPEC_JSON --openmetrics   print the OpenMetrics exposition
    engine_metrics.py SPEC_JSON --serve    serve GET /metrics on 127.0.0.1, an ephemeral
                                           port printed on stdout; exit when stdin closes

SPEC_JSON: {"engine": "vllm" | "vllm-old" | "sglang" | "sglang-gauges",
            "model": "meta-llama/Llama-3.1-8B-Instruct", "block_size": 16,
            "ranks": [{"running": 3, "waiting": 1, "usage": 0.25, "queries": 1000,
                       "hits": 400, "blocks": 27000}, ...]}
One entry in "ranks" per data-parallel engine; "blocks": null renders "None", as vLLM
does before it has profiled memory. The engines pass multiprocess_mode="mostrecent" to
their gauges; it only matters with PROMETHEUS_MULTIPROC_DIR and Debian's client (0.16)
does not know it, so it is left out.
"""

import json
import os
import sys
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import prometheus_client as pc
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.openmetrics import exposition as om

TTFT = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
        5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
TPOT = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
        7.5, 10.0, 20.0, 40.0, 80.0]
LAT = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
       120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]


def buckets_125(max_value):
    out, exp = [], 0
    while True:
        for m in (1, 2, 5):
            v = m * 10 ** exp
            if v > max_value:
                return out
            out.append(v)
        exp += 1


def observe_some(h, scale):
    for i in range(1, 6):
        h.observe(scale * i)


def vllm(reg, spec):
    model, ranks = spec["model"], spec["ranks"]
    names = ["model_name", "engine"]

    def per_engine(metric):
        return [metric.labels(model, str(i)) for i in range(len(ranks))]

    g = lambda n, d: per_engine(Gauge(n, d, names, registry=reg))
    c = lambda n, d: per_engine(Counter(n, d, names, registry=reg))
    running = g("vllm:num_requests_running", "Number of requests in model execution batches.")
    waiting = g("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
    gpu_usage = g("vllm:gpu_cache_usage_perc",
                  "GPU KV-cache usage. 1 means 100 percent usage.DEPRECATED: Use vllm:kv_cache_usage_perc instead.")
    gpu_q = c("vllm:gpu_prefix_cache_queries",
              "GPU prefix cache queries, in terms of number of queriedtokens. DEPRECATED: Use vllm:prefix_cache_queries instead.")
    gpu_h = c("vllm:gpu_prefix_cache_hits",
              "GPU prefix cache hits, in terms of number of cached tokens. DEPRECATED: Use vllm:prefix_cache_hits instead.")
    usage = g("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
    queries = c("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.")
    hits = c("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.")
    preempt = c("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
    prompt = c("vllm:prompt_tokens", "Number of prefill tokens processed.")
    gen = c("vllm:generation_tokens", "Number of generation tokens processed.")
    success = Counter("vllm:request_success", "Count of successfully processed requests.",
                      names + ["finished_reason"], registry=reg)
    max_len = 131072
    hists = [
        ("vllm:request_prompt_tokens", "Number of prefill tokens processed.", buckets_125(max_len), 900),
        ("vllm:request_generation_tokens", "Number of generation tokens processed.", buckets_125(max_len), 120),
        ("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
         [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384], 40),
        ("vllm:request_max_num_generation_tokens", "Histogram of maximum number of requested generation tokens.",
         buckets_125(max_len), 256),
        ("vllm:request_params_n", "Histogram of the n request parameter.", [1, 2, 5, 10, 20], 1),
        ("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", buckets_125(max_len), 256),
        ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT, 0.05),
        ("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.", TPOT, 0.02),
        ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", LAT, 1.1),
        ("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", LAT, 0.01),
        ("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.", LAT, 1.0),
        ("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", LAT, 0.05),
        ("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", LAT, 0.9),
    ]
    hist_children = []
    for name, doc, b, scale in hists:
        hist_children.append((per_engine(Histogram(name, doc, names, buckets=b, registry=reg)), scale))
    info = Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                 ["block_size", "gpu_memory_utilization", "swap_space", "cache_dtype",
                  "is_attention_free", "num_gpu_blocks_override", "sliding_window",
                  "enable_prefix_caching", "prefix_caching_hash_algo", "cpu_offload_gb",
                  "calculate_kv_scales", "kv_sharing_fast_prefill", "mamba_page_size_padded",
                  "num_gpu_blocks", "num_cpu_blocks", "engine"],
                 registry=reg)
    for i, r in enumerate(ranks):
        running[i].set(r["running"])
        waiting[i].set(r["waiting"])
        gpu_usage[i].set(r["usage"])
        usage[i].set(r["usage"])
        for q in (gpu_q, queries):
            q[i].inc(r["queries"])
        for h in (gpu_h, hits):
            h[i].inc(r["hits"])
        preempt[i].inc(0)
        prompt[i].inc(r["queries"])
        gen[i].inc(r["queries"] // 7)
        for reason in ("stop", "length", "abort"):
            success.labels(model, str(i), reason).inc(3 if reason == "stop" else 0)
        for children, scale in hist_children:
            observe_some(children[i], scale)
        info.labels(str(spec["block_size"]), "0.9", "4", "auto", "False", "None", "None",
                    "True", "sha256", "0", "False", "False", "None",
                    str(r["blocks"]), "0", str(i)).set(1)


def vllm_old(reg, spec):
    """vLLM v0 (0.6): one engine, no engine label, the old cache-usage name."""
    model, r = spec["model"], spec["ranks"][0]
    names = ["model_name"]
    Gauge("vllm:num_requests_running", "Number of requests currently running on GPU.", names,
          registry=reg).labels(model).set(r["running"])
    Gauge("vllm:num_requests_swapped", "Number of requests swapped to CPU.", names,
          registry=reg).labels(model).set(0)
    Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", names,
          registry=reg).labels(model).set(r["waiting"])
    Gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", names,
          registry=reg).labels(model).set(r["usage"])
    Gauge("vllm:cpu_cache_usage_perc", "CPU KV-cache usage. 1 means 100 percent usage.", names,
          registry=reg).labels(model).set(0)
    Gauge("vllm:gpu_prefix_cache_hit_rate", "GPU prefix cache block hit rate.", names,
          registry=reg).labels(model).set(r["hits"] / max(r["queries"], 1))
    Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", names,
            registry=reg).labels(model).inc(r["queries"])
    h = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                  names, buckets=TTFT, registry=reg)
    observe_some(h.labels(model), 0.05)
    Gauge("vllm:cache_config_info", "Information of cache_config",
          ["block_size", "cache_dtype", "cpu_offload_gb", "enable_prefix_caching",
           "gpu_memory_utilization", "num_cpu_blocks", "num_gpu_blocks",
           "num_gpu_blocks_override", "sliding_window", "swap_space_bytes"],
          registry=reg).labels(str(spec["block_size"]), "auto", "0", "False", "0.9", "2048",
                               str(r["blocks"]), "None", "None", "4294967296").set(1)


def sglang(reg, spec, gauges):
    model, ranks = spec["model"], spec["ranks"]
    multi = len(ranks) > 1
    names = ["model_name"] + (["dp_rank"] if multi else [])

    def lab(m, i):
        return m.labels(model, str(i)) if multi else m.labels(model)

    def g(n, d):
        return Gauge(n, d, names, registry=reg)

    running = g("sglang:num_running_reqs", "The number of running requests.")
    used = g("sglang:num_used_tokens", "The number of used tokens.")
    usage = g("sglang:token_usage", "The token usage.")
    tput = g("sglang:gen_throughput", "The generation throughput (token/s).")
    queue = g("sglang:num_queue_reqs", "The number of requests in the waiting queue.")
    hit_rate = g("sglang:cache_hit_rate", "The prefix cache hit rate.")
    max_tokens = g("sglang:max_total_num_tokens", "Maximum total number of tokens in the KV cache pool.")
    prompt = Counter("sglang:prompt_tokens", "Number of prefill tokens processed.", names, registry=reg)
    gen = Counter("sglang:generation_tokens", "Number of generation tokens processed.", names, registry=reg)
    cached = Counter("sglang:cached_tokens", "Number of cached prompt tokens.", names, registry=reg)
    nreq = Counter("sglang:num_requests", "Number of requests processed.", names, registry=reg)
    ttft = Histogram("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                     names, buckets=TTFT, registry=reg)
    e2e = Histogram("sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in seconds",
                    names, buckets=LAT, registry=reg)
    itl = Histogram("sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                    names, buckets=TPOT, registry=reg)
    if gauges:
        page = g("sglang:page_size", "KV cache page size in tokens.")
        pages = g("sglang:num_pages", "Number of KV cache pages.")
    else:
        info = Gauge("sglang:cache_config_info", "Information of the cache config.",
                     names + ["page_size", "num_pages"], registry=reg)
    bs = spec["block_size"]
    for i, r in enumerate(ranks):
        lab(running, i).set(r["running"])
        lab(used, i).set(int(r["usage"] * r["blocks"] * bs))
        lab(usage, i).set(r["usage"])
        lab(tput, i).set(812.5)
        lab(queue, i).set(r["waiting"])
        lab(hit_rate, i).set(r["hits"] / max(r["queries"], 1))
        lab(max_tokens, i).set(r["blocks"] * bs)
        lab(prompt, i).inc(r["queries"])
        lab(gen, i).inc(r["queries"] // 7)
        lab(cached, i).inc(r["hits"])
        lab(nreq, i).inc(5)
        observe_some(lab(ttft, i), 0.05)
        observe_some(lab(e2e, i), 1.1)
        observe_some(lab(itl, i), 0.02)
        if gauges:
            lab(page, i).set(bs)
            lab(pages, i).set(r["blocks"])
        else:
            labels = ([model, str(i)] if multi else [model]) + [str(bs), str(r["blocks"])]
            info.labels(*labels).set(1)


def build(spec):
    reg = pc.CollectorRegistry()
    # vLLM and SGLang serve the default registry, which holds these collectors too.
    pc.ProcessCollector(registry=reg)
    pc.PlatformCollector(registry=reg)
    pc.GCCollector(registry=reg)
    engine = spec["engine"]
    if engine == "vllm":
        vllm(reg, spec)
    elif engine == "vllm-old":
        vllm_old(reg, spec)
    elif engine in ("sglang", "sglang-gauges"):
        sglang(reg, spec, engine == "sglang-gauges")
    else:
        raise SystemExit(f"unknown engine {engine!r}")
    return reg


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def main():
    spec = json.loads(sys.argv[1])
    reg = build(spec)
    if "--serve" in sys.argv:
        # make_wsgi_app negotiates the format from Accept and gzips on Accept-Encoding,
        # as prometheus_client's own server does.
        httpd = make_server("127.0.0.1", 0, pc.make_wsgi_app(reg), handler_class=QuietHandler)
        print(httpd.server_port, flush=True)

        def watch_stdin():
            sys.stdin.read()
            os._exit(0)

        threading.Thread(target=watch_stdin, daemon=True).start()
        httpd.serve_forever()
    elif "--openmetrics" in sys.argv:
        sys.stdout.write(om.generate_latest(reg).decode())
    else:
        sys.stdout.write(pc.generate_latest(reg).decode())


if __name__ == "__main__":
    main()
