// Command kvbench runs kvroute's benchmarks.
//
//	kvbench proxy [flags]          proxy overhead: direct vs kvroute vs nginx on loopback
//	kvbench run [flags]            replay a workload (Mooncake trace, shared-prefix groups,
//	                               multi-turn chat) against a kvsim fleet, policy by policy
//	kvbench load [flags]           steady load against a running router: workloads replayed
//	                               in a loop for a duration (scripts/soak.sh)
//	kvbench fake-upstream [flags]  the instant fake worker the proxy benchmark measures against
//
// This package is wiring only: each subcommand lives in its own file, registers itself
// in an init function, parses its flags and calls into the bench packages.
package main

import (
	"io"
	"os"

	"github.com/kvroute/kvroute/cmd/internal/subcmd"
)

// command is one subcommand (see subcmd.Command); files of this package register
// theirs in init.
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

// commands holds every subcommand.
var commands = &subcmd.Set{Prog: "kvbench"}

func register(c command) {
	commands.Register(subcmd.Command{Name: c.name, Summary: c.summary, Run: c.run})
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches args to their subcommand and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int { return commands.Run(args, stdout, stderr) }
