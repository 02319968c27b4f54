package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// maxTokenID bounds token ids accepted from the wire; they are stored as uint32.
const maxTokenID = math.MaxUint32

// DecodeBatch decodes one KV-event batch payload (msgpack) as published by vLLM or SGLang
// into b, overwriting it. It accepts every wire variant seen in the field:
//
//   - the batch as an array [ts, events, dp_rank] (dp_rank optional or nil) or as a map
//     with keys ts, events and data_parallel_rank (vLLM) or attn_dp_rank (SGLang);
//   - each event as a positional array with the tag first, with any prefix of the
//     trailing fields, or as a map tagged by "type" in any key order;
//   - block hashes as integers (unsigned above MaxInt64, or signed as SGLang sends them;
//     both keep their 64-bit pattern) or as byte/string digests, folded to 64 bits with
//     xxhash64 (vLLM with VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0 sends 32-byte digests).
//
// Unknown map keys, extra trailing array fields and events of unknown type are skipped;
// a missing medium becomes "GPU"; a missing rank becomes -1. Seq is left at zero: it
// comes from the transport frame, not the payload.
//
// b's slices (Events and each event's BlockHashes, TokenIDs, ExtraKeys) are reused when
// they have capacity, so a caller that decodes into the same Batch in a loop does not
// allocate in the steady state; such a caller must not keep references into b across
// calls, and b's slices must not share backing arrays with each other or with anything
// the caller still reads. Strings in b never alias payload. On error b holds a partial batch that must be
// discarded. DecodeBatch never panics and its work is linear in len(payload).
func DecodeBatch(payload []byte, b *Batch) error {
	r := mpReader{b: payload}
	b.Seq = 0
	b.TS = 0
	b.DPRank = -1
	b.Events = b.Events[:0]
	var err error
	switch r.peek() {
	case mpArray:
		err = decodeBatchArray(&r, b)
	case mpMap:
		err = decodeBatchMap(&r, b)
	default:
		err = errors.New("batch is neither an array nor a map")
	}
	if err != nil {
		return fmt.Errorf("decode kv event batch: %w", err)
	}
	return nil
}

func decodeBatchArray(r *mpReader, b *Batch) error {
	n, err := r.arrayLen()
	if err != nil {
		return err
	}
	if n < 2 {
		return fmt.Errorf("batch array has %d fields, want at least 2", n)
	}
	if b.TS, err = r.float(); err != nil {
		return fmt.Errorf("ts: %w", err)
	}
	if err := decodeEvents(r, b); err != nil {
		return err
	}
	if n >= 3 {
		if err := decodeRank(r, b); err != nil {
			return err
		}
	}
	for i := 3; i < n; i++ {
		if err := r.skip(); err != nil {
			return err
		}
	}
	return nil
}

func decodeBatchMap(r *mpReader, b *Batch) error {
	n, err := r.mapLen()
	if err != nil {
		return err
	}
	sawEvents := false
	for range n {
		key, err := r.strOrBin()
		if err != nil {
			return fmt.Errorf("batch key: %w", err)
		}
		switch string(key) {
		case "ts":
			if b.TS, err = r.float(); err != nil {
				return fmt.Errorf("ts: %w", err)
			}
		case "events":
			if sawEvents {
				return errors.New("duplicate events key")
			}
			sawEvents = true
			if err := decodeEvents(r, b); err != nil {
				return err
			}
		case "data_parallel_rank", "attn_dp_rank":
			if err := decodeRank(r, b); err != nil {
				return err
			}
		default:
			if err := r.skip(); err != nil {
				return err
			}
		}
	}
	if !sawEvents {
		return errors.New("batch map has no events")
	}
	return nil
}

func decodeRank(r *mpReader, b *Batch) error {
	if r.nilNext() {
		b.DPRank = -1
		return nil
	}
	v, err := r.smallInt()
	if err != nil {
		return fmt.Errorf("dp rank: %w", err)
	}
	b.DPRank = v
	return nil
}

func decodeEvents(r *mpReader, b *Batch) error {
	n, err := r.arrayLen()
	if err != nil {
		return fmt.Errorf("events: %w", err)
	}
	for i := range n {
		ev := nextEvent(b)
		var ok bool
		switch r.peek() {
		case mpArray:
			ok, err = decodeEventArray(r, ev)
		case mpMap:
			ok, err = decodeEventMap(r, ev)
		default:
			err = errors.New("event is neither an array nor a map")
		}
		if err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
		if !ok {
			b.Events = b.Events[:len(b.Events)-1] // unknown type: skipped
		}
	}
	return nil
}

// nextEvent appends one event slot to b.Events, reusing a previous slot's slices, and
// returns it cleared.
func nextEvent(b *Batch) *Event {
	if len(b.Events) < cap(b.Events) {
		b.Events = b.Events[:len(b.Events)+1]
	} else {
		b.Events = append(b.Events, Event{})
	}
	ev := &b.Events[len(b.Events)-1]
	*ev = Event{
		BlockHashes: ev.BlockHashes[:0],
		TokenIDs:    ev.TokenIDs[:0],
		ExtraKeys:   ev.ExtraKeys[:0],
		LoRAName:    ev.LoRAName, // kept only to compare against, see setLoRAName
		Medium:      "GPU",
	}
	return ev
}

func kindOf(tag []byte) EventKind {
	switch string(tag) {
	case "BlockStored":
		return BlockStored
	case "BlockRemoved":
		return BlockRemoved
	case "AllBlocksCleared":
		return AllBlocksCleared
	}
	return 0
}

// Positional field order after the tag, per kind (vLLM vllm/distributed/kv_events.py;
// SGLang uses the same order for the fields it has).
const (
	fStoredHashes = iota
	fStoredParent
	fStoredTokens
	fStoredBlockSize
	fStoredLoRAID
	fStoredMedium
	fStoredLoRAName
	fStoredExtraKeys
	fStoredGroupIdx
	fStoredSpecKind
	fStoredSlidingWindow
)

const (
	fRemovedHashes = iota
	fRemovedMedium
	fRemovedGroupIdx
)

func decodeEventArray(r *mpReader, ev *Event) (bool, error) {
	n, err := r.arrayLen()
	if err != nil {
		return false, err
	}
	if n == 0 {
		return false, errors.New("empty event array")
	}
	tag, err := r.strOrBin()
	if err != nil {
		return false, fmt.Errorf("tag: %w", err)
	}
	kind := kindOf(tag)
	loraSeen := false
	for i := 0; i < n-1; i++ {
		field := ""
		switch kind {
		case BlockStored:
			field = storedFields[min(i, len(storedFields)-1)]
		case BlockRemoved:
			field = removedFields[min(i, len(removedFields)-1)]
		}
		if field == "lora_name" {
			loraSeen = true
		}
		if err := decodeField(r, ev, field); err != nil {
			return false, err
		}
	}
	if !loraSeen {
		ev.LoRAName = ""
	}
	ev.Kind = kind
	return kind != 0, nil
}

// storedFields and removedFields name the positional fields; the last entry ("") stands
// for every field past the known ones, which is skipped.
var (
	storedFields = [...]string{
		fStoredHashes: "block_hashes", fStoredParent: "parent_block_hash",
		fStoredTokens: "token_ids", fStoredBlockSize: "block_size", fStoredLoRAID: "lora_id",
		fStoredMedium: "medium", fStoredLoRAName: "lora_name", fStoredExtraKeys: "extra_keys",
		fStoredGroupIdx: "group_idx", fStoredSpecKind: "kv_cache_spec_kind",
		fStoredSlidingWindow: "kv_cache_spec_sliding_window", fStoredSlidingWindow + 1: "",
	}
	removedFields = [...]string{
		fRemovedHashes: "block_hashes", fRemovedMedium: "medium",
		fRemovedGroupIdx: "group_idx", fRemovedGroupIdx + 1: "",
	}
)

func decodeEventMap(r *mpReader, ev *Event) (bool, error) {
	n, err := r.mapLen()
	if err != nil {
		return false, err
	}
	var kind EventKind
	sawType, loraSeen := false, false
	for range n {
		key, err := r.strOrBin()
		if err != nil {
			return false, fmt.Errorf("event key: %w", err)
		}
		if string(key) == "type" {
			tag, err := r.strOrBin()
			if err != nil {
				return false, fmt.Errorf("type: %w", err)
			}
			kind, sawType = kindOf(tag), true
			continue
		}
		// Field names are shared by every kind, so the map form decodes by name
		// whatever order the tag comes in.
		field := mapField(key)
		if field == "lora_name" {
			loraSeen = true
		}
		if err := decodeField(r, ev, field); err != nil {
			return false, err
		}
	}
	if !sawType {
		return false, errors.New("event map has no type")
	}
	if !loraSeen {
		ev.LoRAName = ""
	}
	if kind != BlockStored {
		ev.TokenIDs = ev.TokenIDs[:0]
		ev.HasParent = false
		ev.ParentHash = 0
	}
	ev.Kind = kind
	return kind != 0, nil
}

// decodeField decodes one named field into ev; "" skips the value.
func decodeField(r *mpReader, ev *Event, field string) error {
	var err error
	switch field {
	case "block_hashes":
		err = decodeHashes(r, ev)
	case "parent_block_hash":
		if r.nilNext() {
			ev.HasParent, ev.ParentHash = false, 0
			return nil
		}
		ev.ParentHash, err = decodeHash(r)
		ev.HasParent = err == nil
	case "token_ids":
		err = decodeTokens(r, ev)
	case "block_size":
		if r.nilNext() {
			return nil
		}
		ev.BlockSize, err = r.smallInt()
	case "lora_id":
		if r.nilNext() {
			ev.LoRAID = 0
			return nil
		}
		var v uint64
		var neg bool
		v, neg, err = r.int()
		if err == nil && (neg || v > math.MaxInt64) {
			err = errors.New("lora_id out of range")
		}
		ev.LoRAID = int64(v)
	case "medium":
		if r.nilNext() {
			ev.Medium = "GPU"
			return nil
		}
		var s []byte
		s, err = r.strOrBin()
		ev.Medium = internMedium(s)
	case "lora_name":
		if r.nilNext() {
			ev.LoRAName = ""
			return nil
		}
		var s []byte
		s, err = r.strOrBin()
		if ev.LoRAName != string(s) { // compare without allocating; reuse the last name
			ev.LoRAName = string(s)
		}
	case "extra_keys":
		err = decodeExtraKeys(r, ev)
	case "group_idx":
		if r.nilNext() {
			ev.GroupIdx = 0
			return nil
		}
		ev.GroupIdx, err = r.smallInt()
	case "kv_cache_spec_kind":
		if r.nilNext() {
			ev.CacheSpecKind = ""
			return nil
		}
		var s []byte
		s, err = r.strOrBin()
		ev.CacheSpecKind = internSpecKind(s)
	case "kv_cache_spec_sliding_window":
		if r.nilNext() {
			ev.SlidingWindow = 0
			return nil
		}
		ev.SlidingWindow, err = r.smallInt()
	default:
		err = r.skip()
	}
	if err != nil {
		if field == "" {
			return err
		}
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}

// mapField returns the known field name equal to key, or "" for an unknown key, without
// allocating.
func mapField(key []byte) string {
	switch string(key) {
	case "block_hashes":
		return "block_hashes"
	case "parent_block_hash":
		return "parent_block_hash"
	case "token_ids":
		return "token_ids"
	case "block_size":
		return "block_size"
	case "lora_id":
		return "lora_id"
	case "medium":
		return "medium"
	case "lora_name":
		return "lora_name"
	case "extra_keys":
		return "extra_keys"
	case "group_idx":
		return "group_idx"
	case "kv_cache_spec_kind":
		return "kv_cache_spec_kind"
	case "kv_cache_spec_sliding_window":
		return "kv_cache_spec_sliding_window"
	}
	return ""
}

func internMedium(s []byte) string {
	switch string(s) {
	case "GPU":
		return "GPU"
	case "CPU":
		return "CPU"
	case "":
		return "GPU"
	}
	return string(s)
}

func internSpecKind(s []byte) string {
	switch string(s) {
	case "full_attention":
		return "full_attention"
	case "sliding_window":
		return "sliding_window"
	case "mamba":
		return "mamba"
	}
	return string(s)
}

// decodeHash reads one engine block hash: an integer keeps its 64-bit pattern, a byte or
// string digest is folded to 64 bits with xxhash64.
func decodeHash(r *mpReader) (EngineHash, error) {
	switch r.peek() {
	case mpInt:
		v, _, err := r.int()
		return EngineHash(v), err
	case mpBin, mpStr:
		s, err := r.strOrBin()
		return EngineHash(xxhash.Sum64(s)), err
	}
	return 0, errors.New("block hash is neither an integer nor bytes")
}

func decodeHashes(r *mpReader, ev *Event) error {
	if r.nilNext() {
		ev.BlockHashes = ev.BlockHashes[:0]
		return nil
	}
	n, err := r.arrayLen()
	if err != nil {
		return err
	}
	hs := ev.BlockHashes[:0]
	if cap(hs) < n {
		hs = make([]EngineHash, 0, n)
	}
	b := r.b
	for range n {
		// Fast path: uint64 hashes (vLLM's default) are 0xcf + 8 bytes.
		if off := r.off; off+9 <= len(b) && b[off] == 0xcf {
			hs = append(hs, EngineHash(binary.BigEndian.Uint64(b[off+1:])))
			r.off = off + 9
			continue
		}
		h, err := decodeHash(r)
		if err != nil {
			return err
		}
		hs = append(hs, h)
	}
	ev.BlockHashes = hs
	return nil
}

func decodeTokens(r *mpReader, ev *Event) error {
	if r.nilNext() {
		ev.TokenIDs = ev.TokenIDs[:0]
		return nil
	}
	n, err := r.arrayLen()
	if err != nil {
		return err
	}
	ts := ev.TokenIDs[:0]
	if cap(ts) < n {
		ts = make([]uint32, 0, n)
	}
	// Fast path for the encodings msgspec uses for token ids (fixint, uint8/16/32),
	// reading the payload directly; anything else goes through r.int.
	b := r.b
	for range n {
		off := r.off
		if off < len(b) {
			switch c := b[off]; {
			case c <= 0x7f:
				ts = append(ts, uint32(c))
				r.off = off + 1
				continue
			case c == 0xcd && off+3 <= len(b):
				ts = append(ts, uint32(binary.BigEndian.Uint16(b[off+1:])))
				r.off = off + 3
				continue
			case c == 0xce && off+5 <= len(b):
				ts = append(ts, binary.BigEndian.Uint32(b[off+1:]))
				r.off = off + 5
				continue
			case c == 0xcc && off+2 <= len(b):
				ts = append(ts, uint32(b[off+1]))
				r.off = off + 2
				continue
			}
		}
		v, neg, err := r.int()
		if err != nil {
			return err
		}
		if neg || v > maxTokenID {
			return fmt.Errorf("token id %d out of range", int64(v))
		}
		ts = append(ts, uint32(v))
	}
	ev.TokenIDs = ts
	return nil
}

// decodeExtraKeys reads vLLM's extra_keys: one entry per block, each nil or a tuple of
// the extra hash inputs of that block (LoRA name, multimodal identifiers, cache_salt on
// the first block of a salted request, prompt-embeds hashes). Each element becomes a
// string: strings and bytes as they are, integers in decimal, nested tuples (older
// multimodal (hash, offset) pairs) flattened. A list of only nils leaves ExtraKeys empty.
func decodeExtraKeys(r *mpReader, ev *Event) error {
	ev.ExtraKeys = ev.ExtraKeys[:0]
	if r.nilNext() {
		return nil
	}
	n, err := r.arrayLen()
	if err != nil {
		return err
	}
	any := false
	keys := ev.ExtraKeys[:0]
	for range n {
		var ks []string
		if !r.nilNext() {
			if ks, err = extraKeyTuple(r, nil, 0); err != nil {
				return err
			}
			any = any || len(ks) > 0
		}
		keys = append(keys, ks)
	}
	if any {
		ev.ExtraKeys = keys
	} else {
		ev.ExtraKeys = keys[:0]
	}
	return nil
}

func extraKeyTuple(r *mpReader, dst []string, depth int) ([]string, error) {
	if depth > 4 {
		return dst, errors.New("extra key nesting too deep")
	}
	switch r.peek() {
	case mpArray:
		n, err := r.arrayLen()
		if err != nil {
			return dst, err
		}
		for range n {
			if dst, err = extraKeyTuple(r, dst, depth+1); err != nil {
				return dst, err
			}
		}
		return dst, nil
	case mpStr, mpBin:
		s, err := r.strOrBin()
		return append(dst, string(s)), err
	case mpInt:
		v, neg, err := r.int()
		if neg {
			return append(dst, strconv.FormatInt(int64(v), 10)), err
		}
		return append(dst, strconv.FormatUint(v, 10)), err
	case mpNil:
		r.off++
		return dst, nil
	}
	return dst, r.skip()
}
