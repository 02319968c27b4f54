package indexer

import (
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/kvroute/kvroute/proto"
)

// vllmStored encodes a vLLM map-form BlockStored batch (as vLLM >= PR #42892 publishes it,
// with extra_keys one entry per block) for blocks [0, n) of tokens, decodes it with
// proto.DecodeBatch and returns the batch.
func vllmStored(t *testing.T, tokens []uint32, n int, lora any, extra []any) *proto.Batch {
	t.Helper()
	hashes := make([]uint64, n)
	for i := range hashes {
		hashes[i] = uint64(1000 + i)
	}
	ev := map[string]any{
		"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": nil,
		"token_ids": tokens[:n*bs], "block_size": bs, "lora_id": nil, "medium": "GPU", "lora_name": lora,
	}
	if extra != nil {
		ev["extra_keys"] = extra
	}
	payload, err := msgpack.Marshal([]any{1.5, []any{ev}, nil})
	if err != nil {
		t.Fatal(err)
	}
	var b proto.Batch
	if err := proto.DecodeBatch(payload, &b); err != nil {
		t.Fatal(err)
	}
	return &b
}

// A salted request's blocks are indexed under the salted seed, which is how the router
// hashes the request (proto.Seed(model, lora, cache_salt)): they match the salted request
// and no unsalted one, as in vLLM, whose first block hash includes the salt.
func TestCacheSaltFromExtraKeys(t *testing.T) {
	toks := doc(1, 3)
	salted := func(lora, salt string) []proto.BlockHash {
		return proto.HashBlocks(nil, proto.Seed("m", lora, salt), toks, bs)
	}
	cases := []struct {
		name       string
		lora       any
		extra      []any
		matchLoRA  string
		matchSalt  string // the seed's salt the stored blocks must match
		ambiguous  bool   // the salt cannot be told apart: indexed unsalted
		unsaltedOK bool
	}{
		{name: "no extra keys", unsaltedOK: true},
		{name: "salt", extra: []any{[]any{"tenant-a"}, nil, nil}, matchSalt: "tenant-a"},
		{name: "lora and salt", lora: "ad1", extra: []any{[]any{"ad1", "tenant-b"}, []any{"ad1"}, []any{"ad1"}}, matchLoRA: "ad1", matchSalt: "tenant-b"},
		{name: "lora only", lora: "ad1", extra: []any{[]any{"ad1"}, []any{"ad1"}, []any{"ad1"}}, matchLoRA: "ad1", unsaltedOK: true},
		// A multimodal (identifier, offset) pair plus the salt: three keys, ambiguous
		// with a pair plus a prompt-embeds hash once decoded.
		{name: "multimodal and salt", extra: []any{[]any{[]any{"img0", 0}, "tenant-c"}, nil, nil}, ambiguous: true, unsaltedOK: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ix, _ := newIndex(t, Options{})
			ix.Apply(proto.WorkerKey{ID: "w"}, "m", vllmStored(t, toks, 3, c.lora, c.extra))
			if got := matchMap(ix, salted(c.matchLoRA, c.matchSalt))["w"]; got != [2]int{3, 3} {
				t.Errorf("request with lora %q salt %q: got %v, want all 3 blocks", c.matchLoRA, c.matchSalt, got)
			}
			got := matchMap(ix, salted(c.matchLoRA, ""))["w"]
			if c.unsaltedOK && got != [2]int{3, 3} {
				t.Errorf("unsalted request: got %v, want all 3 blocks", got)
			}
			if !c.unsaltedOK && got != [2]int{} {
				t.Errorf("unsalted request matched salted blocks: %v", got)
			}
			if c.ambiguous {
				if got := matchMap(ix, salted(c.matchLoRA, "tenant-c"))["w"]; got != [2]int{} {
					t.Errorf("ambiguous extra keys used as a salt: %v", got)
				}
			}
		})
	}
}

// A continuation (parent set) inherits the salt through its parent's own hash; its own
// extra keys carry none.
func TestCacheSaltContinuation(t *testing.T) {
	ix, _ := newIndex(t, Options{})
	toks := doc(2, 4)
	ix.Apply(proto.WorkerKey{ID: "w"}, "m", vllmStored(t, toks, 2, nil, []any{[]any{"s"}, nil}))
	ev := proto.Event{Kind: proto.BlockStored, BlockHashes: []proto.EngineHash{1002, 1003},
		HasParent: true, ParentHash: 1001, TokenIDs: toks[2*bs:], BlockSize: bs, Medium: "GPU"}
	ix.Apply(proto.WorkerKey{ID: "w"}, "m", batch(ev))
	if got := matchMap(ix, proto.HashBlocks(nil, proto.Seed("m", "", "s"), toks, bs))["w"]; got != [2]int{4, 4} {
		t.Fatalf("salted chain: got %v, want 4 blocks", got)
	}
}
