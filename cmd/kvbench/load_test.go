package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"testing"

	"github.com/kvroute/kvroute/bench/sim"
)

// kvbench load keeps both default workloads going against a real kvsim worker for its
// duration, round after round, and counts the requests that completed.
func TestLoadAgainstKvsim(t *testing.T) {
	fc := sim.DefaultFleetConfig()
	fc.Worker.Model = "kvbench"
	fc.Worker.Profile = "test"
	f, err := sim.StartFleet(context.Background(), fc)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var stdout, stderr bytes.Buffer
	code := run([]string{"load", "--url", f.Infos()[0].URL, "--duration", "3s", "--report", "1s",
		"--users", "4", "--rounds", "2", "--think", "10ms", "--rate", "50", "--groups", "2", "--prompts", "3",
		"--system", "64", "--question", "16", "--output", "4"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit code %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	out := stdout.String()
	for _, kind := range []string{"multi-turn", "shared-prefix"} {
		if !regexp.MustCompile(kind + ` round 1: \d+ requests`).MatchString(out) {
			t.Errorf("no second round of %s:\n%s", kind, out)
		}
	}
	if !regexp.MustCompile(`progress: \d+ finished`).MatchString(out) {
		t.Errorf("no progress line:\n%s", out)
	}
	m := regexp.MustCompile(`total: (\d+) ok, (\d+) failed`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no total line:\n%s", out)
	}
	if ok, _ := strconv.Atoi(m[1]); ok < 20 {
		t.Errorf("%s ok requests, want at least 20:\n%s", m[1], out)
	}
	if m[2] != "0" {
		t.Errorf("%s failed requests, want 0:\n%s", m[2], out)
	}
}

func TestLoadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"load"},
		{"load", "--url", "http://127.0.0.1:1", "--duration", "0s"},
		{"load", "--url", "http://127.0.0.1:1", "--workloads", "nope"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit code %d, want 2 (stderr %s)", args, code, stderr.String())
		}
	}
}
