package configs

import (
	"math"
	"slices"
	"strings"
)

// TierNames are the storage tiers cache_aware.tier_weights accepts, as the index names
// them (indexer.Tier.String): an event's medium "GPU" (or none) is gpu, "CPU" cpu,
// "DISK"/"SSD"/"NVMe"/"LocalDisk" disk, anything else other.
var TierNames = []string{"gpu", "cpu", "disk", "other"}

// TierWeights is cache_aware.tier_weights: how much a block a worker holds on each
// storage tier counts as cached, per tier name (TierNames). A GPU block is the unit and
// always counts 1; a block the worker holds only in a lower tier (CPU memory, through
// vLLM's KV offloading, or disk) counts its tier's weight, in [0, 1], because loading it
// back costs less than recomputing it but is not free; 0 ignores the tier (its blocks do
// not count as held at all). A block held on several tiers counts its best tier's weight.
// Tiers left out keep their default.
type TierWeights map[string]float64

// Default tier weights: cpu 0 and disk 0 keep the index's behaviour before tiers were
// weighed (only GPU blocks count); see the README's "Storage tiers" for the measured
// effect of other values.
func defaultTierWeights() TierWeights {
	return TierWeights{"gpu": 1, "cpu": 0, "disk": 0, "other": 0}
}

// validate appends the tier weights' problems with bad.
func (tw TierWeights) validate(bad func(format string, args ...any)) {
	names := make([]string, 0, len(tw))
	for name := range tw {
		names = append(names, name)
	}
	slices.Sort(names) // errors in a stable order
	for _, name := range names {
		w := tw[name]
		switch {
		case !slices.Contains(TierNames, name):
			bad("cache_aware.tier_weights: unknown tier %q (tiers: %s)", name, strings.Join(TierNames, ", "))
		case name == "gpu" && w != 1:
			bad("cache_aware.tier_weights.gpu: %v must be 1 (a GPU block is the unit the other tiers are weighed against)", w)
		case math.IsNaN(w) || w < 0 || w > 1:
			bad("cache_aware.tier_weights.%s: %v must be in [0, 1] (0 ignores the tier, 1 counts it as GPU)", name, w)
		}
	}
}
