package sim

import (
	"testing"
	"time"
)

// TestCPUTierLoadBack: a prompt evicted from the GPU cache by two others is loaded back
// from the CPU tier: reported as cached tokens, counted as loaded, and its step costs
// the modelled copy (320 tokens x 128 KiB at 25 GB/s) instead of recomputing them; a
// worker without the tier recomputes it.
func TestCPUTierLoadBack(t *testing.T) {
	const kv = 40
	tiered := startFleet(t, 1, func(c *Config) { c.KVBlocks, c.CPUBlocks = kv, 400 }).Workers()[0]
	plain := startFleet(t, 1, func(c *Config) { c.KVBlocks = kv }).Workers()[0]
	prompt := words(0, 321) // 20 full blocks can hit
	for _, w := range []*Worker{tiered, plain} {
		complete(t, w, map[string]any{"prompt": prompt, "max_tokens": 1})
		// Two 31-block requests on a 40-block cache evict every block of the prompt.
		complete(t, w, map[string]any{"prompt": words(10000, 480), "max_tokens": 1})
		complete(t, w, map[string]any{"prompt": words(20000, 480), "max_tokens": 1})
	}
	busy0 := tiered.Stats().BusyTime
	c := complete(t, tiered, map[string]any{"prompt": prompt, "max_tokens": 1})
	if got := c.Usage.PromptTokensDetails.CachedTokens; got != 320 {
		t.Errorf("tiered worker: cached_tokens = %d, want 320 (loaded from CPU)", got)
	}
	st := tiered.Stats()
	if st.CPULoadedTokens != 320 || st.CPUBlocks == 0 {
		t.Errorf("tiered worker: CPULoadedTokens %d (want 320), CPUBlocks %d", st.CPULoadedTokens, st.CPUBlocks)
	}
	prof := Profiles["test"]
	copySeconds := 320 * 131072 / 25e9 // 1.68 ms
	load := time.Duration(copySeconds * float64(time.Second))
	if got, want := st.BusyTime-busy0, prof.StepTime(1, 0, 0)+load; got != want {
		t.Errorf("tiered worker: the load-back step took %v, want %v (one token computed plus the copy)", got, want)
	}
	if recompute := prof.StepTime(321, 0, 0); load >= recompute/4 {
		t.Errorf("copy %v is not well below recomputing %v", load, recompute)
	}
	c = complete(t, plain, map[string]any{"prompt": prompt, "max_tokens": 1})
	if got := c.Usage.PromptTokensDetails.CachedTokens; got != 0 {
		t.Errorf("worker without a CPU tier: cached_tokens = %d, want 0 (evicted)", got)
	}
	if st := plain.Stats(); st.CPULoadedTokens != 0 || st.CPUBlocks != 0 {
		t.Errorf("worker without a CPU tier: stats %+v", st)
	}
}

func TestCPUTierConfig(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*Config)
		want string
	}{
		{func(c *Config) { c.CPUBlocks = -1 }, "cpu_blocks must be at least 0, got -1"},
		{func(c *Config) { c.CPUBandwidth = 0 }, "cpu_bandwidth must be in (0, 1e6] GB/s, got 0"},
	} {
		c := DefaultConfig()
		tc.mod(&c)
		if err := c.Validate(); err == nil || err.Error() != tc.want {
			t.Errorf("Validate() = %v, want %q", err, tc.want)
		}
	}
	fc, err := ParseFleetConfig([]byte("cpu_blocks: 1000\ncpu_bandwidth: 50\n"))
	if err != nil || fc.Worker.CPUBlocks != 1000 || fc.Worker.CPUBandwidth != 50 {
		t.Errorf("ParseFleetConfig = %+v, %v", fc.Worker, err)
	}
}
