// Command kvroute is the cache-aware router for LLM inference fleets.
//
//	kvroute serve --config FILE            run the router
//	kvroute serve --listen ADDR --worker URL [--worker URL ...] [--policy NAME]
//	kvroute demo                           router + simulated fleet + traffic + dashboard
//	kvroute tokenize --tokenizer PATH      print the token ids of stdin
//	kvroute bridge ...                     republish a local engine's KV events to NATS
//	kvroute indexer --config FILE          run only the KV index and its query/snapshot API
//	kvroute epp --config FILE [--grpc-listen ADDR]  serve plus a Gateway API Inference Extension endpoint picker
//	kvroute check-config FILE              validate a config file
//	kvroute version                        print the version
//
// This package is wiring only: each subcommand parses its flags and calls into the
// library packages.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/kvroute/kvroute/cmd/internal/subcmd"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// command is one subcommand (see subcmd.Command); files of this package register
// theirs in init.
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

// commands holds every subcommand.
var commands = &subcmd.Set{Prog: "kvroute"}

func register(c command) {
	commands.Register(subcmd.Command{Name: c.name, Summary: c.summary, Run: c.run})
}

func init() {
	register(command{name: "version", summary: "print the version", run: func(_ []string, stdout, _ io.Writer) int {
		fmt.Fprintf(stdout, "kvroute %s\n", version)
		return 0
	}})
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches args to their subcommand and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int { return commands.Run(args, stdout, stderr) }
