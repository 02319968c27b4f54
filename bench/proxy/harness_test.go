package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestRunHarness runs the whole benchmark briefly at low load against the fake upstream
// and kvroute (stack.Run in a child process; nginx is left out so the test needs no
// system package) and checks that the report is sane.
func TestRunHarness(t *testing.T) {
	for _, tc := range []struct {
		mode             string
		workloads        []Workload
		duration         time.Duration
		policy, tokenize string
		wantServe        string // how the report names kvroute's command
	}{
		{ModeMixed, []Workload{{Name: "chat", Rate: 200}, {Name: "stream", Stream: true, Rate: 20}}, time.Second, "", "", "serve --policy round_robin`"},
		{ModeSequential, []Workload{{Name: "chat", Rate: 400}}, time.Second, "cache_aware", "approx", "serve --policy cache_aware --tokenize approx`"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			var log bytes.Buffer
			kv := selfCommand("kvroute")
			rep, err := Run(context.Background(), Config{
				Mode: tc.mode, Workloads: tc.workloads, Rounds: 1, Duration: tc.duration, Warmup: 200 * time.Millisecond,
				Upstream: selfCommand("upstream"), Kvroute: &kv, Log: &log, Policy: tc.policy, Tokenize: tc.tokenize,
			})
			if err != nil {
				t.Fatalf("%v\nlog:\n%s", err, log.String())
			}
			if got, want := len(rep.Windows), 2*len(tc.workloads); got != want {
				t.Fatalf("%d windows, want %d", got, want)
			}
			for _, s := range rep.Summaries {
				checkSummary(t, s, tc.workloads)
			}
			for _, a := range rep.Added {
				if a.Target != "kvroute" {
					t.Errorf("added latency for %q", a.Target)
				}
			}
			if len(rep.Goals) != 0 {
				t.Errorf("goals without nginx: %+v", rep.Goals)
			}
			md := rep.Markdown(2)
			for _, want := range []string{"## Proxy overhead", "| direct |", "| kvroute |", "### chat", tc.wantServe} {
				if !strings.Contains(md, want) {
					t.Errorf("markdown lacks %q:\n%s", want, md)
				}
			}
			js, err := rep.JSON()
			if err != nil {
				t.Fatal(err)
			}
			var back Report
			if err := json.Unmarshal(js, &back); err != nil || len(back.Summaries) != len(rep.Summaries) {
				t.Errorf("json does not round-trip: %v", err)
			}
		})
	}
}

// TestRunHarnessPeak runs a peak run briefly without nginx: each target's closed-loop
// peak first, then the latency windows at half of kvroute's peak.
func TestRunHarnessPeak(t *testing.T) {
	var log bytes.Buffer
	kv := selfCommand("kvroute")
	workloads := []Workload{{Name: "chat", Rate: 200}, {Name: "stream", Stream: true, Rate: 20}}
	rep, err := Run(context.Background(), Config{
		Workloads: workloads, Rounds: 1, Duration: 500 * time.Millisecond, Warmup: 100 * time.Millisecond,
		Upstream: selfCommand("upstream"), Kvroute: &kv, Log: &log, Peak: true, PeakConns: 2,
	})
	if err != nil {
		t.Fatalf("%v\nlog:\n%s", err, log.String())
	}
	if workloads[0].Rate != 200 {
		t.Errorf("the caller's workloads were changed: %+v", workloads)
	}
	if got, want := len(rep.Peaks), 2*len(workloads); got != want {
		t.Fatalf("%d peak windows, want %d", got, want)
	}
	if rep.Settings.Mode != ModeSequential || len(rep.Windows) != 2*len(workloads) {
		t.Errorf("latency windows: mode %q, %d windows", rep.Settings.Mode, len(rep.Windows))
	}
	for _, w := range rep.Settings.Workloads {
		kvPeak := findSummary(rep.PeakSummaries, w.Name, "kvroute")
		if kvPeak == nil || kvPeak.OK == 0 || kvPeak.OK != kvPeak.Sent || kvPeak.PerProxyCPU <= 0 {
			t.Fatalf("%s: kvroute's peak %+v", w.Name, kvPeak)
		}
		// One round: the median is that window's throughput.
		if want := kvPeak.Throughput / 2; w.Rate < want*0.99 || w.Rate > want*1.01 {
			t.Errorf("%s: rate %.1f, want half of kvroute's peak %.1f", w.Name, w.Rate, kvPeak.Throughput)
		}
		if !strings.Contains(rep.PeakBasis[w.Name], "half of kvroute's peak") {
			t.Errorf("%s: basis %q", w.Name, rep.PeakBasis[w.Name])
		}
		for _, s := range rep.Summaries {
			if s.Workload == w.Name && s.Sent < int(w.Rate*0.5*0.9) {
				t.Errorf("%s/%s: %d sent at %.0f req/s for 0.5 s", w.Name, s.Target, s.Sent, w.Rate)
			}
		}
	}
	md := rep.Markdown(2)
	for _, want := range []string{"### Peak (closed loop, 2 clients)", "half of kvroute's peak", "| chat | kvroute |"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func checkSummary(t *testing.T, s Summary, workloads []Workload) {
	t.Helper()
	var w Workload
	for _, x := range workloads {
		if x.Name == s.Workload {
			w = x
		}
	}
	name := s.Workload + "/" + s.Target
	if s.OK != s.Sent || s.Sent < int(w.Rate/2) {
		t.Errorf("%s: %d of %d ok", name, s.OK, s.Sent)
	}
	l := s.Latency
	if l.N != s.OK || l.P50 <= 0 || l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.Max {
		t.Errorf("%s: percentiles out of order: %+v", name, l)
	}
	// Loopback at low load: a p50 of seconds means something is broken (a stalled
	// stream, a request waiting for a timeout). The bound is loose because -race and a
	// shared, overloaded machine (load average 20 seen) push p50 to hundreds of ms.
	if l.P50 > 5e6 {
		t.Errorf("%s: p50 %.0f µs", name, l.P50)
	}
	if w.Stream != (s.First != nil) {
		t.Errorf("%s: first-chunk times %v for stream=%v", name, s.First, w.Stream)
	}
	if s.First != nil && (s.First.P50 <= 0 || s.First.P50 > l.P50 || s.First.Max > l.Max) {
		t.Errorf("%s: first chunk %+v after the end %+v", name, *s.First, l)
	}
	// CPU times come in 10 ms ticks: the fake upstream may use less than one in a short
	// window, the load generator (this process) and the machine may not.
	if s.CPU.Loadgen <= 0 || s.CPU.Machine < s.CPU.Loadgen || s.CPU.Upstream < 0 {
		t.Errorf("%s: CPU not measured: %+v", name, s.CPU)
	}
	if (s.Target == "kvroute") != (s.PerProxyCPU > 0) {
		t.Errorf("%s: %.0f req/s per proxy CPU-second (proxy CPU %.3f s)", name, s.PerProxyCPU, s.CPU.Proxy)
	}
}
