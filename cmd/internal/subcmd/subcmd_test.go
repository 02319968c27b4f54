package subcmd

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	s := &Set{Prog: "prog"}
	var got []string
	s.Register(Command{Name: "go", Summary: "does it", Run: func(args []string, _, _ io.Writer) int {
		got = args
		return 7
	}})
	s.Register(Command{Name: "longer-name", Summary: "other", Run: func([]string, io.Writer, io.Writer) int { return 0 }})
	cases := []struct {
		args     []string
		code     int
		inStderr string
	}{
		{nil, 2, "usage: prog <command>"},
		{[]string{"help"}, 0, "  go           does it\n"},
		{[]string{"--help"}, 0, "  longer-name  other\n"},
		{[]string{"nope"}, 2, `prog: unknown command "nope"`},
		{[]string{"go", "a", "b"}, 7, ""},
	}
	for _, c := range cases {
		var stderr bytes.Buffer
		if code := s.Run(c.args, io.Discard, &stderr); code != c.code || !strings.Contains(stderr.String(), c.inStderr) {
			t.Errorf("Run(%q) = %d, stderr %q; want %d and %q", c.args, code, stderr.String(), c.code, c.inStderr)
		}
	}
	if strings.Join(got, " ") != "a b" {
		t.Errorf("command got args %q, want [a b]", got)
	}
}
