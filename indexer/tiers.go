package indexer

// TierByName returns the tier whose [Tier.String] is name ("gpu", "cpu", "disk",
// "other"), and false for any other name.
func TierByName(name string) (Tier, bool) {
	for t := Tier(0); t < numTiers; t++ {
		if t.String() == name {
			return t, true
		}
	}
	return 0, false
}

// TierWeightsOf converts weights by tier name (as configured in
// cache_aware.tier_weights) into [Options.TierWeights]. Names that are no tier are
// ignored (configuration validation rejects them); GPU is 1 unless given.
func TierWeightsOf(byName map[string]float64) *[NumTiers]float64 {
	w := [NumTiers]float64{TierGPU: 1}
	for name, v := range byName {
		if t, ok := TierByName(name); ok {
			w[t] = v
		}
	}
	return &w
}
