// Package prototest encodes normalized KV-event batches back into the engines' wire
// shapes, for tests and simulators that need real-format payloads.
//
// The encoder reproduces what vLLM's msgspec structs (vllm/distributed/kv_events.py:
// EventBatch, BlockStored, BlockRemoved, AllBlocksCleared, all omit_defaults) and
// SGLang's equivalents put on the wire, through an independent msgpack library
// (github.com/vmihailenco/msgpack/v5, compact integers like msgspec), so a test of
// [proto.DecodeBatch] does not check the decoder against itself.
//
// Invariant: for every Style, DecodeBatch(EncodeBatch(b, st)) equals Normalize(b, st).
package prototest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"

	"github.com/cespare/xxhash/v2"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/kvroute/kvroute/proto"
)

// Style selects one wire variant.
type Style struct {
	// MapEvents encodes events as maps tagged by "type" (vLLM since PR #42892); false
	// encodes positional arrays with the tag first (older vLLM, SGLang).
	MapEvents bool
	// MapBatch encodes the batch as a map {ts, events, data_parallel_rank}; false as an
	// array [ts, events, rank].
	MapBatch bool
	// Digest sends block hashes as 32-byte digests (sha256 of the hash's 8 big-endian
	// bytes), as vLLM does with VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0.
	Digest bool
	// SGLang names the rank attn_dp_rank and sends hashes as signed int64.
	SGLang bool
	// StoredFields, when positive, is how many BlockStored fields after the tag an older
	// engine knows (4: up to block_size, 5: lora_id, 6: medium, 7: lora_name, 8+: the
	// defaulted fields); fields past it are not sent. 0 means all.
	StoredFields int
	// RemovedFields is the same for BlockRemoved (1: hashes, 2: medium, 3: group_idx).
	RemovedFields int
	// NoRank leaves the batch's rank field out entirely (older engines).
	NoRank bool
	// Unknown adds a field the decoder does not know to every event and to the batch.
	Unknown bool
}

// Digest returns the 32-byte digest standing for engine hash h when Style.Digest is set.
func Digest(h proto.EngineHash) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(h))
	d := sha256.Sum256(b[:])
	return d[:]
}

// Folded returns the engine hash a decoder yields for the digest of h: xxhash64 of the
// digest bytes.
func Folded(h proto.EngineHash) proto.EngineHash {
	return proto.EngineHash(xxhash.Sum64(Digest(h)))
}

type kv struct {
	k string
	v any
}

// omap is a msgpack map that keeps its key order, as msgspec does.
type omap []kv

// EncodeMsgpack writes the map in order.
func (m omap) EncodeMsgpack(e *msgpack.Encoder) error {
	if err := e.EncodeMapLen(len(m)); err != nil {
		return err
	}
	for _, f := range m {
		if err := e.EncodeString(f.k); err != nil {
			return err
		}
		if err := e.Encode(f.v); err != nil {
			return err
		}
	}
	return nil
}

// field is one struct field: its name, value and whether it has a default (omitted
// when equal to it under omit_defaults; every default in these structs is None).
type field struct {
	name       string
	v          any
	hasDefault bool
}

// EncodeBatch encodes b in style st. b.Seq is not part of the payload.
func EncodeBatch(b *proto.Batch, st Style) []byte {
	events := make([]any, 0, len(b.Events))
	for i := range b.Events {
		events = append(events, encodeEvent(&b.Events[i], st))
	}
	var rank any
	if b.DPRank >= 0 {
		rank = int64(b.DPRank)
	}
	rankName := "data_parallel_rank"
	if st.SGLang {
		rankName = "attn_dp_rank"
	}
	var v any
	if st.MapBatch {
		m := omap{{"ts", b.TS}, {"events", events}}
		if !st.NoRank && rank != nil { // omit_defaults: None rank is left out
			m = append(m, kv{rankName, rank})
		}
		if st.Unknown {
			m = append(m, kv{"future_batch_field", []any{int64(1), "x"}})
		}
		v = m
	} else {
		a := []any{b.TS, events}
		if !st.NoRank {
			a = append(a, rank)
		}
		if st.Unknown {
			if st.NoRank {
				a = append(a, nil)
			}
			a = append(a, omap{{"future", int64(7)}})
		}
		v = a
	}
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("prototest: encode: %v", err)) // only test values reach here
	}
	return buf.Bytes()
}

func (st Style) hash(h proto.EngineHash) any {
	switch {
	case st.Digest:
		return Digest(h)
	case st.SGLang:
		return int64(h)
	}
	return uint64(h)
}

func encodeEvent(ev *proto.Event, st Style) any {
	var tag string
	var fields []field
	hashes := make([]any, len(ev.BlockHashes))
	for i, h := range ev.BlockHashes {
		hashes[i] = st.hash(h)
	}
	orNil := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	switch ev.Kind {
	case proto.BlockStored:
		tag = "BlockStored"
		var parent any
		if ev.HasParent {
			parent = st.hash(ev.ParentHash)
		}
		tokens := make([]any, len(ev.TokenIDs))
		for i, t := range ev.TokenIDs {
			tokens[i] = int64(t)
		}
		var loraID any
		if ev.LoRAID != 0 {
			loraID = ev.LoRAID
		}
		var extra any
		if len(ev.ExtraKeys) > 0 {
			ek := make([]any, len(ev.ExtraKeys))
			for i, ks := range ev.ExtraKeys {
				if ks == nil {
					continue
				}
				t := make([]any, len(ks))
				for j, k := range ks {
					t[j] = k
				}
				ek[i] = t
			}
			extra = ek
		}
		var group, window any
		if ev.GroupIdx != 0 {
			group = int64(ev.GroupIdx)
		}
		if ev.SlidingWindow != 0 {
			window = int64(ev.SlidingWindow)
		}
		fields = []field{
			{"block_hashes", hashes, false},
			{"parent_block_hash", parent, false},
			{"token_ids", tokens, false},
			{"block_size", int64(ev.BlockSize), false},
			{"lora_id", loraID, false},
			{"medium", orNil(ev.Medium), false},
			{"lora_name", orNil(ev.LoRAName), false},
			{"extra_keys", extra, true},
			{"group_idx", group, true},
			{"kv_cache_spec_kind", orNil(ev.CacheSpecKind), true},
			{"kv_cache_spec_sliding_window", window, true},
		}
		if st.StoredFields > 0 && st.StoredFields < len(fields) {
			fields = fields[:st.StoredFields]
		}
	case proto.BlockRemoved:
		tag = "BlockRemoved"
		var group any
		if ev.GroupIdx != 0 {
			group = int64(ev.GroupIdx)
		}
		fields = []field{
			{"block_hashes", hashes, false},
			{"medium", orNil(ev.Medium), false},
			{"group_idx", group, true},
		}
		if st.RemovedFields > 0 && st.RemovedFields < len(fields) {
			fields = fields[:st.RemovedFields]
		}
	case proto.AllBlocksCleared:
		tag = "AllBlocksCleared"
	default:
		tag = "SomeFutureEvent"
		fields = []field{{"whatever", int64(1), false}}
	}
	if st.MapEvents {
		m := omap{{"type", tag}}
		for _, f := range fields {
			if f.hasDefault && f.v == nil {
				continue
			}
			m = append(m, kv{f.name, f.v})
		}
		if st.Unknown {
			m = append(m, kv{"future_event_field", omap{{"a", []any{int64(1)}}}})
		}
		return m
	}
	// Array form with omit_defaults: trailing fields equal to their default are dropped.
	end := len(fields)
	for end > 0 && fields[end-1].hasDefault && fields[end-1].v == nil {
		end--
	}
	a := []any{tag}
	for _, f := range fields[:end] {
		a = append(a, f.v)
	}
	if st.Unknown && (st.StoredFields == 0 || ev.Kind != proto.BlockStored) &&
		(st.RemovedFields == 0 || ev.Kind != proto.BlockRemoved) {
		for _, f := range fields[end:] { // keep positions: pad defaulted fields with nil
			a = append(a, f.v)
		}
		a = append(a, "future positional field")
	}
	return a
}

// Normalize returns what a decoder yields for b encoded in style st: digests folded,
// fields an older engine does not send reset to their zero value, medium "GPU" when
// absent, rank -1 when absent, Seq zero.
func Normalize(b *proto.Batch, st Style) proto.Batch {
	out := proto.Batch{TS: b.TS, DPRank: b.DPRank}
	if st.NoRank {
		out.DPRank = -1
	}
	for _, ev := range b.Events {
		if ev.Kind < proto.BlockStored || ev.Kind > proto.AllBlocksCleared {
			continue
		}
		n := proto.Event{Kind: ev.Kind, Medium: "GPU"}
		fold := func(h proto.EngineHash) proto.EngineHash {
			if st.Digest {
				return Folded(h)
			}
			return h
		}
		has := func(limit, i int) bool { return limit == 0 || i < limit }
		switch ev.Kind {
		case proto.BlockStored:
			lim := st.StoredFields
			for _, h := range ev.BlockHashes {
				n.BlockHashes = append(n.BlockHashes, fold(h))
			}
			if has(lim, 1) && ev.HasParent {
				n.HasParent, n.ParentHash = true, fold(ev.ParentHash)
			}
			if has(lim, 2) {
				n.TokenIDs = append(n.TokenIDs, ev.TokenIDs...)
			}
			if has(lim, 3) {
				n.BlockSize = ev.BlockSize
			}
			if has(lim, 4) {
				n.LoRAID = ev.LoRAID
			}
			if has(lim, 5) && ev.Medium != "" {
				n.Medium = ev.Medium
			}
			if has(lim, 6) {
				n.LoRAName = ev.LoRAName
			}
			if has(lim, 7) {
				n.ExtraKeys = ev.ExtraKeys
			}
			if has(lim, 8) {
				n.GroupIdx = ev.GroupIdx
			}
			if has(lim, 9) {
				n.CacheSpecKind = ev.CacheSpecKind
			}
			if has(lim, 10) {
				n.SlidingWindow = ev.SlidingWindow
			}
		case proto.BlockRemoved:
			lim := st.RemovedFields
			for _, h := range ev.BlockHashes {
				n.BlockHashes = append(n.BlockHashes, fold(h))
			}
			if has(lim, 1) && ev.Medium != "" {
				n.Medium = ev.Medium
			}
			if has(lim, 2) {
				n.GroupIdx = ev.GroupIdx
			}
		}
		out.Events = append(out.Events, n)
	}
	return out
}

// Sample returns a batch exercising every field: a stored chain continuing a parent with
// LoRA and extra keys (cache salt on the first block), a CPU store without tokens
// (offload), a removal, a hash above MaxInt64, and a clear.
func Sample(seed uint64) proto.Batch {
	h := func(i uint64) proto.EngineHash { return proto.EngineHash(seed*1_000_003 + i) }
	tokens := make([]uint32, 32)
	for i := range tokens {
		tokens[i] = uint32(seed*7+uint64(i)) % 151_000
	}
	return proto.Batch{
		TS:     1_750_000_000.25 + float64(seed),
		DPRank: int(seed % 4),
		Events: []proto.Event{
			{
				Kind: proto.BlockStored, BlockHashes: []proto.EngineHash{h(1), 0xFFFF_FFFF_FFFF_FF01},
				HasParent: true, ParentHash: h(0), TokenIDs: tokens, BlockSize: 16,
				LoRAName: "sql-adapter", LoRAID: 3, Medium: "GPU",
				ExtraKeys: [][]string{{"sql-adapter", "salt-123"}, {"sql-adapter"}},
			},
			{Kind: proto.BlockStored, BlockHashes: []proto.EngineHash{h(2)}, BlockSize: 16, Medium: "CPU"},
			{
				Kind: proto.BlockStored, BlockHashes: []proto.EngineHash{h(5)}, TokenIDs: tokens[:16],
				BlockSize: 16, Medium: "GPU", GroupIdx: 1, CacheSpecKind: "sliding_window", SlidingWindow: 4096,
			},
			{Kind: proto.BlockRemoved, BlockHashes: []proto.EngineHash{h(1), h(2)}, Medium: "GPU"},
			{Kind: proto.AllBlocksCleared, Medium: "GPU"},
		},
	}
}

// Diff returns "" when got and want hold the same batch, treating nil and empty slices
// alike and a NaN timestamp as equal to another NaN (an engine's ts is opaque bits; the
// fuzzer sends NaN), and otherwise a description of the first difference.
func Diff(got, want *proto.Batch) string {
	sameTS := got.TS == want.TS || math.IsNaN(got.TS) && math.IsNaN(want.TS)
	if got.Seq != want.Seq || !sameTS || got.DPRank != want.DPRank {
		return fmt.Sprintf("header: got seq=%d ts=%v rank=%d, want seq=%d ts=%v rank=%d",
			got.Seq, got.TS, got.DPRank, want.Seq, want.TS, want.DPRank)
	}
	if len(got.Events) != len(want.Events) {
		return fmt.Sprintf("got %d events, want %d", len(got.Events), len(want.Events))
	}
	for i := range got.Events {
		if d := diffEvent(&got.Events[i], &want.Events[i]); d != "" {
			return fmt.Sprintf("event %d: %s", i, d)
		}
	}
	return ""
}

func diffEvent(g, w *proto.Event) string {
	switch {
	case g.Kind != w.Kind:
		return fmt.Sprintf("kind %v, want %v", g.Kind, w.Kind)
	case fmt.Sprint(g.BlockHashes) != fmt.Sprint(w.BlockHashes):
		return fmt.Sprintf("hashes %v, want %v", g.BlockHashes, w.BlockHashes)
	case g.HasParent != w.HasParent || g.ParentHash != w.ParentHash:
		return fmt.Sprintf("parent %v/%d, want %v/%d", g.HasParent, g.ParentHash, w.HasParent, w.ParentHash)
	case fmt.Sprint(g.TokenIDs) != fmt.Sprint(w.TokenIDs):
		return fmt.Sprintf("tokens %v, want %v", g.TokenIDs, w.TokenIDs)
	case g.BlockSize != w.BlockSize || g.LoRAName != w.LoRAName || g.LoRAID != w.LoRAID ||
		g.Medium != w.Medium || g.GroupIdx != w.GroupIdx || g.CacheSpecKind != w.CacheSpecKind ||
		g.SlidingWindow != w.SlidingWindow:
		return fmt.Sprintf("fields %+v, want %+v", *g, *w)
	case fmt.Sprintf("%q", g.ExtraKeys) != fmt.Sprintf("%q", w.ExtraKeys):
		return fmt.Sprintf("extra keys %q, want %q", g.ExtraKeys, w.ExtraKeys)
	}
	return ""
}
