package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvroute/kvroute/bench/report"
)

// kvbench run --pd 1:1 replays a tiny workload through aggregated serving on two
// workers and through a prefill and a decode worker, under both protocols: every
// request succeeds, the P/D run's requests went through both pools, and the report
// has the P/D table.
func TestRunPD(t *testing.T) {
	for _, protocol := range []string{"vllm", "sglang"} {
		t.Run(protocol, func(t *testing.T) {
			out, s := runReport(t, "| cache_aware | P/D 1:1 "+protocol+" |", "run", "--pd", "1:1", "--pd-protocol", protocol,
				"--workload", "shared-prefix", "--groups", "2", "--prompts", "3", "--system", "64", "--question", "16", "--output", "8",
				"--rate", "50", "--profile", "test", "--policies", "cache_aware")
			if len(s.Results) != 2 || s.Results[0].PD != "" || s.Results[1].PD != "1:1 "+protocol {
				t.Fatalf("results %+v, want aggregated then P/D 1:1 %s", s.Results, protocol)
			}
			agg, pd := s.Results[0], s.Results[1]
			for _, r := range s.Results {
				if r.Errors != 0 {
					t.Errorf("%s: %d errors, first: %s", r.Label(), r.Errors, r.FirstError)
				}
				if r.TTFT.P50 <= 0 || r.ITL.P50 <= 0 || r.OutputTPS <= 0 {
					t.Errorf("%s: TTFT %+v, ITL %+v, %.0f output tokens/s: want all positive", r.Label(), r.TTFT, r.ITL, r.OutputTPS)
				}
			}
			ids := func(r report.Result) map[string]uint64 {
				m := map[string]uint64{}
				for _, w := range r.PerWorker {
					m[w.ID] = w.Requests
				}
				return m
			}
			if got := ids(agg); len(got) != 2 || got["w0"]+got["w1"] != uint64(s.Requests) {
				t.Errorf("aggregated run's workers %v, want w0 and w1 serving %d requests", got, s.Requests)
			}
			// Every request is prefilled on p0 and decoded on d0.
			if got := ids(pd); len(got) != 2 || got["p0"] != uint64(s.Requests) || got["d0"] != uint64(s.Requests) {
				t.Errorf("P/D run's workers %v, want p0 and d0 with %d requests each", got, s.Requests)
			}
			// Two groups of three prompts sharing 64 system tokens: the prefill pool's only
			// worker finds the system prompt cached for 4 of the 6 prompts.
			if pd.HitRate <= 0 || pd.HitRate >= 1 {
				t.Errorf("P/D prefill-pool hit rate %.3f, want strictly between 0 and 1", pd.HitRate)
			}
			if _, err := os.Stat(filepath.Join(out, "requests_cache_aware_pd.jsonl")); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestRunPDFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--pd", "2"}, `--pd: "2" is not P:D`},
		{[]string{"--pd", "a:b"}, `--pd: "a:b" is not P:D`},
		{[]string{"--pd", "0:2"}, "each pool needs between 1 and 64 workers"},
		{[]string{"--pd", "2:-1"}, "each pool needs between 1 and 64 workers"},
		{[]string{"--pd", "1000:1"}, "each pool needs between 1 and 64 workers"},
		{[]string{"--pd", "1:1", "--pd-protocol", "nixl"}, `--pd-protocol: "nixl" is not vllm or sglang`},
		{[]string{"--pd", "2:2", "--workers", "8"}, "--workers 8 contradicts --pd 2:2"},
	} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"run", "--out", t.TempDir()}, tc.args...)
		if code := run(args, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit code %d, want 2 (stderr %s)", tc.args, code, stderr.String())
		}
		if !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%q: stderr %q, want it to say %q", tc.args, stderr.String(), tc.want)
		}
	}
}

// runReport runs kvbench with args and --out in a new directory, fails the test unless
// it exits 0 and prints a report with the row want, and returns the directory and its
// report.json.
func runReport(t *testing.T, want string, args ...string) (string, report.Summary) {
	t.Helper()
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := run(append(args, "--out", out), &stdout, &stderr); code != 0 {
		t.Fatalf("exit code %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), want) {
		t.Errorf("no %q row in the report:\n%s", want, stdout.String())
	}
	b, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s report.Summary
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return out, s
}
