package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kvroute/kvroute/bench/report"
	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/bench/workload"
	"github.com/kvroute/kvroute/configs"
)

func init() {
	register(command{name: "run", summary: "replay a workload against a kvsim fleet under each routing policy (bench/RESULTS.md)", run: runRun})
}

func runRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kind := fs.String("workload", "multi-turn", "workload: mooncake, shared-prefix or multi-turn")
	trace := fs.String("trace", "bench/workload/testdata/mooncake_head.jsonl", "Mooncake-format trace `FILE` (mooncake workload)")
	skip := fs.Int("skip", 0, "drop the first N trace records (timestamps then count from the first kept one)")
	limit := fs.Int("limit", 0, "replay only the first N trace records after --skip (0: all)")
	maxOut := fs.Int("max-output", 0, "cap trace output lengths (0: as in the trace)")
	speedup := fs.Float64("speedup", 1, "divide trace timestamps (and every arrival) by this factor")
	rate := fs.Float64("rate", 4, "Poisson arrivals per second: conversations (multi-turn) or prompts (shared-prefix)")
	seed := fs.Uint64("seed", 1, "seed of the generated workloads")
	users := fs.Int("users", 64, "multi-turn: conversations")
	rounds := fs.Int("rounds", 6, "multi-turn: rounds per conversation")
	groups := fs.Int("groups", 8, "groups of shared system prompts (multi-turn and shared-prefix)")
	prompts := fs.Int("prompts", 5, "shared-prefix: prompts per group")
	system := fs.Int("system", 2000, "system prompt tokens")
	question := fs.Int("question", 200, "question tokens per prompt or turn")
	output := fs.Int("output", 100, "output tokens per request (multi-turn and shared-prefix)")
	think := fs.Duration("think", 3*time.Second, "multi-turn: time between a conversation's turns")
	workers := fs.Int("workers", 8, "simulated workers")
	profile := fs.String("profile", "llama-3.1-8b-h100", "kvsim latency profile")
	timeScale := fs.Float64("time-scale", 0.1, "kvsim time scale (0.1: ten times faster than modelled)")
	maxModelLen := fs.Int("max-model-len", 131072, "kvsim max_model_len: longest prompt plus output a worker accepts")
	chunk := fs.Int("stream-chunk-tokens", 1, "kvsim: tokens per streamed chunk at most (more cuts the fleet's and router's CPU per output token)")
	kvBlocks := fs.Int("kv-blocks", 0, "KV capacity per worker in 16-token blocks (0: the profile's)")
	cpuBlocks := fs.Int("cpu-blocks", 0, "kvsim CPU offload tier per worker in blocks (0: none)")
	cpuBandwidth := fs.Float64("cpu-bandwidth", sim.DefaultConfig().CPUBandwidth, "kvsim CPU offload tier's CPU-to-GPU bandwidth in GB/s")
	tierWeights := fs.String("tier-weights", "", "cache_aware.tier_weights of the cache_aware policies, e.g. cpu=0.5,disk=0.2 (\"\": the config default)")
	policies := fs.String("policies", strings.Join(report.Policies, ","), "comma-separated policies to run")
	out := fs.String("out", "bench/out/run", "output `DIR`: report.md, report.json, PNG plots")
	profiles := fs.Bool("cpuprofile", false, "also write each policy's CPU profile to the output DIR as cpu_<policy>.pprof (goroutines labelled part=router|fleet|client)")
	replicas := fs.Int("replicas", 1, "routers in front of the fleet, requests round-robin over them (an L4 balancer)")
	affinity := fs.Float64("affinity-weight", -1, "cache_aware.affinity_weight of the cache_aware policies (negative: the config default)")
	overlap := fs.Float64("overlap-weight", -1, "cache_aware.overlap_weight of the cache_aware policies (negative: the config default)")
	pending := fs.Float64("pending-weight", -1, "cache_aware.pending_weight of the cache_aware policies (negative: the config default)")
	imbalance := fs.Float64("max-imbalance", -1, "cache_aware.max_imbalance (the load guard) of the cache_aware policies (negative: the config default; 0 disables the guard)")
	lora := fs.String("lora", "", "comma-separated LoRA adapters every worker serves; requests name them instead of the base model, a conversation keeping one (\"\": the base model)")
	eventDelay := fs.Duration("event-delay", 0, "kvsim: send every KV-event batch this late, stamped with the engine time of its change (a lagging feed)")
	maxStale := fs.Duration("max-staleness", -1, "events.max_staleness of the routers (negative: the config default; 0 disables the bound)")
	staleWeight := fs.Float64("stale-weight", -1, "events.stale_weight of the routers (negative: the config default)")
	pdFlag := fs.String("pd", "", "prefill/decode disaggregation `P:D`: each policy also runs on P prefill and D decode workers, beside aggregated serving on P+D workers (replaces --workers)")
	pdProtocol := fs.String("pd-protocol", "vllm", "with --pd: the router's pd.protocol, vllm or sglang")
	valkeyURL := fs.String("valkey", "", "also run each policy with index.backend valkey on this server (redis://HOST:PORT), beside the in-memory index; the replicas then share the index there instead of syncing over NATS")
	replicaSync := fs.Bool("replica-sync", true, "with --replicas > 1: share load and decisions over an embedded NATS server (false: independent routers, the herding control)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	pd, err := parsePD(*pdFlag, *pdProtocol)
	if err != nil {
		fmt.Fprintln(stderr, "kvbench run:", err)
		return 2
	}
	if pd != nil {
		workersSet := false
		fs.Visit(func(f *flag.Flag) { workersSet = workersSet || f.Name == "workers" })
		if workersSet && *workers != pd.Prefill+pd.Decode {
			fmt.Fprintf(stderr, "kvbench run: --workers %d contradicts --pd %s (%d workers)\n", *workers, *pdFlag, pd.Prefill+pd.Decode)
			return 2
		}
		*workers = pd.Prefill + pd.Decode
	}
	w, err := buildWorkload(*kind, *trace, workload.MooncakeConfig{Skip: *skip, Limit: *limit, MaxOutput: *maxOut},
		workload.MultiTurnConfig{Users: *users, Rounds: *rounds, Groups: *groups, System: *system, Question: *question, Output: *output, Think: *think, Rate: *rate, Seed: *seed},
		workload.SharedPrefixConfig{Groups: *groups, Prompts: *prompts, System: *system, Question: *question, Output: *output, Rate: *rate, Seed: *seed})
	if err != nil {
		fmt.Fprintln(stderr, "kvbench run:", err)
		return 1
	}
	if *replicas < 1 || *replicas > 16 {
		fmt.Fprintln(stderr, "kvbench run: --replicas must be between 1 and 16")
		return 2
	}
	if *speedup != 1 {
		if *speedup <= 0 {
			fmt.Fprintln(stderr, "kvbench run: --speedup must be positive")
			return 2
		}
		w.Scale(*speedup)
	}
	fc := sim.DefaultFleetConfig()
	fc.Workers = *workers
	fc.Worker.Model = "kvbench"
	fc.Worker.Profile = *profile
	fc.Worker.TimeScale = *timeScale
	fc.Worker.KVBlocks = *kvBlocks
	fc.Worker.CPUBlocks, fc.Worker.CPUBandwidth = *cpuBlocks, *cpuBandwidth
	tiers, err := parseTierWeights(*tierWeights)
	if err != nil {
		fmt.Fprintln(stderr, "kvbench run:", err)
		return 2
	}
	fc.Worker.StreamChunkTokens = *chunk
	fc.Worker.MaxModelLen = *maxModelLen
	fc.Worker.Faults.EventDelayMS = eventDelay.Milliseconds()
	for _, a := range strings.Split(*lora, ",") {
		if a = strings.TrimSpace(a); a != "" {
			fc.Worker.LoRA = append(fc.Worker.LoRA, a)
		}
	}
	if fc.Worker.KVBlocks == 0 {
		p, err := sim.LookupProfile(*profile)
		if err != nil {
			fmt.Fprintln(stderr, "kvbench run:", err)
			return 2
		}
		fc.Worker.KVBlocks = p.KVBlocks
	}
	if err := fc.Validate(); err != nil {
		fmt.Fprintln(stderr, "kvbench run:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s := report.Summary{
		Workload: w.Name, Requests: len(w.Requests), Command: "kvbench run " + strings.Join(args, " "),
		Setup: report.Setup{
			Machine: machine(), Workers: fc.Workers, Profile: fc.Worker.Profile, TimeScale: fc.Worker.TimeScale,
			BlockSize: fc.Worker.BlockSize, KVBlocks: fc.Worker.KVBlocks, PromptTokens: w.PromptTokens(),
			OutputTokens: w.OutputTokens(), ArrivalSpan: w.Requests[len(w.Requests)-1].At.Seconds(),
			Replicas: *replicas, ReplicaSync: *replicas > 1 && *replicaSync, LoRA: fc.Worker.LoRA, Valkey: *valkeyURL,
		},
		Bounds: workload.ComputeBounds(w, fc.Worker.BlockSize, fc.Workers*fc.Worker.KVBlocks),
	}
	fmt.Fprintf(stderr, "%s: %d requests; bounds: infinite %.1f%%, pooled LRU %.1f%%\n", w.Name, len(w.Requests), 100*s.Bounds.Infinite, 100*s.Bounds.PooledLRU)
	if p, err := sim.LookupProfile(fc.Worker.Profile); err == nil {
		tb := report.IdleTTFT(w, s.Bounds, p, fc.Worker.MaxNumBatchedTokens, fc.Worker.TimeScale)
		s.TTFTBounds = &tb
		fmt.Fprintf(stderr, "idle-worker TTFT bounds: infinite cache p90 %.2f s, pooled LRU p90 %.2f s\n", tb.Infinite.P90, tb.PooledLRU.P90)
	}
	profileDir := ""
	if *profiles {
		if err := os.MkdirAll(*out, 0o755); err != nil {
			fmt.Fprintln(stderr, "kvbench run:", err)
			return 1
		}
		profileDir = *out
	}
	tune := func(c *configs.Config) {
		if *affinity >= 0 {
			c.CacheAware.AffinityWeight = *affinity
		}
		if *overlap >= 0 {
			c.CacheAware.OverlapWeight = *overlap
		}
		if *pending >= 0 {
			c.CacheAware.PendingWeight = *pending
		}
		if *imbalance >= 0 {
			c.CacheAware.MaxImbalance = *imbalance
		}
		if *maxStale >= 0 {
			c.Events.MaxStaleness = *maxStale
		}
		if *staleWeight >= 0 {
			c.Events.StaleWeight = *staleWeight
		}
		maps.Copy(c.CacheAware.TierWeights, tiers)
	}
	var mu sync.Mutex
	last := time.Now()
	s.Results, err = report.Compare(ctx, w, report.Config{
		Fleet: fc, Policies: strings.Split(*policies, ","), ProfileDir: profileDir, Replicas: *replicas, NoReplicaSync: !*replicaSync, Tune: tune, PD: pd, Valkey: *valkeyURL,
		Progress: func(p string, done, total int) {
			mu.Lock()
			defer mu.Unlock()
			if done != total && time.Since(last) < 200*time.Millisecond {
				return
			}
			last = time.Now()
			const width = 40
			k := done * width / total
			fmt.Fprintf(stderr, "\r%-22s [%s%s] %d/%d", p, strings.Repeat("#", k), strings.Repeat(".", width-k), done, total)
			if done == total {
				fmt.Fprintln(stderr)
			}
		},
	})
	if err != nil {
		fmt.Fprintln(stderr, "\nkvbench run:", err)
		return 1
	}
	if err := report.WriteDir(*out, &s); err != nil {
		fmt.Fprintln(stderr, "kvbench run:", err)
		return 1
	}
	if err := report.WriteMarkdown(stdout, &s); err != nil {
		return 1
	}
	fmt.Fprintf(stderr, "wrote %s/report.md, report.json and plots\n", *out)
	return 0
}

func buildWorkload(kind, trace string, mc workload.MooncakeConfig, mt workload.MultiTurnConfig, sp workload.SharedPrefixConfig) (*workload.Workload, error) {
	switch kind {
	case "mooncake":
		f, err := os.Open(trace)
		if err != nil {
			return nil, fmt.Errorf("trace: %w", err)
		}
		defer func() { _ = f.Close() }()
		return workload.ParseMooncake(f, mc)
	case "multi-turn":
		return workload.MultiTurn(mt)
	case "shared-prefix":
		return workload.SharedPrefix(sp)
	}
	return nil, fmt.Errorf("unknown workload %q (mooncake, shared-prefix, multi-turn)", kind)
}

// machine describes the host: CPU model and count.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d CPUs (GOMAXPROCS %d), %s/%s", model, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH)
}
