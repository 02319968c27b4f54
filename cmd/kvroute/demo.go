package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/bench/traffic"
	"github.com/kvroute/kvroute/cmd/stack"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/router"
)

func init() {
	register(command{name: "demo", summary: "router + simulated fleet + traffic in one process", run: runDemo})
}

// runDemo starts a simulated fleet (bench/sim), the router in front of it, and chat
// traffic through the router, and prints what the router does every few seconds.
func runDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8080", "router listen address (127.0.0.1:0 picks a free port)")
	workers := fs.Int("workers", 4, "simulated workers")
	profile := fs.String("profile", "llama-3.1-8b-h100", "simulated model/GPU latency profile")
	policy := fs.String("policy", "cache_aware", "routing policy: "+strings.Join(configs.Policies, ", "))
	users := fs.Int("users", 8, "concurrent simulated conversations")
	duration := fs.Duration("duration", 0, "stop after this long (0: until Ctrl-C)")
	every := fs.Duration("report", 2*time.Second, "time between two report lines")
	logLevel := fs.String("log-level", "warn", "router log level")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "kvroute demo:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	if err := demo(ctx, demoOptions{
		listen: *listen, workers: *workers, profile: *profile, policy: *policy, users: *users, every: *every,
	}, stdout, log); err != nil {
		fmt.Fprintln(stderr, "kvroute demo:", err)
		return 1
	}
	return 0
}

type demoOptions struct {
	listen, profile, policy string
	workers, users          int
	every                   time.Duration
	// untilRequests, when positive, ends the demo once that many requests completed.
	untilRequests int
}

const demoModel = "demo-llama-3.1-8b"

func demo(ctx context.Context, o demoOptions, out io.Writer, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fc := sim.DefaultFleetConfig()
	fc.Workers = o.workers
	fc.Worker.Model = demoModel
	fc.Worker.Profile = o.profile
	// The fleet outlives the router and the traffic (closed when demo returns): a worker
	// stopping with them would cut a stream the router is still draining, an error the
	// traffic would count.
	fleet, err := sim.StartFleet(context.WithoutCancel(ctx), fc)
	if err != nil {
		return err
	}
	defer func() { _ = fleet.Close() }()

	cfg := configs.Default()
	cfg.Policy = o.policy
	cfg.Timeouts.Shutdown = 5 * time.Second
	cfg.Health.Interval = time.Second
	cfg.Admin.Listen, cfg.Admin.PathPrefix = "", "/admin" // the dashboard on the router's own port
	for _, info := range fleet.Infos() {
		cfg.Workers = append(cfg.Workers, configs.Worker{
			ID: info.ID, URL: info.URL, Models: []string{demoModel}, Events: info.Events, Replay: info.Replay, MaxConns: 1024,
		})
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w (use --listen 127.0.0.1:0 for a free port)", o.listen, err)
	}
	cfg.Listen = ln.Addr().String()
	if err := cfg.Validate(); err != nil {
		return err
	}
	url := "http://" + ln.Addr().String()
	fmt.Fprintf(out, "kvroute demo: %d simulated workers (%s), policy %s\n", o.workers, o.profile, o.policy)
	fmt.Fprintf(out, "  router   %s  (try: curl %s/v1/models)\n  metrics  %s/metrics\n", url, url, url)
	fmt.Fprintf(out, "  dashboard %s/admin/\n", url)
	for _, info := range fleet.Infos() {
		fmt.Fprintf(out, "  worker   %s %s events %s\n", info.ID, info.URL, info.Events)
	}

	stats := &traffic.Stats{}
	routerDone := make(chan error, 1)
	trafficDone := make(chan struct{})
	var srv atomic.Pointer[router.Server]
	// predicted is the router's own hit rate over the last 15 minutes beside the
	// engines' (the traffic's "cache hit", from their usage).
	predicted := func() string {
		s := srv.Load()
		if s == nil {
			return ""
		}
		ws := s.Traffic().Windows
		if len(ws) == 0 || ws[len(ws)-1].Global.HitRate == nil {
			return ""
		}
		return fmt.Sprintf("  (router-predicted hit %.1f%%)", 100**ws[len(ws)-1].Global.HitRate)
	}
	go func() {
		routerDone <- stack.Run(ctx, &cfg, ln, log, func(s *router.Server) {
			srv.Store(s)
			go func() {
				defer close(trafficDone)
				tc := traffic.DefaultConfig()
				tc.URL, tc.Model, tc.Users = url, demoModel, o.users
				_ = traffic.Run(ctx, tc, stats)
			}()
		})
	}()
	tick := time.NewTicker(o.every)
	defer tick.Stop()
	start := time.Now()
	for {
		select {
		case <-tick.C:
			snap := stats.Snapshot()
			fmt.Fprintf(out, "[%5.0fs] %s%s\n", time.Since(start).Seconds(), snap, predicted())
			if o.untilRequests > 0 && snap.Requests >= o.untilRequests {
				cancel()
			}
		case err := <-routerDone:
			<-trafficDone
			snap := stats.Snapshot()
			fmt.Fprintf(out, "final: %s%s\n", snap, predicted())
			if snap.LastError != "" {
				fmt.Fprintf(out, "last error: %s\n", snap.LastError)
			}
			return err
		}
	}
}
