package configs

import (
	"maps"
	"strings"
	"testing"
)

func TestTierWeightsValues(t *testing.T) {
	cfg, err := LoadFile("testdata/tiers/weights.good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// Tiers left out keep their defaults.
	want := TierWeights{"gpu": 1, "cpu": 0.5, "disk": 0.2, "other": 0}
	if got := cfg.CacheAware.TierWeights; !maps.Equal(got, want) {
		t.Errorf("tier_weights = %v, want %v", got, want)
	}
	if got, want := Default().CacheAware.TierWeights, (TierWeights{"gpu": 1, "cpu": 0, "disk": 0, "other": 0}); !maps.Equal(got, want) {
		t.Errorf("default tier_weights = %v, want %v", got, want)
	}
	// Each Default has its own map: a load must not change the next default.
	if Default().CacheAware.TierWeights["cpu"] != 0 {
		t.Error("loading a file changed the default tier weights")
	}
}

func TestTierWeightsBad(t *testing.T) {
	for file, wants := range map[string][]string{
		"testdata/tiers/weights.bad.yaml": {
			"cache_aware.tier_weights.gpu: 0.9 must be 1",
			"cache_aware.tier_weights.cpu: 1.5 must be in [0, 1]",
			"cache_aware.tier_weights.disk: -0.1 must be in [0, 1]",
			"cache_aware.tier_weights.other: NaN must be in [0, 1]",
			`cache_aware.tier_weights: unknown tier "hbm" (tiers: gpu, cpu, disk, other)`,
		},
		"testdata/tiers/weights_type.bad.yaml": {"cannot unmarshal !!str `fast` into float64"},
	} {
		_, err := LoadFile(file)
		if err == nil {
			t.Errorf("%s: loaded without error", file)
			continue
		}
		for _, w := range wants {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not contain %q", file, err, w)
			}
		}
	}
}
