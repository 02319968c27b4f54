package churn

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Row is one scenario of the churn table: what the clients saw over the whole run, how
// fast membership changes took effect, and the hit rate around the change.
type Row struct {
	// Scenario names the change.
	Scenario string
	// Total counts every request of the run, warm-up included.
	Total Window
	// Before, During and After are the requests sent in the window before the first
	// membership change, from it to the end of the last, and in the window after.
	Before, During, After Window
	// Available lists, per worker that (re)joined, the time from its DNS record
	// appearing to the router having it available for requests (health and models
	// checked); Join the time to the end of the first request it answered.
	Available, Join []time.Duration
	// Idle counts the workers that (re)joined and answered no request within JoinWait
	// (they are not in Join).
	Idle     int
	JoinWait time.Duration
	// Leave lists, per worker removed, the time from its DNS record disappearing to the
	// index holding no entry for it.
	Leave []time.Duration
	// Change is the time from the first membership change to the end of the last.
	Change time.Duration
}

// WriteTable writes rows as a Markdown table.
func WriteTable(w io.Writer, rows []Row) error {
	var b strings.Builder
	b.WriteString("| scenario | requests sent | completed | clean errors | lost | new worker available, s (median / max) | new worker takes traffic, s (median / max) | removed worker leaves the index, s (median / max) | hit rate before / during / after (kvsim cached tokens) | predicted by the router before / during / after |\n")
	b.WriteString("|---|---:|---:|---:|---:|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %s | %s | %s | %s | %s |\n",
			strings.ReplaceAll(r.Scenario, "|", "/"), r.Total.Sent, r.Total.Completed, r.Total.CleanErrors, r.Total.Lost,
			spread(r.Available), joined(r), spread(r.Leave),
			triple(r.Before.HitRate(), r.During.HitRate(), r.After.HitRate()),
			triple(r.Before.Predicted(), r.During.Predicted(), r.After.Predicted()))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// spread formats the median and maximum of ds in seconds, with their count.
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("%.2f / %.2f (%d)", median(s).Seconds(), s[len(s)-1].Seconds(), len(s))
}

// joined formats the time to take traffic, with the workers that took none.
func joined(r Row) string {
	s := spread(r.Join)
	if r.Idle > 0 {
		s += fmt.Sprintf("; %d took no request in %.0f s", r.Idle, r.JoinWait.Seconds())
	}
	return s
}

// median of sorted s (the mean of the middle two for an even count).
func median(s []time.Duration) time.Duration {
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func triple(a, b, c float64) string {
	return fmt.Sprintf("%.1f%% / %.1f%% / %.1f%%", 100*a, 100*b, 100*c)
}
