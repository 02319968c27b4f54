package proxy

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/kvroute/kvroute/cmd/stack"
	"github.com/kvroute/kvroute/configs"
)

// childEnv names the child process the test binary should be when re-executed by the
// harness under test: "upstream" (the fake upstream) or "kvroute" (stack.Run, what
// `kvroute serve` runs). Re-executing the test binary gives real separate processes
// without building binaries during the test.
const childEnv = "KVBENCH_PROXY_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "upstream":
		os.Exit(UpstreamMain(os.Args[1:], os.Stderr))
	case "kvroute":
		os.Exit(kvrouteChild(os.Args[1:], os.Stderr))
	}
	os.Exit(m.Run())
}

// selfCommand re-executes the test binary as the named child.
func selfCommand(child string) Command {
	return Command{Argv: []string{os.Args[0]}, Env: []string{childEnv + "=" + child}}
}

// kvrouteChild is `kvroute serve --listen ADDR --policy P [--tokenize M] --worker URL...` built from the
// library, as cmd/kvroute does it.
func kvrouteChild(args []string, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "serve" {
		fmt.Fprintln(stderr, "kvroute child: want serve")
		return 2
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", "", "")
	policy := fs.String("policy", "round_robin", "")
	tokenize := fs.String("tokenize", "", "")
	dataPlane := fs.String("data-plane", "", "")
	loops := fs.Int("data-plane-loops", 0, "")
	var workers stringsFlag
	fs.Var(&workers, "worker", "")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	cfg := configs.Default()
	cfg.Listen, cfg.Policy = *listen, *policy
	if *tokenize != "" {
		cfg.Tokenize.Mode = *tokenize
	}
	if *dataPlane != "" {
		cfg.DataPlane = *dataPlane
	}
	cfg.DataPlaneLoops = *loops
	for _, s := range workers {
		w, err := configs.ParseWorkerFlag(s)
		if err != nil {
			fmt.Fprintln(stderr, "kvroute child:", err)
			return 2
		}
		cfg.Workers = append(cfg.Workers, w)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, "kvroute child:", err)
		return 2
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		fmt.Fprintln(stderr, "kvroute child:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := stack.Run(ctx, &cfg, ln, log, nil); err != nil {
		fmt.Fprintln(stderr, "kvroute child:", err)
		return 1
	}
	return 0
}
