package kvevents

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/kvroute/kvroute/proto"
	"github.com/vmihailenco/msgpack/v5"
)

// Event is one KV-cache event as the simulated engine produced it.
type Event struct {
	Kind proto.EventKind
	// Hashes are the engine's block hashes, parent first.
	Hashes []uint64
	// Parent is the hash of the block before Hashes[0]; meaningful when HasParent.
	Parent    uint64
	HasParent bool
	// Tokens are the token ids of the stored blocks (BlockStored only).
	Tokens []uint32
	// BlockSize is the tokens per block (BlockStored only).
	BlockSize int
	// LoRAName and LoRAID name the LoRA adapter the blocks were computed with ("" and 0
	// for the base model; BlockStored only). vLLM sends lora_name (None for the base
	// model) and lora_id (the adapter's integer id, or None).
	LoRAName string
	LoRAID   int64
	// Medium is the storage tier the event is about, sent as the event's medium: "" is
	// "GPU" (the prefix cache), "CPU" the CPU offload tier (vLLM's OffloadingConnector
	// publishes its stores and evictions with medium "CPU"). SGLang's events carry none.
	Medium string
}

// medium returns the medium sent for ev.
func (ev *Event) medium() string {
	if ev.Medium == "" {
		return "GPU"
	}
	return ev.Medium
}

// Engine names an engine's flavour of the event format.
type Engine string

// The engines whose event formats the simulator speaks.
const (
	EngineVLLM   Engine = "vllm"
	EngineSGLang Engine = "sglang"
)

// Layout says how events and batches are encoded.
type Layout string

// The encodings vLLM has used over its releases.
const (
	// LayoutArray encodes events and the batch as positional arrays (legacy default).
	LayoutArray Layout = "array"
	// LayoutMap encodes events as maps tagged by "type" inside an array batch.
	LayoutMap Layout = "map"
	// LayoutMapBatch encodes the batch as a map too.
	LayoutMapBatch Layout = "map-batch"
)

// Format selects a payload encoding. The zero value is not valid; see [Format.Validate].
type Format struct {
	Engine Engine
	Layout Layout
	// DigestHashes sends each hash as a 32-byte digest instead of an integer (vLLM only).
	DigestHashes bool
}

// Validate reports whether the format is one the encoder supports.
func (f Format) Validate() error {
	switch f.Engine {
	case EngineVLLM, EngineSGLang:
	default:
		return fmt.Errorf("unknown engine %q (want vllm or sglang)", f.Engine)
	}
	switch f.Layout {
	case LayoutArray, LayoutMap, LayoutMapBatch:
	default:
		return fmt.Errorf("unknown event layout %q (want array, map or map-batch)", f.Layout)
	}
	if f.DigestHashes && f.Engine == EngineSGLang {
		return fmt.Errorf("digest hashes are a vLLM option, not available for sglang")
	}
	return nil
}

// Encoder turns batches into msgpack payloads. It reuses its buffer: the slice returned
// by [Encoder.Encode] is valid until the next call. Not safe for concurrent use.
type Encoder struct {
	f       Format
	buf     bytes.Buffer
	enc     *msgpack.Encoder
	scratch []Event
}

// NewEncoder returns an encoder for f, which must be valid.
func NewEncoder(f Format) *Encoder {
	e := &Encoder{f: f}
	e.enc = msgpack.NewEncoder(&e.buf)
	return e
}

// Encode returns the payload of one batch: ts in seconds since the epoch, the events,
// and the data-parallel rank (omitted from the wire when negative, as vLLM omits None).
func (e *Encoder) Encode(ts float64, dpRank int, events []Event) []byte {
	e.buf.Reset()
	m := e.enc
	mapBatch := e.f.Layout == LayoutMapBatch
	rankKey := "data_parallel_rank"
	if e.f.Engine == EngineSGLang {
		rankKey = "attn_dp_rank"
	}
	n := 2
	if dpRank >= 0 {
		n = 3
	}
	if mapBatch {
		_ = m.EncodeMapLen(n)
		_ = m.EncodeString("ts")
	} else {
		_ = m.EncodeArrayLen(n)
	}
	_ = m.EncodeFloat64(ts)
	if mapBatch {
		_ = m.EncodeString("events")
	}
	if e.f.Engine == EngineSGLang {
		events = e.perPage(events)
	}
	_ = m.EncodeArrayLen(len(events))
	for i := range events {
		e.event(&events[i])
	}
	if dpRank >= 0 {
		if mapBatch {
			_ = m.EncodeString(rankKey)
		}
		_ = m.EncodeInt(int64(dpRank))
	}
	return e.buf.Bytes()
}

// perPage splits multi-block BlockStored events into one event per block, chained by
// parent hash, as SGLang's radix cache reports pages.
func (e *Encoder) perPage(events []Event) []Event {
	e.scratch = e.scratch[:0]
	for _, ev := range events {
		if ev.Kind != proto.BlockStored || len(ev.Hashes) <= 1 {
			e.scratch = append(e.scratch, ev)
			continue
		}
		for i := range ev.Hashes {
			page := Event{Kind: proto.BlockStored, Hashes: ev.Hashes[i : i+1], BlockSize: ev.BlockSize, LoRAName: ev.LoRAName, LoRAID: ev.LoRAID}
			if i == 0 {
				page.Parent, page.HasParent = ev.Parent, ev.HasParent
			} else {
				page.Parent, page.HasParent = ev.Hashes[i-1], true
			}
			if hi := (i + 1) * ev.BlockSize; hi <= len(ev.Tokens) {
				page.Tokens = ev.Tokens[i*ev.BlockSize : hi]
			}
			e.scratch = append(e.scratch, page)
		}
	}
	return e.scratch
}

// field writes a field name in map layouts and nothing in array layouts.
func (e *Encoder) field(name string) {
	if e.f.Layout != LayoutArray {
		_ = e.enc.EncodeString(name)
	}
}

func (e *Encoder) event(ev *Event) {
	m := e.enc
	sg := e.f.Engine == EngineSGLang
	var n int
	switch ev.Kind {
	case proto.BlockStored:
		n = 7 // block_hashes, parent, token_ids, block_size, lora_id, medium, lora_name
		if sg {
			n = 5 // up to lora_id
		}
	case proto.BlockRemoved:
		n = 2 // block_hashes, medium
		if sg {
			n = 1
		}
	default:
		n = 0
	}
	if e.f.Layout == LayoutArray {
		_ = m.EncodeArrayLen(n + 1)
	} else {
		_ = m.EncodeMapLen(n + 1)
		_ = m.EncodeString("type")
	}
	_ = m.EncodeString(ev.Kind.String())
	switch ev.Kind {
	case proto.BlockStored:
		e.field("block_hashes")
		e.hashes(ev.Hashes)
		e.field("parent_block_hash")
		if ev.HasParent {
			e.hash(ev.Parent)
		} else {
			_ = m.EncodeNil()
		}
		e.field("token_ids")
		_ = m.EncodeArrayLen(len(ev.Tokens))
		for _, t := range ev.Tokens {
			_ = m.EncodeUint(uint64(t))
		}
		e.field("block_size")
		_ = m.EncodeInt(int64(ev.BlockSize))
		e.field("lora_id")
		if ev.LoRAID != 0 {
			_ = m.EncodeInt(ev.LoRAID)
		} else {
			_ = m.EncodeNil()
		}
		if !sg {
			e.field("medium")
			_ = m.EncodeString(ev.medium())
			e.field("lora_name")
			if ev.LoRAName != "" {
				_ = m.EncodeString(ev.LoRAName)
			} else {
				_ = m.EncodeNil()
			}
		}
	case proto.BlockRemoved:
		e.field("block_hashes")
		e.hashes(ev.Hashes)
		if !sg {
			e.field("medium")
			_ = m.EncodeString(ev.medium())
		}
	}
}

func (e *Encoder) hashes(hs []uint64) {
	_ = e.enc.EncodeArrayLen(len(hs))
	for _, h := range hs {
		e.hash(h)
	}
}

func (e *Encoder) hash(h uint64) {
	switch {
	case e.f.Engine == EngineSGLang:
		_ = e.enc.EncodeInt(int64(h))
	case e.f.DigestHashes:
		d := Digest(h)
		_ = e.enc.EncodeBytes(d[:])
	default:
		_ = e.enc.EncodeUint(h)
	}
}

// Digest returns the 32-byte form of hash h sent when [Format.DigestHashes] is set:
// SHA-256 of h as 8 big-endian bytes. Tests use it to map digests back to hashes.
func Digest(h uint64) [32]byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], h)
	return sha256.Sum256(b[:])
}
