package report

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kvroute/kvroute/bench/policies"
	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/bench/workload"
	"github.com/kvroute/kvroute/cmd/stack"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/router"
	"github.com/kvroute/kvroute/router/blockhash"
	"github.com/kvroute/kvroute/scorer"
	"github.com/kvroute/kvroute/scorer/registry"
	"github.com/kvroute/kvroute/upstream/kvevents/natsbus"
	"github.com/prometheus/client_golang/prometheus"
)

// Policies lists the policies [Compare] knows, in report order. "cache_aware" is kvroute
// with every worker's KV-event feed; "cache_aware_noevents" is kvroute without feeds
// (its index holds only its own predictions); the rest are kvroute's baseline policies.
// "sglang", "llmd_approx" and "dynamo" are the peers' policies re-implemented in
// bench/policies (labelled baselines): SGLang's and llm-d's approximate policies run
// without engine events (their index is their own routing history), Dynamo's with them.
// kvroute's own policies come from the policy registry (scorer/registry).
var Policies = reportPolicies()

func reportPolicies() []string {
	out := []string{"cache_aware", "cache_aware_noevents"}
	for _, name := range registry.Names() {
		if name != "cache_aware" {
			out = append(out, name)
		}
	}
	return append(out, "sglang", "llmd_approx", "dynamo")
}

// Ablations are policies [Compare] also knows but does not run by default:
// "cache_aware_affinity" is kvroute with events and cache_aware.affinity_weight 0.5 (a
// routing history beside the index: blocks sent to a worker and since evicted count
// half a cached block).
var Ablations = []string{"cache_aware_affinity"}

// peerSelector returns the bench/policies selector of a peer policy name, and whether
// its run feeds engine events to the router; nil for kvroute's own policies.
func peerSelector(policy string) (scorer.Selector, bool) {
	switch policy {
	case "sglang":
		return policies.NewSGLang(), false
	case "llmd_approx":
		return policies.NewLLMD(), false
	case "dynamo":
		return policies.NewDynamo(), true
	}
	return nil, false
}

// Config describes a comparison.
type Config struct {
	// Fleet is the simulated fleet every policy runs against (a fresh one per policy).
	// Its Worker.Model is the model requests name; when it has LoRA adapters
	// (Worker.LoRA), requests name the adapters instead, spread over them by
	// workload.SpreadModels.
	Fleet sim.FleetConfig
	// Policies are the policies to run, in order; nil means all of [Policies].
	Policies []string
	// Sample is the period of the per-worker in-flight samples. Default 50ms.
	Sample time.Duration
	// Progress, when set, receives (policy, done, total) after each request.
	Progress func(policy string, done, total int)
	// ProfileDir, when set, receives each policy's CPU profile as cpu_<policy>.pprof
	// (goroutines labelled part=router, fleet or client: `go tool pprof -tagfocus`).
	ProfileDir string
	// Log receives the routers' logs; nil discards them.
	Log *slog.Logger
	// Replicas is the number of routers in front of the fleet, each reading every
	// worker's events; requests go to them round-robin, as through an L4 balancer.
	// 0 means 1.
	Replicas int
	// Tune, when set, adjusts every policy's router configuration after the defaults
	// and before the policy's own settings (so an ablation's settings still win).
	Tune func(*configs.Config)
	// NoReplicaSync runs the replicas independently (the herding control) instead of
	// sharing load and decisions over an embedded NATS server (router/replica).
	NoReplicaSync bool
	// PD, when set, runs every policy twice side by side: aggregated serving on
	// PD.Prefill+PD.Decode workers of role both (Fleet.Workers is ignored), then
	// prefill/decode disaggregation on PD.Prefill prefill and PD.Decode decode workers
	// (see [PD]); the policy picks the prefill worker, the router's decode pick is its own.
	PD *PD
	// Valkey, when set (redis://HOST:PORT), runs every policy twice side by side: with
	// the in-memory index (replicas synced as NoReplicaSync says), then with index.backend
	// valkey on that server, the replicas sharing the index there instead of syncing
	// over NATS. Each run writes under its own key prefix.
	Valkey string
}

// PD describes a prefill/decode disaggregated fleet (kvbench run --pd P:D).
type PD struct {
	// Prefill and Decode are the pools' sizes, both at least 1.
	Prefill, Decode int
	// Protocol is the router's pd.protocol: vllm or sglang.
	Protocol string
}

// Result is one policy's run.
type Result struct {
	Policy string `json:"policy"`
	// PD is "" for aggregated serving, else the disaggregated fleet as
	// "P:D protocol", e.g. "2:2 vllm" (Config.PD). HitRate is then the prefill pool's.
	PD string `json:"pd,omitempty"`
	// Replicas is the number of routers that served the run (1 unless Config.Replicas).
	Replicas int `json:"replicas"`
	// ReplicaSync is whether the replicas shared state over NATS.
	ReplicaSync bool `json:"replica_sync,omitempty"`
	// Index is the routers' index backend: "" for memory, "valkey" (Config.Valkey).
	Index    string `json:"index,omitempty"`
	Requests int    `json:"requests"`
	Errors   int    `json:"errors"`
	// FirstError is one error message, for the report ("" when none).
	FirstError string `json:"first_error,omitempty"`
	// HitRate is the workers' cached tokens over their prompt tokens (kvsim Stats); in
	// a P/D run the prefill pool's only (a decode worker counts the tokens it pulled
	// as cached).
	HitRate float64 `json:"hit_rate"`
	// CPUHitRate is the part of HitRate the workers loaded back from their CPU offload
	// tier (kvsim --cpu-blocks) rather than found on GPU; 0 without the tier.
	CPUHitRate float64 `json:"cpu_hit_rate,omitempty"`
	// PredictedHitRate is the router's own figure for the same run: the cached tokens
	// its routing decisions predicted over the prompt tokens it routed (summed over
	// replicas), beside the engines' HitRate; 0 without a prompt routed.
	PredictedHitRate float64 `json:"predicted_hit_rate"`
	// TTFT, ITL and E2E percentiles in seconds, over successful requests.
	TTFT Percentiles `json:"ttft_s"`
	ITL  Percentiles `json:"itl_s"`
	E2E  Percentiles `json:"e2e_s"`
	// OutputTPS is streamed output tokens over the replay's wall time.
	OutputTPS float64 `json:"output_tokens_per_s"`
	// Wall is the replay's wall time in seconds.
	Wall float64 `json:"wall_s"`
	// Load is the fleet's simulated busy time over (wall time x workers).
	Load float64 `json:"load"`
	// Lag is the fleet's lost time (sim.Stats.LagTime: engines run late by the host)
	// over (wall time x workers); above a few percent the host's CPU contention, not the
	// policy, inflates latencies.
	Lag float64 `json:"sim_lag"`
	// Imbalance is the mean over samples (with any request in flight) of max/mean of the
	// workers' in-flight requests (running + waiting); 1 is perfect balance.
	Imbalance float64 `json:"imbalance"`
	// CPU is the whole process's CPU seconds during the replay: router, simulated fleet
	// and load generator together (they share the process).
	CPU float64 `json:"process_cpu_s"`
	// CPUSplit divides the replay's CPU between router, fleet and load generator, from a
	// CPU profile of the run; nil when the process was already being profiled.
	CPUSplit *CPUSplit `json:"cpu_split,omitempty"`
	// HostLoad is the host's 1-minute load average at the end of the replay (from
	// /proc/loadavg; 0 where unavailable): above the CPU count, wall-clock latencies
	// include waiting for a CPU.
	HostLoad float64 `json:"host_load1"`
	// PerWorker are the workers' requests and in-flight samples.
	PerWorker []WorkerResult `json:"per_worker"`
	// TTFTs are every successful request's TTFT in seconds, sorted (for the CDF plot).
	TTFTs []float64 `json:"-"`
	// Outcomes are the replay's per-request outcomes, by request index (for
	// requests_<policy>.jsonl).
	Outcomes []workload.Outcome `json:"-"`
	// SampleEvery is the in-flight sampling period in seconds.
	SampleEvery float64 `json:"sample_every_s"`
}

// WorkerResult is one worker's share of a run.
type WorkerResult struct {
	ID       string  `json:"id"`
	Requests uint64  `json:"requests"`
	HitRate  float64 `json:"hit_rate"`
	Busy     float64 `json:"busy_s"`
	InFlight []int   `json:"inflight_samples"`
}

// Percentiles are p50, p90, p99 and the mean.
type Percentiles struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Mean float64 `json:"mean"`
}

// percentiles sorts v and returns its percentiles (nearest rank).
func percentiles(v []float64) Percentiles {
	if len(v) == 0 {
		return Percentiles{}
	}
	slices.Sort(v)
	at := func(q float64) float64 {
		i := int(q*float64(len(v))+0.5) - 1
		return v[min(max(i, 0), len(v)-1)]
	}
	var sum float64
	for _, x := range v {
		sum += x
	}
	return Percentiles{P50: at(0.5), P90: at(0.9), P99: at(0.99), Mean: sum / float64(len(v))}
}

// Compare runs w through each policy in turn, each against a fresh fleet and router.
func Compare(ctx context.Context, w *workload.Workload, c Config) ([]Result, error) {
	if err := w.Validate(); err != nil {
		return nil, err
	}
	pols := c.Policies
	if len(pols) == 0 {
		pols = Policies
	}
	if pd := c.PD; pd != nil {
		if pd.Prefill < 1 || pd.Decode < 1 {
			return nil, fmt.Errorf("pd: %d prefill and %d decode workers, want at least 1 of each", pd.Prefill, pd.Decode)
		}
		if pd.Protocol != configs.PDVLLM && pd.Protocol != configs.PDSGLang {
			return nil, fmt.Errorf("pd: protocol %q is not vllm or sglang", pd.Protocol)
		}
	}
	var out []Result
	vurl := c.Valkey
	c.Valkey = "" // runPolicy uses the Valkey index only when told
	for _, p := range pols {
		agg := c
		agg.PD = nil
		if c.PD != nil {
			agg.Fleet.Workers = c.PD.Prefill + c.PD.Decode
		}
		r, err := runPolicy(ctx, w, agg, p)
		if err != nil {
			return out, fmt.Errorf("policy %s: %w", p, err)
		}
		out = append(out, r)
		if vurl != "" {
			vc := agg
			vc.Valkey, vc.NoReplicaSync = vurl, true
			if r, err = runPolicy(ctx, w, vc, p); err != nil {
				return out, fmt.Errorf("policy %s with index valkey: %w", p, err)
			}
			out = append(out, r)
		}
		if c.PD == nil {
			continue
		}
		r, err = runPolicy(ctx, w, c, p)
		if err != nil {
			return out, fmt.Errorf("policy %s with P/D %s: %w", p, r.PD, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// Label names r in reports and file names: its policy, with "_pd" after it for a
// P/D run and "_valkey" for a run on the Valkey index.
func (r *Result) Label() string {
	l := r.Policy
	if r.Index != "" {
		l += "_" + r.Index
	}
	if r.PD != "" {
		l += "_pd"
	}
	return l
}

// startPDFleets starts the prefill pool on 127.0.0.1 and the decode pool on
// 127.0.0.2 (another pod) when the host has that address, else on 127.0.0.1 too; the
// returned fleet holds both, prefill workers first.
func startPDFleets(ctx context.Context, fc sim.FleetConfig, pd *PD) (*sim.Fleet, error) {
	dhost := "127.0.0.1"
	if ln, err := net.Listen("tcp", "127.0.0.2:0"); err == nil {
		_ = ln.Close()
		dhost = "127.0.0.2"
	}
	pc, dc := fc, fc
	pc.Workers, pc.IDPrefix, pc.Host, pc.Worker.Role = pd.Prefill, "p", "127.0.0.1", sim.RolePrefill
	dc.Workers, dc.IDPrefix, dc.Host, dc.Worker.Role = pd.Decode, "d", dhost, sim.RoleDecode
	dc.Worker.Seed += int64(pd.Prefill)
	pf, err := sim.StartFleet(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("prefill pool: %w", err)
	}
	df, err := sim.StartFleet(ctx, dc)
	if err != nil {
		_ = pf.Close()
		return nil, fmt.Errorf("decode pool: %w", err)
	}
	return sim.JoinFleets(pf, df), nil
}

// routerConfig returns the router configuration for policy over the fleet.
func routerConfig(policy string, fleet *sim.Fleet, blockSize int, tune func(*configs.Config), pd *PD) (*configs.Config, error) {
	cfg := configs.Default()
	if tune != nil {
		tune(&cfg)
	}
	cfg.Listen = "127.0.0.1:0"
	cfg.Health.Interval = 200 * time.Millisecond
	cfg.Timeouts.Shutdown = 2 * time.Second
	cfg.CacheAware.BlockSize = blockSize
	events := true
	switch policy {
	case "cache_aware_noevents":
		cfg.Policy, events = "cache_aware", false
	case "cache_aware_affinity":
		cfg.Policy, cfg.CacheAware.AffinityWeight = "cache_aware", 0.5
	case "sglang", "llmd_approx", "dynamo":
		// The selector itself is replaced in runPolicy; cache_aware's config builds the
		// index and feeds the peer policies read.
		cfg.Policy = "cache_aware"
		_, events = peerSelector(policy)
	default:
		if _, ok := registry.Lookup(policy); ok {
			cfg.Policy = policy
			break
		}
		return nil, fmt.Errorf("unknown policy %q (known: %v and %v)", policy, Policies, Ablations)
	}
	for _, info := range fleet.Infos() {
		wc := configs.Worker{ID: info.ID, URL: info.URL, MaxConns: 1024}
		if pd != nil {
			wc.Role, wc.BootstrapPort = info.Role, info.BootstrapPort
		}
		if events {
			wc.Events, wc.Replay = info.Events, info.Replay
		}
		cfg.Workers = append(cfg.Workers, wc)
	}
	if pd != nil {
		cfg.PD.Protocol = pd.Protocol
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("router config: %w", err)
	}
	return &cfg, nil
}

// cpuSeconds returns the process's user+system CPU time.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func runPolicy(ctx context.Context, w *workload.Workload, c Config, policy string) (Result, error) {
	replicas := max(c.Replicas, 1)
	res := Result{Policy: policy, Requests: len(w.Requests), Replicas: replicas, ReplicaSync: replicas > 1 && !c.NoReplicaSync}
	if c.PD != nil {
		res.PD = fmt.Sprintf("%d:%d %s", c.PD.Prefill, c.PD.Decode, c.PD.Protocol)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var fleet *sim.Fleet
	var err error
	withPart(ctx, partFleet, func(ctx context.Context) {
		if c.PD != nil {
			fleet, err = startPDFleets(ctx, c.Fleet, c.PD)
		} else {
			fleet, err = sim.StartFleet(ctx, c.Fleet)
		}
	})
	if err != nil {
		return res, fmt.Errorf("start fleet: %w", err)
	}
	defer func() { _ = fleet.Close() }()
	cfg, err := routerConfig(policy, fleet, c.Fleet.Worker.BlockSize, c.Tune, c.PD)
	if err != nil {
		return res, err
	}
	if c.Valkey != "" {
		res.Index = "valkey"
		cfg.Index.Backend, cfg.Index.Valkey.URL = "valkey", c.Valkey
		// A prefix of its own per run: no entry of an earlier run counts.
		cfg.Index.Valkey.Prefix = fmt.Sprintf("kvbench:%d:%s:", time.Now().UnixNano(), policy)
	}
	if res.ReplicaSync {
		var nats *natsbus.Embedded
		withPart(ctx, partRouter, func(context.Context) { nats, err = natsbus.StartEmbedded(natsbus.EmbeddedOptions{NoJetStream: true}) })
		if err != nil {
			return res, fmt.Errorf("replica sync: %w", err)
		}
		defer nats.Shutdown()
		cfg.Replica.NATSURL, cfg.Replica.Cluster, cfg.Replica.WarmTimeout = nats.ClientURL(), "kvbench", 0
	}
	log := c.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var hosts []string
	var stacks []*stack.Stack
	for i := range replicas {
		rcfg := *cfg
		if res.ReplicaSync {
			rcfg.Replica.ID = fmt.Sprintf("kvbench-%d", i)
		}
		st, addr, stop, err := startRouter(ctx, &rcfg, policy, log)
		if err != nil {
			return res, err
		}
		defer stop()
		hosts, stacks = append(hosts, addr), append(stacks, st)
	}
	if res.ReplicaSync {
		if err := waitFor(ctx, 10*time.Second, func() bool {
			for _, st := range stacks {
				if len(st.Replica.Peers()) != replicas-1 {
					return false
				}
			}
			return true
		}); err != nil {
			return res, fmt.Errorf("replicas did not find each other: %w", err)
		}
	}
	if cfg.Workers[0].Events != "" {
		if err := waitFor(ctx, 10*time.Second, func() bool {
			for _, wk := range fleet.Workers() {
				if !wk.EventsSubscribed() {
					return false
				}
			}
			return true
		}); err != nil {
			return res, fmt.Errorf("event feeds: %w", err)
		}
	}

	every := c.Sample
	if every <= 0 {
		every = 50 * time.Millisecond
	}
	res.SampleEvery = every.Seconds()
	workers := fleet.Workers()
	res.PerWorker = make([]WorkerResult, len(workers))
	for i, wk := range workers {
		res.PerWorker[i].ID = wk.ID()
	}
	sctx, stopSample := context.WithCancel(ctx)
	var swg sync.WaitGroup
	var imbSum float64
	var imbN int
	swg.Add(1)
	go func() {
		defer swg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
			}
			var sum, mx int
			for i, wk := range workers {
				s := wk.Stats()
				n := s.Running + s.Waiting
				res.PerWorker[i].InFlight = append(res.PerWorker[i].InFlight, n)
				sum += n
				mx = max(mx, n)
			}
			if sum > 0 {
				imbSum += float64(mx) / (float64(sum) / float64(len(workers)))
				imbN++
			}
		}
	}()

	tr := &http.Transport{MaxIdleConns: 4096, MaxIdleConnsPerHost: 4096, DisableCompression: true}
	client := &http.Client{Transport: &roundRobin{base: tr, hosts: hosts}}
	var progress func(int, int)
	if c.Progress != nil {
		label := res.Label()
		progress = func(d, t int) { c.Progress(label, d, t) }
	}
	prof, perr := startCPUProfile()
	if perr != nil && c.Log != nil {
		c.Log.Warn("no router/fleet/client CPU split for this run", "err", perr)
	}
	cpu0, t0 := cpuSeconds(), time.Now()
	var outs []workload.Outcome
	withPart(ctx, partClient, func(ctx context.Context) {
		outs, err = workload.Replay(ctx, w, workload.ReplayConfig{URL: "http://" + hosts[0], Model: c.Fleet.Worker.Model, Models: c.Fleet.Worker.LoRA,
			Client: client, Progress: progress})
	})
	wall := time.Since(t0)
	res.CPU = cpuSeconds() - cpu0
	if prof != nil {
		save := ""
		if c.ProfileDir != "" {
			save = filepath.Join(c.ProfileDir, "cpu_"+policy+".pprof")
		}
		if sp, err := prof.split(save); err == nil {
			res.CPUSplit = &sp
		} else if c.Log != nil {
			c.Log.Warn("no router/fleet/client CPU split for this run", "err", err)
		}
	}
	res.HostLoad = loadAvg()
	stopSample()
	swg.Wait()
	tr.CloseIdleConnections()
	if err != nil {
		return res, err
	}
	res.Wall = wall.Seconds()
	if imbN > 0 {
		res.Imbalance = imbSum / float64(imbN)
	}
	var ttft, itl, e2e []float64
	var tokens int64
	for _, o := range outs {
		if o.Err != "" {
			res.Errors++
			if res.FirstError == "" {
				res.FirstError = o.Err
			}
			continue
		}
		ttft = append(ttft, o.TTFT.Seconds())
		if o.ITL > 0 {
			itl = append(itl, o.ITL.Seconds())
		}
		e2e = append(e2e, o.E2E.Seconds())
		tokens += int64(o.Tokens)
	}
	res.TTFT, res.ITL, res.E2E = percentiles(ttft), percentiles(itl), percentiles(e2e)
	res.TTFTs, res.Outcomes = ttft, outs
	res.OutputTPS = float64(tokens) / wall.Seconds()
	var prompt, cached, cpuLoaded uint64
	var busy, lag time.Duration
	// prefillPool reports whether wk's prompts count towards the hit rate: every
	// worker's but a P/D run's decode workers'.
	prefillPool := func(wk *sim.Worker) bool { return c.PD == nil || wk.Info().Role == sim.RolePrefill }
	for i, wk := range workers {
		s := wk.Stats()
		if prefillPool(wk) {
			prompt += s.PromptTokens
			cached += s.CachedTokens
			cpuLoaded += s.CPULoadedTokens
		}
		busy += s.BusyTime
		lag += s.LagTime
		res.PerWorker[i].Requests = s.Requests
		res.PerWorker[i].Busy = s.BusyTime.Seconds()
		if s.PromptTokens > 0 {
			res.PerWorker[i].HitRate = float64(s.CachedTokens) / float64(s.PromptTokens)
		}
	}
	if prompt > 0 {
		res.HitRate = float64(cached) / float64(prompt)
		res.CPUHitRate = float64(cpuLoaded) / float64(prompt)
	}
	var rPrompt, rHit uint64
	for _, st := range stacks {
		for _, wk := range workers {
			if !prefillPool(wk) {
				continue
			}
			t := st.Server.WorkerTraffic(wk.ID(), false)
			rPrompt += t.PromptTokens
			rHit += t.PredictedHitTokens
		}
	}
	if rPrompt > 0 {
		res.PredictedHitRate = float64(rHit) / float64(rPrompt)
	}
	res.Load = busy.Seconds() / (wall.Seconds() * float64(len(workers)))
	res.Lag = lag.Seconds() / (wall.Seconds() * float64(len(workers)))
	return res, nil
}

// startRouter builds and runs one router for policy; stop ends it.
func startRouter(ctx context.Context, cfg *configs.Config, policy string, log *slog.Logger) (st *stack.Stack, addr string, stop func(), err error) {
	st, err = stack.NewStack(cfg, log)
	if err != nil {
		return nil, "", nil, fmt.Errorf("router: %w", err)
	}
	if sel, _ := peerSelector(policy); sel != nil {
		// The Stack has no selector option: swap in a server on the same pool, index and
		// (scraped) worker metrics that routes with the peer's selector. Token-id prompts
		// hash exactly in every tokenize mode, so the approx hasher is exact here. Its
		// metrics go to a private registry (the Stack's holds the unused server's).
		srv, err := router.New(router.Options{
			Config: cfg, Pool: st.Pool, Selector: sel, Registerer: prometheus.NewRegistry(),
			Logger: log, Index: st.Backend(), Hasher: blockhash.Approx{}, Replica: st.Replica,
		})
		if err != nil {
			return nil, "", nil, fmt.Errorf("router with %s: %w", policy, err)
		}
		st.Server = srv
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, "", nil, fmt.Errorf("listen: %w", err)
	}
	rctx, stopRouter := context.WithCancel(ctx)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go withPart(rctx, partRouter, func(rctx context.Context) { done <- st.Run(rctx, ln, func() { close(ready) }) })
	stop = func() {
		stopRouter()
		<-done
	}
	select {
	case <-ready:
	case err := <-done:
		stopRouter()
		return nil, "", nil, fmt.Errorf("router: %w", err)
	}
	return st, ln.Addr().String(), stop, nil
}

// roundRobin sends each request to the next of hosts in turn, whatever host its URL
// names: the replicas behind a balancer that spreads requests evenly.
type roundRobin struct {
	base  http.RoundTripper
	hosts []string
	next  atomic.Uint64
}

func (rr *roundRobin) RoundTrip(req *http.Request) (*http.Response, error) {
	if len(rr.hosts) < 2 {
		return rr.base.RoundTrip(req)
	}
	r := req.Clone(req.Context())
	r.URL.Host = rr.hosts[(rr.next.Add(1)-1)%uint64(len(rr.hosts))]
	r.Host = r.URL.Host
	return rr.base.RoundTrip(r)
}

// loadAvg returns the 1-minute load average, 0 when unknown.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _, _ := strings.Cut(string(b), " ")
	v, err := strconv.ParseFloat(f, 64)
	if err != nil {
		return 0
	}
	return v
}

// waitFor polls cond every 5ms until it holds, timeout passes or ctx ends.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}
