package indexer

import (
	"strconv"

	"github.com/kvroute/kvroute/proto"
)

// eventSalt returns the cache_salt of the request that stored the chain-root blocks of ev,
// recovered from the extra keys vLLM publishes with BlockStored, or "" when there is none
// or it cannot be told apart from other extra keys.
//
// vLLM (v1/core/kv_cache_utils.py, generate_block_hash_extra_keys) hashes each block with
// the flat tuple lora_keys + mm_keys + cache_salt_keys + prompt_embeds_keys, where
// cache_salt_keys is [cache_salt] only for the block starting at token 0, and BlockStored's
// extra_keys carries that tuple per block. So the salt can only be on the first block of an
// event without a parent. There, after the LoRA key (the adapter name, or the integer id
// in older releases) the salt is the one remaining key of a text-only request. When more
// keys remain (multimodal (identifier, offset) pairs, prompt-embeds hashes) the tuple is
// ambiguous once decoded (proto renders strings and bytes alike) and the salt is not
// used. A single remaining key that is not a salt (an older release's multimodal hash,
// a prompt-embeds hash) seeds the chain with it, so those blocks match no token-only
// request: the engine would not share them with one either.
func eventSalt(ev *proto.Event) string {
	if ev.HasParent || len(ev.ExtraKeys) == 0 {
		return ""
	}
	keys := ev.ExtraKeys[0]
	if len(keys) > 0 && ((ev.LoRAName != "" && keys[0] == ev.LoRAName) ||
		(ev.LoRAID != 0 && keys[0] == strconv.FormatInt(ev.LoRAID, 10))) {
		keys = keys[1:]
	}
	if len(keys) == 1 {
		return keys[0]
	}
	return ""
}
