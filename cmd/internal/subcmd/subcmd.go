// Package subcmd is the subcommand dispatcher of the repo's commands (kvroute, kvbench):
// a program name, a table of named commands, and the usage text built from it.
package subcmd

import (
	"fmt"
	"io"
	"sort"
)

// Command is one subcommand. Run gets the arguments after the subcommand name and
// returns the process exit code.
type Command struct {
	Name    string
	Summary string
	Run     func(args []string, stdout, stderr io.Writer) int
}

// Set is a program's subcommands. The zero value is not usable: set Prog. Register
// before Run; a Set is not safe for concurrent registration.
type Set struct {
	// Prog is the program name used in messages ("kvroute").
	Prog string
	cmds map[string]Command
}

// Register adds c, replacing a command of the same name.
func (s *Set) Register(c Command) {
	if s.cmds == nil {
		s.cmds = map[string]Command{}
	}
	s.cmds[c.Name] = c
}

// Run dispatches args[0] to its command. No arguments print the usage and return 2;
// -h, --help and help print it and return 0; an unknown command is an error (2).
func (s *Set) Run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		s.Usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := s.cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "%s: unknown command %q\n\n", s.Prog, args[0])
		s.Usage(stderr)
		return 2
	}
	return c.Run(args[1:], stdout, stderr)
}

// Usage writes the commands, sorted by name, with their summaries.
func (s *Set) Usage(w io.Writer) {
	fmt.Fprintf(w, "usage: %s <command> [flags]\n\ncommands:\n", s.Prog)
	names := make([]string, 0, len(s.cmds))
	width := 0
	for n := range s.cmds {
		names = append(names, n)
		width = max(width, len(n))
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-*s  %s\n", width, n, s.cmds[n].Summary)
	}
}
