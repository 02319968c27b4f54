package proxy

import (
	"fmt"
	"math"
	"strings"
)

// Markdown renders the report as a self-contained markdown section whose top heading
// has the given level (2 gives "## Proxy overhead").
func (r *Report) Markdown(level int) string {
	h := func(n int) string { return strings.Repeat("#", level+n) + " " }
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	p("%sProxy overhead\n\n", h(0))
	p("Measured %s to %s UTC with:\n\n```sh\n%s\n```\n\n", r.Started.Format("2006-01-02 15:04"), r.Finished.Format("15:04"), r.Command)
	m := r.Machine
	p("**Machine:** %s, %d cores, Linux %s, %s", m.CPUModel, m.Cores, m.Kernel, m.GoVersion)
	if m.Nginx != "" {
		p(", %s", m.Nginx)
	}
	if m.Kvroute != "" {
		p(", %s", m.Kvroute)
	}
	p(". Load average before %s, after %s.", m.LoadBefore, m.LoadAfter)
	var others, wall float64
	for _, w := range r.Windows {
		others += w.CPU.Others
		wall += w.WallS
	}
	if wall > 0 {
		p(" Other processes on the machine (not part of the benchmark) used %.2f of the %d cores on average during the measured windows.", others/wall, m.Cores)
	}
	p("\n\n")
	s := r.Settings
	p("**Setup:** every process on loopback on the same cores. Fake upstream: one Go process (fasthttp) serving %d workers on separate ports, answering at once (non-streaming: a %d-byte chat completion; streaming: %d vLLM-shaped SSE chunks and `[DONE]`, flushed one by one, gap %s", s.Workers, s.CompletionBytes, s.Chunks, s.ChunkGap)
	if s.Tokenize {
		p("; vLLM's `POST /tokenize` served with fake token ids")
	} else {
		p("; **no** `/tokenize` (404)")
	}
	p("). ")
	p("Targets: **direct** (the generator spreads requests over the workers itself), **kvroute** (built binary, `serve --policy %s", s.Policy)
	if s.KvrouteTokenize != "" {
		p(" --tokenize %s", s.KvrouteTokenize)
	}
	p("`, default config otherwise)")
	if s.NginxWorkers > 0 {
		p(", **nginx** (round-robin `upstream` with `keepalive`, `proxy_buffering off`, `worker_processes %d`, no access log)", s.NginxWorkers)
	}
	p(". Load generator: open loop, evenly spaced arrivals at a fixed rate, each request sent at its scheduled time whatever the state of earlier ones; latency is measured from the **scheduled** send time (no coordinated omission); request body %d bytes. ", s.RequestBytes)
	p("Percentiles are exact nearest-rank values over all successful samples (sorted slice, no histogram). ")
	if s.PeakConns > 0 {
		p("**Peak run:** first each target's peak, %d clients in a closed loop (each sends its next request when its answer has ended, as `wrk -c%d`), one target per %.0f s window (%.0f s warm-up), %d rounds, target order rotated; then the latency windows below, each workload offered at half of the peak named with it. ", s.PeakConns, s.PeakConns, s.DurationS, s.WarmupS, s.Rounds)
	}
	if s.Mode == ModeMixed {
		p("Mode **mixed**: all targets are measured in the same windows, request i going to target i mod n, each target at the offered rate below (the machine carries n times that rate in all), so drift and other people's load reach every target alike; the proxies also compete with each other for the cores. The upstream, loadgen and others CPU columns are for the whole window, all targets together. ")
		p("%d rounds x %.0f s per workload (%.0f s warm-up before each window), target order rotated every round. ", s.Rounds, s.DurationS, s.WarmupS)
	} else {
		p("Mode **sequential**: one target per window, %d rounds x %.0f s per target per workload (%.0f s warm-up before each window), target order rotated every round. ", s.Rounds, s.DurationS, s.WarmupS)
	}
	p("CPU is utime+stime from /proc/PID/stat over each window (nginx: master + workers); shares are in cores (CPU-seconds per wall second). Added latency = the target's percentile minus direct's at the same percentile.\n\n")

	if len(r.PeakSummaries) > 0 {
		r.peakMarkdown(p, h(1))
	}
	for _, w := range s.Workloads {
		kind := "non-streaming"
		if w.Stream {
			kind = fmt.Sprintf("streaming, %d chunks", s.Chunks)
		}
		p("%s%s (%s, %.0f req/s offered per target", h(1), w.Name, kind, w.Rate)
		if b := r.PeakBasis[w.Name]; b != "" {
			p(": %s", b)
		}
		p(")\n\n")
		if w.Stream {
			p("| target | ok / sent | first chunk p50 / p90 / p99 (µs) | full p50 / p90 / p99 / max (µs) | added first chunk p50 / p99 | added full p50 / p99 | req/s per proxy CPU-s | proxy CPU | upstream CPU | loadgen CPU | others CPU | gen. lateness p50 / p99 |\n")
			p("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		} else {
			p("| target | ok / sent | p50 / p90 / p99 / max (µs) | added p50 / p99 (µs) | req/s per proxy CPU-s | proxy CPU | upstream CPU | loadgen CPU | others CPU | gen. lateness p50 / p99 |\n")
			p("|---|---|---|---|---|---|---|---|---|---|\n")
		}
		for _, su := range r.Summaries {
			if su.Workload != w.Name {
				continue
			}
			full := fmt.Sprintf("%.0f / %.0f / %.0f / %.0f", su.Latency.P50, su.Latency.P90, su.Latency.P99, su.Latency.Max)
			addEnd, addFirst := "-", "-"
			for _, a := range r.Added {
				if a.Workload == w.Name && a.Target == su.Target {
					v := fmt.Sprintf("%+.0f / %+.0f", a.P50, a.P99)
					if a.Metric == "first_chunk" {
						addFirst = v
					} else {
						addEnd = v
					}
				}
			}
			eff := "-"
			if su.PerProxyCPU > 0 {
				eff = fmt.Sprintf("%.0f", su.PerProxyCPU)
			}
			share := func(c float64) string { return fmt.Sprintf("%.2f", c/su.WallS) }
			proxyCPU := "-"
			if su.Target != "direct" {
				proxyCPU = share(su.CPU.Proxy)
			}
			late := fmt.Sprintf("%.0f / %.0f µs", su.Lateness.P50, su.Lateness.P99)
			if w.Stream && su.First != nil {
				first := fmt.Sprintf("%.0f / %.0f / %.0f", su.First.P50, su.First.P90, su.First.P99)
				p("| %s | %d / %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", su.Target, su.OK, su.Sent, first, full, addFirst, addEnd, eff,
					proxyCPU, share(su.CPU.Upstream), share(su.CPU.Loadgen), share(su.CPU.Others), late)
			} else {
				p("| %s | %d / %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", su.Target, su.OK, su.Sent, full, addEnd, eff,
					proxyCPU, share(su.CPU.Upstream), share(su.CPU.Loadgen), share(su.CPU.Others), late)
			}
		}
		p("\n")
	}

	if len(r.Goals) > 0 {
		issue := "2"
		if s.PeakConns > 0 {
			issue = "21"
		}
		p("%sGoals (issue %s): kvroute against nginx\n\n", h(1), issue)
		p("Ratio and met use the percentiles pooled over all rounds; per-round ratios and their median are shown because a stall of the shared machine in one round dominates pooled p99s.\n\n")
		p("| workload | measure | kvroute | nginx | ratio (pooled) | goal | met | per-round ratios | median |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, g := range r.Goals {
			ratio, met := "n/a", "n/a (nginx value not positive)"
			if !math.IsNaN(g.Ratio) {
				ratio = fmt.Sprintf("%.2f", g.Ratio)
			}
			if g.Met != nil {
				met = map[bool]string{true: "yes", false: "**no**"}[*g.Met]
			}
			unit := " µs"
			if strings.HasPrefix(g.Name, "req/s") {
				unit = ""
			}
			var rounds []string
			for _, v := range g.RoundRatios {
				rounds = append(rounds, fmtRatio(v))
			}
			p("| %s | %s | %.0f%s | %.0f%s | %s | %s | %s | %s | %s |\n", g.Workload, g.Name, g.Kvroute, unit, g.Nginx, unit, ratio, g.Want, met,
				strings.Join(rounds, ", "), fmtRatio(g.Median))
		}
		p("\n")
	}

	p("%sPer round (drift check)\n\n", h(1))
	p("p99 to the full response in µs, and the proxy's req/s per CPU-second, per round.\n\n")
	p("| workload | target |")
	for i := 1; i <= s.Rounds; i++ {
		p(" round %d p99 | round %d req/s/CPU-s |", i, i)
	}
	p("\n|---|---|%s\n", strings.Repeat("---|---|", s.Rounds))
	for _, su := range r.Summaries {
		p("| %s | %s |", su.Workload, su.Target)
		for i := 1; i <= s.Rounds; i++ {
			cell, eff := "-", "-"
			for _, w := range r.Windows {
				if w.Workload == su.Workload && w.Target == su.Target && w.Round == i {
					cell = fmt.Sprintf("%.0f", w.Latency.P99)
					if w.CPU.Proxy > 0 {
						eff = fmt.Sprintf("%.0f", float64(w.OK)/w.CPU.Proxy)
					}
				}
			}
			p(" %s | %s |", cell, eff)
		}
		p("\n")
	}
	p("\n")

	var failed []string
	for _, w := range r.Windows {
		for e, n := range w.Errors {
			failed = append(failed, fmt.Sprintf("round %d %s %s: %d x %s", w.Round, w.Workload, w.Target, n, e))
		}
	}
	if len(failed) > 0 {
		p("Failed requests (excluded from the latencies):\n\n")
		for _, f := range failed {
			p("- %s\n", f)
		}
		p("\n")
	}

	for _, pr := range r.Profiles {
		p("%skvroute CPU profile, %s (perf, taken after the measurement)\n\nSelf time:\n\n```text\n%s\n```\n\nInclusive (self and callees):\n\n```text\n%s\n```\n\n", h(1), pr.Workload, pr.Self, pr.Inclusive)
	}
	return b.String()
}

// peakMarkdown renders the peak windows: throughput, latency under saturation and the
// proxy's CPU per request, pooled and per round.
func (r *Report) peakMarkdown(p func(string, ...any), heading string) {
	p("%sPeak (closed loop, %d clients)\n\n", heading, r.Settings.PeakConns)
	p("Throughput is successful requests per wall second; latency is from each request's actual send time (a closed loop has no schedule).\n\n")
	p("| workload | target | ok | peak req/s | p50 / p99 (µs) | proxy CPU | upstream CPU | loadgen CPU | others CPU | req/s per proxy CPU-s | per round |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, su := range r.PeakSummaries {
		share := func(c float64) string { return fmt.Sprintf("%.2f", c/su.WallS) }
		eff, proxyCPU := "-", "-"
		if su.PerProxyCPU > 0 {
			eff, proxyCPU = fmt.Sprintf("%.0f", su.PerProxyCPU), share(su.CPU.Proxy)
		}
		var rounds []string
		for _, w := range r.Peaks {
			if w.Workload == su.Workload && w.Target == su.Target {
				v := fmt.Sprintf("%.0f req/s", float64(w.OK)/w.WallS)
				if w.CPU.Proxy > 0 {
					v += fmt.Sprintf(", %.0f/CPU-s", float64(w.OK)/w.CPU.Proxy)
				}
				rounds = append(rounds, v)
			}
		}
		p("| %s | %s | %d / %d | %.0f | %.0f / %.0f | %s | %s | %s | %s | %s | %s |\n", su.Workload, su.Target, su.OK, su.Sent, su.Throughput,
			su.Latency.P50, su.Latency.P99, proxyCPU, share(su.CPU.Upstream), share(su.CPU.Loadgen), share(su.CPU.Others), eff, strings.Join(rounds, "; "))
	}
	p("\n")
}

func fmtRatio(v float64) string {
	if math.IsNaN(v) {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", v)
}
