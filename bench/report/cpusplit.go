package report

import (
	"bytes"
	"context"
	"fmt"
	"runtime/pprof"

	"github.com/google/pprof/profile"
)

// The parts of a run, as pprof goroutine labels (key "part"): every goroutine the router,
// the simulated fleet or the load generator starts inherits its part's label, so a CPU
// profile of the run splits the process's CPU between them.
const (
	partKey    = "part"
	partRouter = "router"
	partFleet  = "fleet"
	partClient = "client"
)

// CPUSplit is a run's CPU time by part, in seconds, from a CPU profile sampled at 100 Hz
// (so each figure is within about 10 ms times the square root of its samples). Other is
// time no part's goroutines were charged for: the garbage collector's background
// workers and the runtime; a part's own allocations are charged to it through GC assists.
type CPUSplit struct {
	Router float64 `json:"router_s"`
	Fleet  float64 `json:"fleet_s"`
	Client float64 `json:"client_s"`
	Other  float64 `json:"other_s"`
}

// withPart runs f with ctx carrying the part's label, so goroutines f starts inherit it.
func withPart(ctx context.Context, part string, f func(context.Context)) {
	pprof.Do(ctx, pprof.Labels(partKey, part), f)
}

// cpuProfile is a CPU profile in progress; stop it with [cpuProfile.split].
type cpuProfile struct{ buf bytes.Buffer }

// startCPUProfile starts profiling the process, or returns an error when a profile is
// already running (say, go test -cpuprofile): the run then has no split.
func startCPUProfile() (*cpuProfile, error) {
	p := &cpuProfile{}
	if err := pprof.StartCPUProfile(&p.buf); err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return p, nil
}

// split stops the profile and sums its samples by part.
func (p *cpuProfile) split() (CPUSplit, error) {
	pprof.StopCPUProfile()
	prof, err := profile.Parse(&p.buf)
	if err != nil {
		return CPUSplit{}, fmt.Errorf("parse cpu profile: %w", err)
	}
	return splitProfile(prof)
}

// splitProfile sums a CPU profile's samples (nanoseconds) by their part label.
func splitProfile(prof *profile.Profile) (CPUSplit, error) {
	idx := -1
	for i, st := range prof.SampleType {
		if st.Type == "cpu" && st.Unit == "nanoseconds" {
			idx = i
		}
	}
	if idx < 0 {
		return CPUSplit{}, fmt.Errorf("cpu profile has no cpu/nanoseconds samples")
	}
	var s CPUSplit
	for _, smp := range prof.Sample {
		sec := float64(smp.Value[idx]) / 1e9
		var part string
		if v := smp.Label[partKey]; len(v) > 0 {
			part = v[0]
		}
		switch part {
		case partRouter:
			s.Router += sec
		case partFleet:
			s.Fleet += sec
		case partClient:
			s.Client += sec
		default:
			s.Other += sec
		}
	}
	return s, nil
}
