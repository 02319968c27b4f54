package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kvroute/kvroute/bench/proxy"
)

func init() {
	register(command{name: "proxy", summary: "proxy overhead: direct vs kvroute vs nginx on loopback (bench/RESULTS.md)", run: runProxy})
	register(command{name: "fake-upstream", summary: "serve the instant fake worker of the proxy benchmark", run: func(args []string, _, stderr io.Writer) int {
		return proxy.UpstreamMain(args, stderr)
	}})
}

func runProxy(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "bench/out/proxy", "output `DIR`: results.md, results.json, and work/ (nginx.conf, profiles)")
	kvroute := fs.String("kvroute", "bin/kvroute", "kvroute `BINARY` to measure; \"none\" leaves kvroute out")
	nginx := fs.String("nginx", "auto", "nginx `BINARY`; \"auto\" looks in PATH and /usr/sbin, \"none\" leaves nginx out")
	perf := fs.String("perf", "none", "perf `BINARY` to profile kvroute after the measurement; \"auto\" looks in PATH, \"none\" skips")
	mode := fs.String("mode", proxy.ModeMixed, "mixed: all targets in the same windows, requests alternating; sequential: one target per window")
	rounds := fs.Int("rounds", 3, "rounds; every target is measured once per workload per round, in rotated order")
	duration := fs.Duration("duration", 20*time.Second, "measured window per target, workload and round")
	warmup := fs.Duration("warmup", 2*time.Second, "unmeasured load before each window")
	chatRate := fs.Float64("chat-rate", proxy.DefaultWorkloads[0].Rate, "offered load of the non-streaming workload, req/s (0 skips it)")
	streamRate := fs.Float64("stream-rate", proxy.DefaultWorkloads[1].Rate, "offered load of the streaming workload, req/s (0 skips it)")
	chunks := fs.Int("chunks", 200, "SSE chunks per streaming answer")
	chunkGap := fs.Duration("chunk-gap", 0, "fake upstream's pause between chunks")
	noTokenize := fs.Bool("no-tokenize", false, "fake upstream answers 404 to /tokenize (a worker without vLLM's tokenizer endpoint)")
	workers := fs.Int("workers", 2, "fake workers the proxies balance over")
	policy := fs.String("policy", "round_robin", "kvroute's routing `POLICY` (serve --policy)")
	tokenize := fs.String("tokenize", "", "kvroute's tokenize `MODE` (serve --tokenize: auto, engine, approx, local:PATH); empty: kvroute's default")
	dataPlane := fs.String("data-plane", "", "kvroute's data plane (serve --data-plane: fasthttp, event_loop); empty: kvroute's default")
	loops := fs.Int("data-plane-loops", 0, "kvroute's event loops (serve --data-plane-loops); 0: kvroute's default")
	nginxWorkers := fs.Int("nginx-workers", 0, "nginx worker_processes (0: one per core)")
	peak := fs.Bool("peak", false, "measure each target's peak first (closed loop, --peak-conns clients, one target per window), then latency at half of nginx's peak (sequential; the rate flags only skip a workload when 0)")
	peakConns := fs.Int("peak-conns", 16, "closed-loop clients of a peak window (as wrk -c)")
	profileDur := fs.Duration("profile-duration", 10*time.Second, "length of each kvroute profile")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "kvbench proxy:", err)
		return 1
	}
	cfg := proxy.Config{
		Mode: *mode, Rounds: *rounds, Duration: *duration, Warmup: *warmup, Chunks: *chunks, ChunkGap: *chunkGap,
		NoTokenize: *noTokenize, Workers: *workers, NginxWorkers: *nginxWorkers, ProfileDuration: *profileDur,
		Policy: *policy, Tokenize: *tokenize, DataPlane: *dataPlane, DataPlaneLoops: *loops, Peak: *peak, PeakConns: *peakConns,
		Upstream: proxy.Command{Argv: []string{self, "fake-upstream"}},
		Dir:      filepath.Join(*out, "work"),
		Log:      stderr,
	}
	if *chatRate > 0 {
		cfg.Workloads = append(cfg.Workloads, proxy.Workload{Name: proxy.DefaultWorkloads[0].Name, Rate: *chatRate})
	}
	if *streamRate > 0 {
		cfg.Workloads = append(cfg.Workloads, proxy.Workload{Name: proxy.DefaultWorkloads[1].Name, Stream: true, Rate: *streamRate})
	}
	if len(cfg.Workloads) == 0 {
		fmt.Fprintln(stderr, "kvbench proxy: both rates are 0: nothing to measure")
		return 2
	}
	if *kvroute != "none" {
		cfg.Kvroute = &proxy.Command{Argv: []string{*kvroute}}
	}
	if cfg.Nginx, err = findBinary(*nginx, "nginx", "/usr/sbin/nginx"); err != nil {
		fmt.Fprintln(stderr, "kvbench proxy:", err)
		return 1
	}
	if cfg.Nginx == "" && *nginx != "none" {
		fmt.Fprintln(stderr, "kvbench proxy: nginx not found (install it with scripts/apt.sh nginx); measuring without it")
	}
	if cfg.Perf, err = findBinary(*perf, "perf"); err != nil {
		fmt.Fprintln(stderr, "kvbench proxy:", err)
		return 1
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		fmt.Fprintln(stderr, "kvbench proxy:", err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := proxy.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "kvbench proxy:", err)
		return 1
	}
	rep.Command = "kvbench proxy " + strings.Join(args, " ")
	md := rep.Markdown(2)
	js, err := rep.JSON()
	if err != nil {
		fmt.Fprintln(stderr, "kvbench proxy:", err)
		return 1
	}
	for name, b := range map[string][]byte{"results.md": []byte(md), "results.json": js} {
		if err := os.WriteFile(filepath.Join(*out, name), b, 0o644); err != nil {
			fmt.Fprintln(stderr, "kvbench proxy:", err)
			return 1
		}
	}
	fmt.Fprint(stdout, md)
	return 0
}

// findBinary resolves a binary flag: "none" is "", "auto" looks name up in PATH and
// then in the fallbacks (not finding it is not an error), anything else must exist.
func findBinary(flagValue, name string, fallbacks ...string) (string, error) {
	switch flagValue {
	case "none", "":
		return "", nil
	case "auto":
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		for _, f := range fallbacks {
			if _, err := os.Stat(f); err == nil {
				return f, nil
			}
		}
		return "", nil
	}
	if _, err := os.Stat(flagValue); err != nil {
		return "", fmt.Errorf("--%s: %w", name, err)
	}
	return flagValue, nil
}
