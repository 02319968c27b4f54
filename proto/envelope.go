package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// EnvelopeVersion is the first byte of every encoded [Envelope]. A decoder rejects other
// versions, so a format change is a new version, never a silent reinterpretation.
const EnvelopeVersion = 1

// EnvelopeKind says what an [Envelope] carries.
type EnvelopeKind uint8

// The envelope kinds.
const (
	// EnvelopeBatch carries one normalized batch of a worker's events.
	EnvelopeBatch EnvelopeKind = iota + 1
	// EnvelopeReset tells consumers to clear everything they know about the worker: the
	// publisher lost events it could not replay, or the engine restarted.
	EnvelopeReset
	// EnvelopeHeartbeat says the publisher (a bridge) is alive and following the worker,
	// so consumers can tell an idle worker from a dead bridge.
	EnvelopeHeartbeat
)

// Envelope is a normalized batch, or a reset, attributed to one worker: what kvroute
// carries between processes (NATS). The worker identity travels inside the message, so
// subjects can be sanitised freely.
type Envelope struct {
	Kind EnvelopeKind
	// Worker is the worker's id as configured (its URL or name); never empty.
	Worker string
	// Model is the served model name; may be empty.
	Model string
	// DPRank is the data-parallel rank, part of the worker's identity; -1 when unknown.
	DPRank int
	// Reason says why a reset happened; empty for batches and heartbeats.
	Reason string
	// Batch is the batch of an EnvelopeBatch, with the publisher's sequence number.
	Batch Batch
}

// AppendEnvelope appends the compact binary encoding of e to dst and returns the
// extended slice. Layout: version byte, kind byte, worker, model, zigzag dp rank, then
// for a reset or a heartbeat the reason, for a batch seq, ts (float64 bits, 8 bytes LE) and the events:
// kind, flags (bit 0: has parent), hashes as 8-byte LE, parent, token ids as uvarints,
// block size, LoRA name and id, medium, group, extra keys, spec kind, sliding window.
// Strings are uvarint length then bytes.
func AppendEnvelope(dst []byte, e *Envelope) []byte {
	dst = append(dst, EnvelopeVersion, byte(e.Kind))
	dst = appendString(dst, e.Worker)
	dst = appendString(dst, e.Model)
	dst = binary.AppendVarint(dst, int64(e.DPRank))
	if e.Kind != EnvelopeBatch {
		return appendString(dst, e.Reason)
	}
	b := &e.Batch
	dst = binary.AppendUvarint(dst, b.Seq)
	dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(b.TS))
	dst = binary.AppendVarint(dst, int64(b.DPRank))
	dst = binary.AppendUvarint(dst, uint64(len(b.Events)))
	for i := range b.Events {
		ev := &b.Events[i]
		var flags byte
		if ev.HasParent {
			flags |= 1
		}
		dst = append(dst, byte(ev.Kind), flags)
		dst = binary.AppendUvarint(dst, uint64(len(ev.BlockHashes)))
		for _, h := range ev.BlockHashes {
			dst = binary.LittleEndian.AppendUint64(dst, uint64(h))
		}
		if ev.HasParent {
			dst = binary.LittleEndian.AppendUint64(dst, uint64(ev.ParentHash))
		}
		dst = binary.AppendUvarint(dst, uint64(len(ev.TokenIDs)))
		for _, t := range ev.TokenIDs {
			dst = binary.AppendUvarint(dst, uint64(t))
		}
		dst = binary.AppendUvarint(dst, uint64(ev.BlockSize))
		dst = appendString(dst, ev.LoRAName)
		dst = binary.AppendVarint(dst, ev.LoRAID)
		dst = appendString(dst, ev.Medium)
		dst = binary.AppendUvarint(dst, uint64(ev.GroupIdx))
		dst = binary.AppendUvarint(dst, uint64(len(ev.ExtraKeys)))
		for _, ks := range ev.ExtraKeys {
			dst = binary.AppendUvarint(dst, uint64(len(ks)))
			for _, k := range ks {
				dst = appendString(dst, k)
			}
		}
		dst = appendString(dst, ev.CacheSpecKind)
		dst = binary.AppendUvarint(dst, uint64(ev.SlidingWindow))
	}
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// DecodeEnvelope decodes data, as written by [AppendEnvelope], into e, reusing e's
// slices like [DecodeBatch] does. It never panics and rejects trailing bytes, unknown
// versions and kinds, and counts larger than the data could hold.
func DecodeEnvelope(data []byte, e *Envelope) error {
	d := envDecoder{b: data}
	if err := d.decode(e); err != nil {
		return fmt.Errorf("decode envelope: %w", err)
	}
	return nil
}

type envDecoder struct {
	b   []byte
	off int
	err error
}

func (d *envDecoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *envDecoder) byte1() byte {
	if d.err != nil || d.off >= len(d.b) {
		d.fail(ErrTruncated)
		return 0
	}
	c := d.b[d.off]
	d.off++
	return c
}

func (d *envDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail(ErrTruncated)
		return 0
	}
	d.off += n
	return v
}

func (d *envDecoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		d.fail(ErrTruncated)
		return 0
	}
	d.off += n
	return v
}

// count reads a uvarint count of items each at least minBytes long and checks it
// against the bytes left.
func (d *envDecoder) count(minBytes int) int {
	v := d.uvarint()
	if d.err == nil && v > uint64((len(d.b)-d.off)/minBytes) {
		d.fail(fmt.Errorf("count %d exceeds data", v))
		return 0
	}
	return int(v)
}

// smallInt reads a uvarint that must fit in an int32.
func (d *envDecoder) smallInt() int {
	v := d.uvarint()
	if v > math.MaxInt32 {
		d.fail(fmt.Errorf("value %d out of range", v))
		return 0
	}
	return int(v)
}

func (d *envDecoder) u64() uint64 {
	if d.err != nil || len(d.b)-d.off < 8 {
		d.fail(ErrTruncated)
		return 0
	}
	v := binary.LittleEndian.Uint64(d.b[d.off:])
	d.off += 8
	return v
}

func (d *envDecoder) bytes() []byte {
	n := d.count(1)
	if d.err != nil {
		return nil
	}
	s := d.b[d.off : d.off+n]
	d.off += n
	return s
}

// str reads a string, reusing old when equal so repeated names do not allocate.
func (d *envDecoder) str(old string) string {
	s := d.bytes()
	if old == string(s) {
		return old
	}
	return string(s)
}

func (d *envDecoder) rank() int {
	v := d.varint()
	if v < -1 || v > math.MaxInt32 {
		d.fail(fmt.Errorf("dp rank %d out of range", v))
		return -1
	}
	return int(v)
}

func (d *envDecoder) decode(e *Envelope) error {
	if v := d.byte1(); d.err == nil && v != EnvelopeVersion {
		return fmt.Errorf("unsupported envelope version %d", v)
	}
	e.Kind = EnvelopeKind(d.byte1())
	e.Worker = d.str(e.Worker)
	e.Model = d.str(e.Model)
	e.DPRank = d.rank()
	e.Reason = ""
	b := &e.Batch
	b.Seq, b.TS, b.DPRank, b.Events = 0, 0, -1, b.Events[:0]
	switch e.Kind {
	case EnvelopeReset, EnvelopeHeartbeat:
		e.Reason = d.str("")
	case EnvelopeBatch:
		d.batch(b)
	default:
		if d.err == nil {
			return fmt.Errorf("unknown envelope kind %d", e.Kind)
		}
	}
	if d.err != nil {
		return d.err
	}
	if e.Worker == "" {
		return errors.New("envelope has no worker")
	}
	if d.off != len(d.b) {
		return fmt.Errorf("%d trailing bytes", len(d.b)-d.off)
	}
	return nil
}

func (d *envDecoder) batch(b *Batch) {
	b.Seq = d.uvarint()
	b.TS = math.Float64frombits(d.u64())
	b.DPRank = d.rank()
	n := d.count(12) // an event takes at least 12 bytes
	for range n {
		if d.err != nil {
			return
		}
		ev := nextEvent(b)
		ev.Kind = EventKind(d.byte1())
		if ev.Kind < BlockStored || ev.Kind > AllBlocksCleared {
			d.fail(fmt.Errorf("unknown event kind %d", ev.Kind))
			return
		}
		flags := d.byte1()
		nh := d.count(8)
		for range nh {
			ev.BlockHashes = append(ev.BlockHashes, EngineHash(d.u64()))
		}
		if flags&1 != 0 {
			ev.HasParent, ev.ParentHash = true, EngineHash(d.u64())
		}
		nt := d.count(1)
		for range nt {
			t := d.uvarint()
			if t > maxTokenID {
				d.fail(fmt.Errorf("token id %d out of range", t))
				return
			}
			ev.TokenIDs = append(ev.TokenIDs, uint32(t))
		}
		ev.BlockSize = d.smallInt()
		ev.LoRAName = d.str(ev.LoRAName)
		ev.LoRAID = d.varint()
		ev.Medium = internMedium(d.bytes())
		ev.GroupIdx = d.smallInt()
		nk := d.count(1)
		for range nk {
			m := d.count(1)
			var ks []string
			for range m {
				ks = append(ks, d.str(""))
			}
			ev.ExtraKeys = append(ev.ExtraKeys, ks)
		}
		ev.CacheSpecKind = internSpecKind(d.bytes())
		ev.SlidingWindow = d.smallInt()
	}
}
