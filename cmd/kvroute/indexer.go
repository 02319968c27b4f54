package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os/signal"
	"syscall"

	"github.com/kvroute/kvroute/cmd/stack"
)

func init() {
	register(command{name: "indexer", summary: "run only the KV index: event feeds in, the index query and snapshot API out (--config FILE)", run: runIndexer})
}

// runIndexer runs a standalone indexer from serve's config file: the same workers,
// discovery, events, tokenize and index sections; it listens on listen (or --listen)
// and serves only the index API, /metrics and /health (stack.Stack.RunIndexer).
func runIndexer(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("indexer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML config file, as for serve (required)")
	listen := fs.String("listen", "", "listen address of the index API, e.g. 127.0.0.1:8090 (overrides the config's listen)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *configPath == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: kvroute indexer --config FILE [--listen ADDR] [--log-level LEVEL]")
		return 2
	}
	log, err := newLogger(stderr, *logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "kvroute indexer:", err)
		return 2
	}
	cfg, err := serveConfig(*configPath, *listen, "", "", nil, overrides{})
	if err != nil {
		fmt.Fprintln(stderr, "kvroute indexer:", err)
		return 2
	}
	st, err := stack.NewStack(cfg, log)
	if err != nil {
		fmt.Fprintln(stderr, "kvroute indexer:", err)
		return 1
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		fmt.Fprintln(stderr, "kvroute indexer:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := st.RunIndexer(ctx, ln, nil); err != nil {
		fmt.Fprintln(stderr, "kvroute indexer:", err)
		return 1
	}
	return 0
}
