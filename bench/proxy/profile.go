package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Profile is the CPU profile of kvroute under one workload, taken with perf after the
// measurement (never during it).
type Profile struct {
	Workload string `json:"workload"`
	// Data is the perf.data file.
	Data string `json:"data"`
	// Self is the head of `perf report --no-children --sort symbol`: the symbols with
	// the most self time.
	Self string `json:"self"`
	// Inclusive is the head of `perf report --children --sort symbol`: the symbols with
	// the most time spent in them and their callees.
	Inclusive string `json:"inclusive"`
}

// profile records kvroute with perf under each workload for cfg.ProfileDuration: at the
// workload's offered rate, or in the peak's closed loop when cfg.Peak is set.
func (h *harness) profile(ctx context.Context) error {
	var kv *target
	for _, t := range h.targets {
		if t.name == "kvroute" {
			kv = t
		}
	}
	if kv == nil {
		return nil
	}
	for _, w := range h.cfg.Workloads {
		data := filepath.Join(h.dir, "perf-kvroute-"+w.Name+".data")
		h.logf("profiling kvroute on %s for %v", w.Name, h.cfg.ProfileDuration)
		loadDone := make(chan error, 1)
		go func() {
			o := h.loadOptions([]*target{kv}, w, h.cfg.ProfileDuration+2*time.Second)
			var err error
			if h.cfg.Peak {
				// The profile of a peak run is the peak's: the same closed loop.
				_, err = RunClosed(ctx, o, h.cfg.PeakConns)
			} else {
				_, err = RunLoad(ctx, o)
			}
			loadDone <- err
		}()
		// Let the load settle, then record for the profile duration.
		select {
		case <-time.After(time.Second):
		case err := <-loadDone:
			return fmt.Errorf("profile load %s: %w", w.Name, err)
		}
		rec := exec.CommandContext(ctx, h.cfg.Perf, "record", "-F", "4999", "-g", "-p", strconv.Itoa(kv.proc.pid()),
			"-o", data, "--", "sleep", strconv.FormatFloat(h.cfg.ProfileDuration.Seconds(), 'f', 1, 64))
		out, recErr := rec.CombinedOutput()
		if err := <-loadDone; err != nil {
			return fmt.Errorf("profile load %s: %w", w.Name, err)
		}
		if recErr != nil {
			return fmt.Errorf("perf record: %w\n%s", recErr, out)
		}
		pr := Profile{Workload: w.Name, Data: data}
		for _, v := range []struct {
			dst  *string
			mode string
		}{{&pr.Self, "--no-children"}, {&pr.Inclusive, "--children"}} {
			rep := exec.CommandContext(ctx, h.cfg.Perf, "report", "-i", data, "--stdio", v.mode,
				"--sort", "symbol", "--percent-limit", "1", "--call-graph=none")
			out, err := rep.Output()
			if err != nil {
				return fmt.Errorf("perf report: %w", err)
			}
			*v.dst = perfTop(out, 40)
		}
		h.report.Profiles = append(h.report.Profiles, pr)
	}
	return nil
}

// ipcColumns are perf report's IPC columns, empty ("-  -") with a software clock event.
var ipcColumns = regexp.MustCompile(`\s+-\s+-\s*$`)

// perfTop keeps the sample count and the first n sample lines of a perf report, without
// the other comments and the empty IPC columns.
func perfTop(report []byte, n int) string {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(report))
	for sc.Scan() && len(lines) < n {
		l := strings.TrimSpace(ipcColumns.ReplaceAllString(sc.Text(), ""))
		switch {
		case strings.HasPrefix(l, "# Samples:"):
			lines = append(lines, strings.TrimPrefix(l, "# "))
		case l == "" || strings.HasPrefix(l, "#"):
		default:
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}
