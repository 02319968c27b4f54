package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/signal"
	"strings"
	"syscall"

	"github.com/kvroute/kvroute/cmd/stack"
	"github.com/kvroute/kvroute/configs"
)

func init() {
	register(command{name: "serve", summary: "run the router (--config FILE, or --listen/--worker/--policy/--tokenize)", run: runServe})
	register(command{name: "check-config", summary: "validate a config file", run: runCheckConfig})
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, " ") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// serveFlags are serve's flags, which `kvroute epp` takes too.
type serveFlags struct {
	config, listen, policy, tokenize, logLevel, pd, dataPlane *string
	dataPlaneLoops                                            *int
	workers                                                   stringList
}

// overrides are the flags that override config keys beyond the quick-start ones.
type overrides struct {
	pd        string // pd.protocol
	dataPlane string // data_plane
	loops     int    // data_plane_loops, when > 0
}

// addServeFlags defines serve's flags on fs; listenHelp says what --listen serves.
func addServeFlags(fs *flag.FlagSet, listenHelp string) *serveFlags {
	f := &serveFlags{
		config:         fs.String("config", "", "YAML config file (see configs/kvroute.example.yaml)"),
		listen:         fs.String("listen", "", listenHelp),
		policy:         fs.String("policy", "", "routing policy: "+strings.Join(configs.Policies, ", ")+" (overrides the config)"),
		tokenize:       fs.String("tokenize", "", "how requests are tokenized for prefix matching: auto, engine, approx or local:PATH (overrides the config)"),
		logLevel:       fs.String("log-level", "info", "log level: debug, info, warn, error"),
		pd:             fs.String("pd", "", "prefill/decode disaggregation protocol: vllm or sglang (overrides pd.protocol; on while workers of role prefill and decode are present)"),
		dataPlane:      fs.String("data-plane", "", "what serves the API listener: "+configs.DataPlaneFastHTTP+" or "+configs.DataPlaneEventLoop+" (overrides data_plane)"),
		dataPlaneLoops: fs.Int("data-plane-loops", 0, "event loops of the event_loop data plane; 0 leaves data_plane_loops (overrides it otherwise)"),
	}
	fs.Var(&f.workers, "worker", "worker `URL[,id=ID][,events=tcp://H:P][,replay=tcp://H:P][,models=A|B][,api_key_env=NAME][,role=prefill|decode|both][,bootstrap_port=N]`; repeat for each worker")
	return f
}

// load builds the config from the file and the flags (serveConfig).
func (f *serveFlags) load() (*configs.Config, error) {
	return serveConfig(*f.config, *f.listen, *f.policy, *f.tokenize, f.workers, overrides{pd: *f.pd, dataPlane: *f.dataPlane, loops: *f.dataPlaneLoops})
}

func runServe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	flags := addServeFlags(fs, "listen address, e.g. :8080 (overrides the config)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := newLogger(stderr, *flags.logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "kvroute serve:", err)
		return 2
	}
	cfg, err := flags.load()
	if err != nil {
		fmt.Fprintln(stderr, "kvroute serve:", err)
		return 2
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		fmt.Fprintln(stderr, "kvroute serve:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := stack.Run(ctx, cfg, ln, log, nil); err != nil {
		fmt.Fprintln(stderr, "kvroute serve:", err)
		return 1
	}
	return 0
}

// serveConfig builds the config from a file and/or the quick-start flags; flags win.
func serveConfig(path, listen, policy, tokenize string, workers []string, o overrides) (*configs.Config, error) {
	var cfg *configs.Config
	if path != "" {
		c, err := configs.LoadFile(path)
		if err != nil {
			return nil, err
		}
		cfg = c
	} else {
		if len(workers) == 0 {
			return nil, errors.New("give --config FILE or at least one --worker URL")
		}
		c := configs.Default()
		cfg = &c
	}
	if listen != "" {
		cfg.Listen = listen
	}
	if policy != "" {
		cfg.Policy = policy
	}
	if tokenize != "" {
		cfg.Tokenize.Mode = tokenize
	}
	if o.pd != "" {
		cfg.PD.Protocol = o.pd
	}
	if o.dataPlane != "" {
		cfg.DataPlane = o.dataPlane
	}
	if o.loops > 0 {
		cfg.DataPlaneLoops = o.loops
	}
	if len(workers) > 0 {
		cfg.Workers, cfg.WorkersFromFlags = nil, true
		for _, s := range workers {
			w, err := configs.ParseWorkerFlag(s)
			if err != nil {
				return nil, err
			}
			cfg.Workers = append(cfg.Workers, w)
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// Keys from the environment and certificate files: every problem at once, before
	// anything listens.
	if err := cfg.CheckFiles(); err != nil {
		if path != "" {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return nil, err
	}
	return cfg, nil
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

func runCheckConfig(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: kvroute check-config FILE")
		return 2
	}
	// Exactly what serve checks before it listens: one validation for both.
	cfg, err := serveConfig(args[0], "", "", "", nil, overrides{})
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(stderr, "%s: warning: %s\n", args[0], w)
	}
	fmt.Fprintf(stdout, "%s: ok (%d workers, policy %s, listen %s)\n", args[0], len(cfg.Workers), cfg.Policy, cfg.Listen)
	printTokenizeModes(stdout, stderr, args[0], cfg)
	return 0
}
