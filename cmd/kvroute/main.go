// Command kvroute is the cache-aware router for LLM inference fleets.
//
//	kvroute serve --config FILE            run the router
//	kvroute serve --listen ADDR --worker URL [--worker URL ...] [--policy NAME]
//	kvroute demo                           router + simulated fleet + traffic + dashboard
//	kvroute tokenize --tokenizer PATH      print the token ids of stdin
//	kvroute bridge ...                     republish a local engine's KV events to NATS
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
	"sort"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

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

func init() {
	register(command{name: "version", summary: "print the version", run: func(_ []string, stdout, _ io.Writer) int {
		fmt.Fprintf(stdout, "kvroute %s\n", version)
		return 0
	}})
}

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
		fmt.Fprintf(stderr, "kvroute: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	return c.run(args[1:], stdout, stderr)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: kvroute <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-13s %s\n", n, commands[n].summary)
	}
}
