package sim

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Profile is a latency model of one model on one GPU setup. The time of one engine step
// (one forward pass over the scheduled batch) is
//
//	StepBase + PrefillPerToken*prefill tokens + DecodePerSeq*decoding sequences
//	  + PerContextToken*context tokens of the decoding sequences
//
// where prefill tokens are the uncached prompt tokens computed in the step (so cached
// prefixes cost nothing), and the context term is attention reading each decoding
// sequence's KV cache. A step with nothing scheduled takes no time.
type Profile struct {
	// Name is the profile's key in [Profiles].
	Name string
	// StepBase is the fixed cost of a step: reading the weights once (decode is memory
	// bound) plus scheduling and launch overhead.
	StepBase time.Duration
	// PrefillPerToken is the compute cost of one prompt token.
	PrefillPerToken time.Duration
	// DecodePerSeq is the compute cost of one decoding sequence per step.
	DecodePerSeq time.Duration
	// PerContextToken is the memory cost of reading one cached token's K and V per step.
	PerContextToken time.Duration
	// KVBlocks is the KV-cache capacity in 16-token blocks on that hardware, used when
	// the config does not set one.
	KVBlocks int
	// KVBytesPerToken is the size of one token's K and V over all layers (BF16): what a
	// P/D transfer moves per prompt token, and what loading a block back from the CPU
	// offload tier moves per token (Config.CPUBlocks).
	KVBytesPerToken int
}

// StepTime returns the modelled duration of a step, before time scaling.
func (p *Profile) StepTime(prefillTokens, decodeSeqs, contextTokens int) time.Duration {
	if prefillTokens == 0 && decodeSeqs == 0 {
		return 0
	}
	return p.StepBase +
		time.Duration(prefillTokens)*p.PrefillPerToken +
		time.Duration(decodeSeqs)*p.DecodePerSeq +
		time.Duration(contextTokens)*p.PerContextToken
}

// Profiles are the named latency profiles. The figures for real models are first-order
// roofline estimates, not measurements: they are derived from public hardware and model
// specifications with stated efficiency assumptions, so that relative costs (a cached vs
// an uncached prompt, a batch of 1 vs 64) have the right shape and magnitude.
//
// Sources:
//   - NVIDIA H100 SXM5 datasheet: 3.35 TB/s HBM3, 989 TFLOPS dense BF16, 80 GB.
//   - meta-llama/Llama-3.1-8B config.json: 8.03e9 parameters, 32 layers, 8 KV heads,
//     head_dim 128, so K+V per token = 2*32*8*128*2 bytes = 128 KiB in BF16.
//   - Qwen/Qwen3-32B config.json: 32.8e9 parameters, 64 layers, 8 KV heads, head_dim
//     128, so K+V per token = 256 KiB in BF16; served with tensor parallelism 2 as in the
//     llm-d benchmark ("8 x 2 H100": https://llm-d.ai/blog/kvcache-wins-you-can-see).
//
// Assumptions: prefill at 50% of peak FLOPS (2 FLOP per parameter per token); decode
// reads the weights and the KV cache at 70% of peak bandwidth; 1 ms of per-step
// overhead; KV capacity = 90% of GPU memory minus weights minus ~4 GB of activations per
// GPU, in 16-token blocks.
var Profiles = map[string]Profile{
	// Llama-3.1-8B, BF16, 1x H100:
	//   weights 16.06 GB / (3.35 TB/s * 0.7) = 6.85 ms, + 1 ms overhead  -> StepBase
	//   2 * 8.03e9 FLOP / (989e12 * 0.5)      = 32.5 us per prompt token (~31k tok/s)
	//   131072 B / (3.35e12 B/s * 0.7)        = 56 ns per context token per step
	//   per-sequence decode compute: 16 GFLOP / 495 TFLOPS = 32 us
	//   KV: (72 - 16 - 4) GB / (16 * 128 KiB) = ~24,800 blocks
	"llama-3.1-8b-h100": {
		Name:            "llama-3.1-8b-h100",
		StepBase:        7850 * time.Microsecond,
		PrefillPerToken: 32500 * time.Nanosecond,
		DecodePerSeq:    32 * time.Microsecond,
		PerContextToken: 56 * time.Nanosecond,
		KVBytesPerToken: 131072,
		KVBlocks:        24800,
	},
	// Qwen3-32B, BF16, 2x H100 (TP=2, 6.7 TB/s and 1978 TFLOPS together):
	//   weights 65.6 GB / (6.7 TB/s * 0.7)    = 14.0 ms, + 1 ms overhead -> StepBase
	//   2 * 32.8e9 FLOP / (1978e12 * 0.5)     = 66 us per prompt token (~15k tok/s)
	//   262144 B / (6.7e12 B/s * 0.7)         = 56 ns per context token per step
	//   per-sequence decode compute: 65.6 GFLOP / 989 TFLOPS = 66 us
	//   KV: (144 - 65.6 - 8) GB / (16 * 256 KiB) = ~16,800 blocks
	"qwen3-32b-2xh100": {
		Name:            "qwen3-32b-2xh100",
		StepBase:        15 * time.Millisecond,
		PrefillPerToken: 66 * time.Microsecond,
		DecodePerSeq:    66 * time.Microsecond,
		PerContextToken: 56 * time.Nanosecond,
		KVBytesPerToken: 262144,
		KVBlocks:        16800,
	},
	// test is for fast tests, not a real model: a 2000-token uncached prefill takes
	// 2 ms + 100 ms, a cached one about one 2 ms decode step, so TTFT differences are
	// large and a whole test stays well under a second.
	"test": {
		Name:            "test",
		StepBase:        2 * time.Millisecond,
		PrefillPerToken: 50 * time.Microsecond,
		DecodePerSeq:    10 * time.Microsecond,
		PerContextToken: 0,
		KVBytesPerToken: 131072, // as Llama-3.1-8B: 2000 tokens cross 100 Gbit/s in 21 ms
		KVBlocks:        4096,
	},
}

// LookupProfile returns the named profile or an error listing the known names.
func LookupProfile(name string) (Profile, error) {
	p, ok := Profiles[name]
	if !ok {
		names := make([]string, 0, len(Profiles))
		for n := range Profiles {
			names = append(names, n)
		}
		slices.Sort(names)
		return Profile{}, fmt.Errorf("unknown profile %q (known: %s)", name, strings.Join(names, ", "))
	}
	return p, nil
}

// IdleTTFT returns the modelled time to first token of a prompt of promptTokens tokens,
// cached of them already in the KV cache, alone on an idle engine that computes at most
// maxBatched tokens per step (max_num_batched_tokens), before time scaling: the engine's
// prefill steps for the uncached rest (at least one token, as in vLLM), the first token
// coming at the end of the last one. No request can get its first token sooner, so
// over a workload these are lower bounds on TTFT whatever the routing and load.
func (p *Profile) IdleTTFT(promptTokens, cached, maxBatched int) time.Duration {
	left := max(1, promptTokens-cached)
	maxBatched = max(1, maxBatched)
	var d time.Duration
	for left > 0 {
		n := min(left, maxBatched)
		d += p.StepTime(n, 0, 0)
		left -= n
	}
	return d
}
