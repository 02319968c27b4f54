package proto

// EngineHash is an engine's own id for a cached block, as published in its KV events.
// It is opaque: vLLM sends unsigned 64-bit ints or 32-byte digests (folded to 64 bits by
// the decoders), SGLang signed 64-bit ints. It is only used to resolve BlockRemoved and
// parent links, never compared with a [BlockHash].
type EngineHash uint64

// EventKind says what happened to a worker's KV cache.
type EventKind uint8

// The event kinds every engine publishes.
const (
	BlockStored EventKind = iota + 1
	BlockRemoved
	AllBlocksCleared
)

// String returns the engine's name for the kind ("BlockStored", ...).
func (k EventKind) String() string {
	switch k {
	case BlockStored:
		return "BlockStored"
	case BlockRemoved:
		return "BlockRemoved"
	case AllBlocksCleared:
		return "AllBlocksCleared"
	}
	return "Unknown"
}

// Event is one KV-cache event, normalized from any engine's wire format.
type Event struct {
	Kind EventKind
	// BlockHashes are the engine's ids of the blocks stored or removed, parent first.
	BlockHashes []EngineHash
	// ParentHash is the engine id of the block before BlockHashes[0]; valid only when
	// HasParent is true (BlockStored continuing an existing chain).
	ParentHash EngineHash
	HasParent  bool
	// TokenIDs are the tokens of the stored blocks, len(BlockHashes)*BlockSize of them
	// when present; empty when the engine did not send them (CPU offload).
	TokenIDs []uint32
	// BlockSize is the engine's tokens per block; 0 when not sent.
	BlockSize int
	// LoRAName is the adapter the blocks belong to; "" for the base model.
	LoRAName string
	// LoRAID is vLLM's deprecated integer adapter id; 0 when absent.
	LoRAID int64
	// Medium is the storage tier ("GPU", "CPU", ...); decoders fill "GPU" when absent.
	Medium string
	// GroupIdx is the KV-cache group (hybrid models); 0 by default.
	GroupIdx int
	// ExtraKeys holds, per block of BlockHashes, the extra inputs of the engine's block
	// hash (vLLM: LoRA name, multimodal identifiers, cache_salt on the first block of a
	// salted request, prompt-embeds hashes), each rendered as a string; an entry is nil
	// for a block without extra keys, and ExtraKeys is empty when no block has any.
	ExtraKeys [][]string
	// CacheSpecKind is vLLM's kv_cache_spec_kind of the group ("full_attention",
	// "sliding_window", ...); "" when not sent.
	CacheSpecKind string
	// SlidingWindow is vLLM's kv_cache_spec_sliding_window in tokens; 0 when not sent.
	SlidingWindow int
}

// Batch is one published message: the events of one engine step.
type Batch struct {
	// Seq is the publisher's sequence number, from the transport frame.
	Seq uint64
	// TS is the engine's timestamp in seconds since the epoch.
	TS float64
	// DPRank is the data-parallel rank that produced the batch; -1 when not sent.
	DPRank int
	Events []Event
}
