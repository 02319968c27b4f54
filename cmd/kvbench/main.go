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
	"fmt"
	"io"
	"os"
	"sort"
)

// command is one subcommand. run gets the arguments after the subcommand name and
// returns the process exit code.
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

// commands holds every subcommand; files of this package add theirs in init.
var commands = map[string]command{}

func register(c command) { commands[c.name] = c }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "kvbench: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	return c.run(args[1:], stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: kvbench <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-14s %s\n", n, commands[n].summary)
	}
}
