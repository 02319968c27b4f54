package replica

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/kvroute/kvroute/proto"
)

// Wire format version 1 (see the package doc for the protocol). Integers are varints
// (uv unsigned, sv signed zigzag) unless said otherwise; strings are uv(len) then bytes.
//
// State message, on <prefix>.<cluster>.state:
//
//	"KR" byte(version) str(sender) u64le(incarnation) uv(seq) sv(sent unix ns) byte(flags)
//	uv(n) n x { str(worker) sv(in_flight) sv(prefill_tokens) sv(active_blocks) }
//	uv(m) m x { str(worker) uv(k) k x u64le(block hash) }
//
//	[flags bit 1] uv(r) r x { str(response id) str(worker) str(model) }
//
// flags bit 0 (flagFull): the message lists every worker the sender routes to (a
// heartbeat), so a worker it does not list carries none of its load. Bit 1
// (flagResponses): the message ends with stored responses (the Responses API's ids and
// the worker holding each, issue #22); it is set only on messages that carry some, so
// a replica built before it decodes every other message.
//
// Dump chunk, the reply to a request on <prefix>.<cluster>.dump:
//
//	"KD" byte(version) uv(chunk index) byte(last: 0 or 1) payload...
const (
	stateMagic    = "KR"
	dumpMagic     = "KD"
	wireVersion   = 1
	flagFull      = 1
	flagResponses = 2
	maxIDLen      = 256     // bytes of a sender or worker id
	maxRecords    = 1 << 16 // load or prediction records in one message
	maxPredicted  = 1 << 16 // block hashes in one prediction
)

// ErrBadMessage is wrapped by every error returned for a malformed message.
var ErrBadMessage = errors.New("malformed replica message")

// Load is one worker's load as one router accounts it: its own requests in flight
// there, their prompt tokens not yet prefilled, and the KV blocks they hold (the
// counters of upstream.Load).
type Load struct {
	InFlight      int64
	PrefillTokens int64
	Blocks        int64
}

// WorkerLoad is a worker's [Load] in a state message.
type WorkerLoad struct {
	Worker string
	Load   Load
}

// Prediction is a routing decision's block hashes: the sender routed a request with
// these blocks to Worker, which is expected to hold them (indexer.Index.Predict).
type Prediction struct {
	Worker string
	Hashes []proto.BlockHash
}

// StoredResponse is a Responses API response the sender saw stored on Worker: the
// other replicas route requests naming ID there too.
type StoredResponse struct {
	ID, Worker, Model string
}

// Message is one decoded state message.
type Message struct {
	// Sender is the publishing replica's id.
	Sender string
	// Incarnation is random per process start: a replica restarted with the same id
	// is a new incarnation, whose counters start over.
	Incarnation uint64
	// Seq increases by one per message of an incarnation.
	Seq uint64
	// Sent is the sender's clock at publish, unix nanoseconds.
	Sent int64
	// Full marks a heartbeat: Loads lists every worker the sender routes to.
	Full bool
	// Loads are absolute per-worker totals (not deltas).
	Loads []WorkerLoad
	// Predictions are the sender's routing decisions since its previous message.
	Predictions []Prediction
	// Responses are the stored responses the sender saw answered since its previous
	// message.
	Responses []StoredResponse
}

// AppendMessage appends the encoding of m to dst.
func AppendMessage(dst []byte, m *Message) []byte {
	dst = appendHeader(dst, m)
	dst = binary.AppendUvarint(dst, uint64(len(m.Loads)))
	for i := range m.Loads {
		dst = appendLoad(dst, m.Loads[i].Worker, m.Loads[i].Load)
	}
	dst = binary.AppendUvarint(dst, uint64(len(m.Predictions)))
	for i := range m.Predictions {
		dst = appendPrediction(dst, m.Predictions[i].Worker, m.Predictions[i].Hashes)
	}
	if len(m.Responses) > 0 {
		dst = binary.AppendUvarint(dst, uint64(len(m.Responses)))
		for i := range m.Responses {
			dst = appendResponse(dst, &m.Responses[i])
		}
	}
	return dst
}

func appendResponse(dst []byte, r *StoredResponse) []byte {
	return appendString(appendString(appendString(dst, r.ID), r.Worker), r.Model)
}

func appendHeader(dst []byte, m *Message) []byte {
	dst = append(dst, stateMagic...)
	dst = append(dst, wireVersion)
	dst = appendString(dst, m.Sender)
	dst = binary.LittleEndian.AppendUint64(dst, m.Incarnation)
	dst = binary.AppendUvarint(dst, m.Seq)
	dst = binary.AppendVarint(dst, m.Sent)
	flags := byte(0)
	if m.Full {
		flags |= flagFull
	}
	if len(m.Responses) > 0 {
		flags |= flagResponses
	}
	return append(dst, flags)
}

func appendLoad(dst []byte, worker string, l Load) []byte {
	dst = appendString(dst, worker)
	dst = binary.AppendVarint(dst, l.InFlight)
	dst = binary.AppendVarint(dst, l.PrefillTokens)
	return binary.AppendVarint(dst, l.Blocks)
}

func appendPrediction(dst []byte, worker string, hashes []proto.BlockHash) []byte {
	dst = appendString(dst, worker)
	dst = binary.AppendUvarint(dst, uint64(len(hashes)))
	for _, h := range hashes {
		dst = binary.LittleEndian.AppendUint64(dst, uint64(h))
	}
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// DecodeMessage decodes a state message into m, reusing m's slices. Malformed input
// returns an error wrapping [ErrBadMessage]; counts are checked against the bytes left
// before anything is allocated, so a short message cannot make it allocate much.
func DecodeMessage(data []byte, m *Message) error {
	d := decoder{b: data}
	if err := d.magic(stateMagic); err != nil {
		return err
	}
	m.Sender = d.str()
	m.Incarnation = d.u64()
	m.Seq = d.uv()
	m.Sent = d.sv()
	flags := d.byte()
	m.Full = flags&flagFull != 0
	if d.err == nil && flags&^(flagFull|flagResponses) != 0 {
		d.fail("unknown flags %#x", flags)
	}
	// A load record takes at least 4 bytes, a prediction at least 2.
	n := d.count(maxRecords, 4)
	m.Loads = m.Loads[:0]
	for i := 0; i < n && d.err == nil; i++ {
		var wl WorkerLoad
		wl.Worker = d.str()
		wl.Load = Load{InFlight: d.sv(), PrefillTokens: d.sv(), Blocks: d.sv()}
		m.Loads = append(m.Loads, wl)
	}
	n = d.count(maxRecords, 2)
	m.Predictions = m.Predictions[:0]
	for i := 0; i < n && d.err == nil; i++ {
		var p Prediction
		p.Worker = d.str()
		k := d.count(maxPredicted, 8)
		if k > 0 {
			p.Hashes = make([]proto.BlockHash, k)
			for j := range p.Hashes {
				p.Hashes[j] = proto.BlockHash(d.u64())
			}
		}
		m.Predictions = append(m.Predictions, p)
	}
	m.Responses = m.Responses[:0]
	if flags&flagResponses != 0 {
		n = d.count(maxRecords, 3)
		for i := 0; i < n && d.err == nil; i++ {
			m.Responses = append(m.Responses, StoredResponse{ID: d.str(), Worker: d.str(), Model: d.str()})
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("%d trailing bytes", len(d.b))
	}
	if d.err == nil && m.Sender == "" {
		d.fail("empty sender")
	}
	return d.err
}

// appendChunk appends a dump chunk: its index, whether it is the last, and payload.
func appendChunk(dst []byte, index uint64, last bool, payload []byte) []byte {
	dst = append(dst, dumpMagic...)
	dst = append(dst, wireVersion)
	dst = binary.AppendUvarint(dst, index)
	l := byte(0)
	if last {
		l = 1
	}
	dst = append(dst, l)
	return append(dst, payload...)
}

// chunkOverhead bounds the header appendChunk writes.
const chunkOverhead = len(dumpMagic) + 1 + binary.MaxVarintLen64 + 1

// decodeChunk decodes a dump chunk; payload aliases data.
func decodeChunk(data []byte) (index uint64, last bool, payload []byte, err error) {
	d := decoder{b: data}
	if err := d.magic(dumpMagic); err != nil {
		return 0, false, nil, err
	}
	index = d.uv()
	l := d.byte()
	if d.err == nil && l > 1 {
		d.fail("last flag %d", l)
	}
	if d.err != nil {
		return 0, false, nil, d.err
	}
	return index, l == 1, d.b, nil
}

// decoder reads varints and strings off b; the first error sticks and every later read
// returns zero.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrBadMessage, fmt.Sprintf(format, args...))
	}
}

func (d *decoder) magic(want string) error {
	if len(d.b) < len(want)+1 || string(d.b[:len(want)]) != want {
		d.fail("missing magic %q", want)
		return d.err
	}
	if v := d.b[len(want)]; v != wireVersion {
		d.fail("unsupported version %d", v)
		return d.err
	}
	d.b = d.b[len(want)+1:]
	return nil
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uv() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) sv() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) u64() uint64 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 8 {
		d.fail("truncated")
		return 0
	}
	v := binary.LittleEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

// count reads a record count of at most limit records of at least minSize bytes each.
func (d *decoder) count(limit, minSize int) int {
	n := d.uv()
	if d.err != nil {
		return 0
	}
	if n > uint64(limit) || n*uint64(minSize) > uint64(len(d.b)) {
		d.fail("count %d exceeds the message", n)
		return 0
	}
	return int(n)
}

func (d *decoder) str() string {
	n := d.uv()
	if d.err != nil {
		return ""
	}
	if n > maxIDLen || n > uint64(len(d.b)) {
		d.fail("string of %d bytes", n)
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}
