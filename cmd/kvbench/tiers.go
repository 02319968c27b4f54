package main

import (
	"fmt"
	"strconv"
	"strings"
)

// parseTierWeights parses --tier-weights, "tier=weight" pairs separated by commas
// ("cpu=0.5,disk=0.2"); the router's config validation checks names and ranges.
func parseTierWeights(s string) (map[string]float64, error) {
	out := map[string]float64{}
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		name, val, ok := strings.Cut(part, "=")
		w, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if !ok || err != nil {
			return nil, fmt.Errorf("--tier-weights: %q is not tier=weight", part)
		}
		out[strings.TrimSpace(name)] = w
	}
	return out, nil
}
