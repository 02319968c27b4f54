package sim

import (
	"time"

	"github.com/kvroute/kvroute/bench/sim/kvcache"
	"github.com/kvroute/kvroute/bench/sim/kvevents"
	"github.com/kvroute/kvroute/proto"
)

// The CPU offload tier (Config.CPUBlocks), modelled on vLLM's OffloadingConnector
// (vllm/distributed/kv_transfer/kv_connector/v1/offloading/scheduler.py):
//
//   - Store: every block the engine computes is also stored in the tier as it is
//     committed (vLLM's connector offloads each request's new full blocks every step,
//     write-through, not only at GPU eviction), so a block evicted from the GPU cache
//     stays in CPU memory until the tier's own LRU evicts it. The connector publishes
//     its stores as BlockStored with medium "CPU", no token ids and no parent (its
//     take_events), and its evictions as BlockRemoved with medium "CPU"; kvsim does the
//     same, each batch's CPU events after its GPU events, so a subscriber resolves a
//     token-less CPU store through the GPU store of the same block before it.
//   - Load: when a request is admitted, the blocks after its GPU prefix-cache hit that
//     the tier holds (leading run, as the connector's lookup) are loaded back instead
//     of recomputed: they count as computed tokens (and in usage cached_tokens, as
//     vLLM's scheduler counts num_computed_tokens including the connector's external
//     tokens), become GPU cache entries again (BlockStored "GPU" with their tokens), and
//     the copy adds blocks x block_size x Profile.KVBytesPerToken / CPUBandwidth to the
//     step that admits the request. vLLM loads asynchronously, the request waiting while
//     others run; adding the copy to the step overstates its cost for the other
//     requests of that step, never understates the request's own.
//   - vllm:prefix_cache_hits_total counts GPU hits only; CPU loads are counted apart
//     (Stats.CPULoadedTokens, kvsim:cpu_loaded_tokens_total).

// cpuMatch returns how many of r's blocks from hit (its GPU hit) up to maxHit the CPU
// tier holds, 0 without a tier. mu must be held.
func (e *engine) cpuMatch(r *request, hit, maxHit int) int {
	if e.cpu == nil || hit >= maxHit {
		return 0
	}
	return e.cpu.Match(r.hashes[hit:maxHit])
}

// loadFromCPU completes the load of r's blocks [hit, hit+n) from the CPU tier after
// their GPU blocks were allocated: they are committed to the GPU cache, published as
// stored on GPU, and the copy time is charged to the current step. mu must be held.
func (e *engine) loadFromCPU(r *request, hit, n int) {
	if n == 0 {
		return
	}
	bs := e.blockSize
	ev := kvevents.Event{Kind: proto.BlockStored, Hashes: r.hashes[hit : hit+n],
		Tokens: r.tokens[hit*bs : (hit+n)*bs], BlockSize: bs, LoRAName: r.lora, LoRAID: r.loraID}
	if hit > 0 {
		ev.Parent, ev.HasParent = r.hashes[hit-1], true
	}
	for i := hit; i < hit+n; i++ {
		e.pool.Commit(r.blocks[i], r.hashes[i])
	}
	r.committed = hit + n
	e.events = append(e.events, ev)
	bytes := float64(n * bs * e.prof.KVBytesPerToken)
	e.loadTime += time.Duration(bytes / (e.cfg.CPUBandwidth * 1e9) * float64(time.Second))
	e.stats.cpuLoadedTokens.Add(uint64(n * bs))
}

// offload stores newly committed blocks in the CPU tier (write-through) and queues the
// tier's events in the order they happen. mu must be held.
func (e *engine) offload(hashes []uint64) {
	if e.cpu == nil {
		return
	}
	for _, h := range hashes {
		var added bool
		var ev []uint64
		added, ev = e.cpu.Store(h, e.evictBuf[:0])
		for _, x := range ev {
			e.queueCPU(proto.BlockRemoved, x)
		}
		if added {
			e.queueCPU(proto.BlockStored, h)
		}
	}
}

// queueCPU queues a CPU-tier event for block h, extending the last queued event when
// it has the same kind. mu must be held.
func (e *engine) queueCPU(kind proto.EventKind, h uint64) {
	if n := len(e.cpuQueue); n > 0 && e.cpuQueue[n-1].Kind == kind {
		e.cpuQueue[n-1].Hashes = append(e.cpuQueue[n-1].Hashes, h)
		return
	}
	ev := kvevents.Event{Kind: kind, Hashes: []uint64{h}, Medium: "CPU"}
	if kind == proto.BlockStored {
		ev.BlockSize = e.blockSize
	}
	e.cpuQueue = append(e.cpuQueue, ev)
}

// takeLoadTime returns the CPU-tier copy time charged to the current step and resets
// it. mu must be held.
func (e *engine) takeLoadTime() time.Duration {
	d := e.loadTime
	e.loadTime = 0
	return d
}

// newOffload returns the configured CPU tier, nil without one.
func newOffload(cfg *Config) *kvcache.Offload {
	if cfg.CPUBlocks <= 0 {
		return nil
	}
	return kvcache.NewOffload(cfg.CPUBlocks)
}
