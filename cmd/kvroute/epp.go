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
	register(command{name: "epp", summary: "run as a Gateway API Inference Extension endpoint picker: serve's config and flags plus --grpc-listen ADDR (ext_proc, default :9002)", run: runEPP})
}

// runEPP runs serve's stack (same config and flags) plus the ext_proc endpoint picker
// on --grpc-listen (epp.grpc_listen) and the gRPC health services on
// epp.health_listen (stack.Stack.RunEPP).
func runEPP(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("epp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	flags := addServeFlags(fs, "HTTP listen address (admin API, dashboard, /metrics, the OpenAI API), e.g. :9090 (overrides the config)")
	grpcListen := fs.String("grpc-listen", "", "ext_proc gRPC listen address (overrides epp.grpc_listen, default :9002)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: kvroute epp [--config FILE] [--grpc-listen ADDR] [serve's flags]")
		return 2
	}
	log, err := newLogger(stderr, *flags.logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "kvroute epp:", err)
		return 2
	}
	cfg, err := flags.load()
	if err == nil && *grpcListen != "" {
		cfg.EPP.GRPCListen = *grpcListen
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintln(stderr, "kvroute epp:", err)
		return 2
	}
	st, err := stack.NewStack(cfg, log)
	if err != nil {
		fmt.Fprintln(stderr, "kvroute epp:", err)
		return 1
	}
	st.ReloadOnSIGHUP = cfg.Source != ""
	var lns []net.Listener
	for _, addr := range []string{cfg.Listen, cfg.EPP.GRPCListen, cfg.EPP.HealthListen} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns {
				_ = l.Close()
			}
			fmt.Fprintln(stderr, "kvroute epp:", err)
			return 1
		}
		lns = append(lns, ln)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := st.RunEPP(ctx, lns[0], lns[1], lns[2], nil); err != nil {
		fmt.Fprintln(stderr, "kvroute epp:", err)
		return 1
	}
	return 0
}
