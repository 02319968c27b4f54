package configs

import (
	"strings"
	"testing"
	"time"
)

func TestStalenessConfig(t *testing.T) {
	d := Default().Events
	if d.MaxStaleness != 10*time.Second || d.StaleWeight != 0.5 {
		t.Errorf("defaults: max_staleness %v stale_weight %v, want 10s 0.5", d.MaxStaleness, d.StaleWeight)
	}
	const workers = "workers: [{url: \"http://a:1\"}]\n"
	good := map[string]Staleness{
		"events: {max_staleness: 2s, stale_weight: 0.25}\n": {MaxStaleness: 2 * time.Second, StaleWeight: 0.25},
		"events: {max_staleness: 0s, stale_weight: 0}\n":    {},
		"events: {max_staleness: 100ms}\n":                  {MaxStaleness: 100 * time.Millisecond, StaleWeight: 0.5},
		"events: {stale_weight: 1}\n":                       {MaxStaleness: 10 * time.Second, StaleWeight: 1},
	}
	for y, want := range good {
		cfg, err := Load([]byte(y + workers))
		if err != nil {
			t.Errorf("%q: %v", y, err)
			continue
		}
		if cfg.Events.Staleness != want {
			t.Errorf("%q: got %+v, want %+v", y, cfg.Events.Staleness, want)
		}
	}
	bad := map[string]string{
		"events: {max_staleness: -1s}\n":      `events.max_staleness: "-1s" must not be negative`,
		"events: {max_staleness: 10ms}\n":     `events.max_staleness: "10ms" is below 100ms`,
		"events: {max_staleness: soon}\n":     "soon",
		"events: {stale_weight: 1.5}\n":       "events.stale_weight: 1.5 must be in [0, 1]",
		"events: {stale_weight: -0.1}\n":      "events.stale_weight: -0.1 must be in [0, 1]",
		"events: {stale_weight: .nan}\n":      "events.stale_weight: NaN must be in [0, 1]",
		"events: {max_staleness_s: 3}\n":      "field max_staleness_s not found",
		"events: {staleness: {max: 1s}}\n":    "field staleness not found",
		"events: {stale_weight: \"half\"}\n":  "half",
		"events: {max_staleness: [1, 2]}\n":   "into time.Duration",
		"events: {stale_weight: 0.5, x: 1}\n": "field x not found",
	}
	for y, want := range bad {
		_, err := Load([]byte(y + workers))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one containing %q", y, err, want)
		}
	}
}
