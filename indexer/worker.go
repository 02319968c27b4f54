package indexer

import (
	"strings"

	"github.com/kvroute/kvroute/proto"
)

// Tier is the storage tier of a cached block.
type Tier uint8

// The tiers the index tracks. Engines name them in the event's medium field; see
// [TierOf].
const (
	TierGPU Tier = iota
	TierCPU
	TierDisk
	TierOther
	numTiers = 4
)

// NumTiers is the number of tiers, for arrays indexed by [Tier].
const NumTiers = numTiers

// String returns the tier's lowercase name, used as a metric label.
func (t Tier) String() string {
	switch t {
	case TierGPU:
		return "gpu"
	case TierCPU:
		return "cpu"
	case TierDisk:
		return "disk"
	}
	return "other"
}

// TierOf maps an event's medium to a tier: "" and "GPU" (any case, also "cuda") are GPU,
// "CPU"/"cpu_pinned" CPU, "DISK"/"LocalDisk"/"SSD"/"NVMe" disk, anything else other.
func TierOf(medium string) Tier {
	switch {
	case medium == "", strings.EqualFold(medium, "GPU"), strings.EqualFold(medium, "cuda"):
		return TierGPU
	case strings.EqualFold(medium, "CPU"), strings.EqualFold(medium, "cpu_pinned"):
		return TierCPU
	case strings.EqualFold(medium, "DISK"), strings.EqualFold(medium, "LocalDisk"),
		strings.EqualFold(medium, "SSD"), strings.EqualFold(medium, "NVMe"):
		return TierDisk
	}
	return TierOther
}

// ownTier keys the rare extra references: several engine hashes of one worker resolving to
// the same own hash on the same tier (for example multimodal blocks whose engine hash
// covers the image but whose tokens are equal placeholders).
type ownTier struct {
	own  proto.BlockHash
	tier Tier
}

// workerState is everything the index keeps about one worker. Index.mu guards it.
type workerState struct {
	key proto.WorkerKey
	wid uint32
	gen uint32
	// eng resolves engine hashes (BlockRemoved, parent links, token-less stores).
	eng *engTable
	// reserved is the engine entries eng is sized for (Index.Reserve), kept across clears.
	reserved int
	// extra counts engine entries beyond the first holding (own, tier); nil until needed.
	extra map[ownTier]uint32
	// pred holds the expiry (unix ns) of each predicted block.
	pred predMap
	// tips are the chains recent Predicts covered (predTips); tipsEpoch counts the
	// lowered expiries that emptied it.
	tips      predTips
	tipsEpoch uint32
	// blocks counts the blocks whose node carries this worker's flag per tier.
	blocks    [numTiers]int64
	predicted int64
	// memo of the last set transition, hit by every block of a stored chain.
	memoFrom setID
	memoCode uint32
	memoTo   setID
}

// Reserve sizes the engine-hash tables of worker id (every data-parallel rank the index
// has seen for it, sharing blocks evenly) for a KV cache of blocks blocks, at most
// Options.MaxBlocksPerWorker each, and the node table for the sum of every worker's
// reservation (at most Options.MaxBlocks), so that ingest never rehashes them while the
// caches fill; a clear keeps the sizes. The router calls it with the capacity each worker
// reports (vllm:cache_config_info num_gpu_blocks, sglang num_pages) on every scrape, so
// a call that changes nothing only takes the read lock. Workers not seen yet are left
// alone (the next call after their first event sizes them), blocks <= 0 does nothing,
// and a smaller value than before never shrinks a table.
func (ix *Index) Reserve(id string, blocks int) {
	if blocks <= 0 {
		return
	}
	ix.mu.RLock()
	done := ix.reservedLocked(id, blocks, false)
	ix.mu.RUnlock()
	if done {
		return
	}
	ix.mu.Lock()
	ix.reservedLocked(id, blocks, true)
	ix.mu.Unlock()
}

// reservedLocked reports whether every state of worker id is reserved for its share of
// blocks, and with apply reserves those that are not. mu must be held, for writing with
// apply.
func (ix *Index) reservedLocked(id string, blocks int, apply bool) bool {
	ranks := 0
	for k := range ix.byKey {
		if k.ID == id {
			ranks++
		}
	}
	if ranks == 0 {
		return true
	}
	share := min((blocks+ranks-1)/ranks, ix.opts.MaxBlocksPerWorker)
	done := true
	for k, ws := range ix.byKey {
		if k.ID != id || ws.reserved >= share || ws.removed() {
			continue
		}
		done = false
		if apply {
			ws.reserved = share
			ws.eng.reserve(share)
		}
	}
	if apply && !done {
		// The node table holds at most every worker's cache (less where they share
		// blocks), and at most MaxBlocks.
		total := 0
		for _, ws := range ix.byKey {
			total += ws.reserved
		}
		ix.nodes.Reserve(min(total, ix.opts.MaxBlocks))
	}
	return done
}
