package proto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// ErrTruncated is returned when a payload ends in the middle of a value.
var ErrTruncated = errors.New("truncated payload")

// maxDepth bounds the nesting of values skipped or walked by the msgpack reader, so a
// hostile payload of nested arrays cannot exhaust the stack.
const maxDepth = 32

// mpReader is a minimal msgpack reader over a byte slice. It never allocates, never
// panics on bad input (every length is checked against what is left) and reports the
// first error; the decoders built on it copy what they keep.
type mpReader struct {
	b   []byte
	off int
}

// mpType is the coarse msgpack type of the next value.
type mpType uint8

const (
	mpInvalid mpType = iota
	mpNil
	mpBool
	mpInt // signed or unsigned integer
	mpFloat
	mpStr
	mpBin
	mpArray
	mpMap
	mpExt
)

func (r *mpReader) remaining() int { return len(r.b) - r.off }

// peek returns the type of the next value without consuming it.
func (r *mpReader) peek() mpType {
	if r.off >= len(r.b) {
		return mpInvalid
	}
	c := r.b[r.off]
	switch {
	case c <= 0x7f, c >= 0xe0:
		return mpInt
	case c >= 0x80 && c <= 0x8f:
		return mpMap
	case c >= 0x90 && c <= 0x9f:
		return mpArray
	case c >= 0xa0 && c <= 0xbf:
		return mpStr
	}
	switch c {
	case 0xc0:
		return mpNil
	case 0xc2, 0xc3:
		return mpBool
	case 0xc4, 0xc5, 0xc6:
		return mpBin
	case 0xc7, 0xc8, 0xc9, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8:
		return mpExt
	case 0xca, 0xcb:
		return mpFloat
	case 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3:
		return mpInt
	case 0xd9, 0xda, 0xdb:
		return mpStr
	case 0xdc, 0xdd:
		return mpArray
	case 0xde, 0xdf:
		return mpMap
	}
	return mpInvalid
}

// need checks that n more bytes are available after the current offset.
func (r *mpReader) need(n int) error {
	if n < 0 || r.remaining() < n {
		return ErrTruncated
	}
	return nil
}

func (r *mpReader) u8() (uint8, error) {
	if err := r.need(1); err != nil {
		return 0, err
	}
	v := r.b[r.off]
	r.off++
	return v, nil
}

func (r *mpReader) u16() (uint16, error) {
	if err := r.need(2); err != nil {
		return 0, err
	}
	v := binary.BigEndian.Uint16(r.b[r.off:])
	r.off += 2
	return v, nil
}

func (r *mpReader) u32() (uint32, error) {
	if err := r.need(4); err != nil {
		return 0, err
	}
	v := binary.BigEndian.Uint32(r.b[r.off:])
	r.off += 4
	return v, nil
}

func (r *mpReader) u64() (uint64, error) {
	if err := r.need(8); err != nil {
		return 0, err
	}
	v := binary.BigEndian.Uint64(r.b[r.off:])
	r.off += 8
	return v, nil
}

// nilNext consumes a nil if one is next and reports whether it did.
func (r *mpReader) nilNext() bool {
	if r.off < len(r.b) && r.b[r.off] == 0xc0 {
		r.off++
		return true
	}
	return false
}

// arrayLen reads an array header. The length is checked against the bytes left (every
// element takes at least one byte), so a forged length cannot make callers allocate.
func (r *mpReader) arrayLen() (int, error) {
	c, err := r.u8()
	if err != nil {
		return 0, err
	}
	var n int
	switch {
	case c >= 0x90 && c <= 0x9f:
		n = int(c & 0x0f)
	case c == 0xdc:
		v, err := r.u16()
		if err != nil {
			return 0, err
		}
		n = int(v)
	case c == 0xdd:
		v, err := r.u32()
		if err != nil {
			return 0, err
		}
		n = int(v)
	default:
		return 0, fmt.Errorf("want array, got byte 0x%02x at %d", c, r.off-1)
	}
	if n > r.remaining() {
		return 0, ErrTruncated
	}
	return n, nil
}

// mapLen reads a map header, checked like arrayLen (two bytes per entry at least).
func (r *mpReader) mapLen() (int, error) {
	c, err := r.u8()
	if err != nil {
		return 0, err
	}
	var n int
	switch {
	case c >= 0x80 && c <= 0x8f:
		n = int(c & 0x0f)
	case c == 0xde:
		v, err := r.u16()
		if err != nil {
			return 0, err
		}
		n = int(v)
	case c == 0xdf:
		v, err := r.u32()
		if err != nil {
			return 0, err
		}
		n = int(v)
	default:
		return 0, fmt.Errorf("want map, got byte 0x%02x at %d", c, r.off-1)
	}
	if n > r.remaining()/2 {
		return 0, ErrTruncated
	}
	return n, nil
}

// int reads any msgpack integer as its 64-bit two's-complement pattern: uint64 values
// above MaxInt64 and negative int64 values both round-trip through uint64. neg reports
// a negative value.
func (r *mpReader) int() (v uint64, neg bool, err error) {
	c, err := r.u8()
	if err != nil {
		return 0, false, err
	}
	switch {
	case c <= 0x7f:
		return uint64(c), false, nil
	case c >= 0xe0:
		return uint64(int64(int8(c))), true, nil
	}
	switch c {
	case 0xcc:
		x, err := r.u8()
		return uint64(x), false, err
	case 0xcd:
		x, err := r.u16()
		return uint64(x), false, err
	case 0xce:
		x, err := r.u32()
		return uint64(x), false, err
	case 0xcf:
		x, err := r.u64()
		return x, false, err
	case 0xd0:
		x, err := r.u8()
		return uint64(int64(int8(x))), int8(x) < 0, err
	case 0xd1:
		x, err := r.u16()
		return uint64(int64(int16(x))), int16(x) < 0, err
	case 0xd2:
		x, err := r.u32()
		return uint64(int64(int32(x))), int32(x) < 0, err
	case 0xd3:
		x, err := r.u64()
		return x, int64(x) < 0, err
	}
	return 0, false, fmt.Errorf("want integer, got byte 0x%02x at %d", c, r.off-1)
}

// smallInt reads an integer that must fit in a non-negative int32 (block sizes, ranks,
// group indexes).
func (r *mpReader) smallInt() (int, error) {
	v, neg, err := r.int()
	if err != nil {
		return 0, err
	}
	if neg || v > math.MaxInt32 {
		return 0, fmt.Errorf("integer %d out of range", int64(v))
	}
	return int(v), nil
}

// float reads a float32, float64 or integer as float64.
func (r *mpReader) float() (float64, error) {
	switch r.peek() {
	case mpFloat:
	case mpInt:
		v, neg, err := r.int()
		if neg {
			return float64(int64(v)), err
		}
		return float64(v), err
	default:
		return 0, fmt.Errorf("want float at %d", r.off)
	}
	c, _ := r.u8()
	if c == 0xca {
		x, err := r.u32()
		return float64(math.Float32frombits(x)), err
	}
	x, err := r.u64()
	return math.Float64frombits(x), err
}

// strOrBin reads a string or binary value and returns its bytes, aliasing the payload.
func (r *mpReader) strOrBin() ([]byte, error) {
	c, err := r.u8()
	if err != nil {
		return nil, err
	}
	var n int
	switch {
	case c >= 0xa0 && c <= 0xbf:
		n = int(c & 0x1f)
	case c == 0xd9 || c == 0xc4:
		x, err := r.u8()
		if err != nil {
			return nil, err
		}
		n = int(x)
	case c == 0xda || c == 0xc5:
		x, err := r.u16()
		if err != nil {
			return nil, err
		}
		n = int(x)
	case c == 0xdb || c == 0xc6:
		x, err := r.u32()
		if err != nil {
			return nil, err
		}
		n = int(x)
	default:
		return nil, fmt.Errorf("want string, got byte 0x%02x at %d", c, r.off-1)
	}
	if err := r.need(n); err != nil {
		return nil, err
	}
	s := r.b[r.off : r.off+n]
	r.off += n
	return s, nil
}

// skip consumes one value of any type, nested up to maxDepth.
func (r *mpReader) skip() error { return r.skipDepth(0) }

func (r *mpReader) skipDepth(depth int) error {
	if depth > maxDepth {
		return errors.New("msgpack nesting too deep")
	}
	switch r.peek() {
	case mpNil, mpBool:
		r.off++
		return nil
	case mpInt:
		_, _, err := r.int()
		return err
	case mpFloat:
		_, err := r.float()
		return err
	case mpStr, mpBin:
		_, err := r.strOrBin()
		return err
	case mpArray:
		n, err := r.arrayLen()
		if err != nil {
			return err
		}
		for range n {
			if err := r.skipDepth(depth + 1); err != nil {
				return err
			}
		}
		return nil
	case mpMap:
		n, err := r.mapLen()
		if err != nil {
			return err
		}
		for range 2 * n {
			if err := r.skipDepth(depth + 1); err != nil {
				return err
			}
		}
		return nil
	case mpExt:
		return r.skipExt()
	}
	if r.off >= len(r.b) {
		return ErrTruncated
	}
	return fmt.Errorf("invalid msgpack byte 0x%02x at %d", r.b[r.off], r.off)
}

func (r *mpReader) skipExt() error {
	c, err := r.u8()
	if err != nil {
		return err
	}
	var n int
	switch c {
	case 0xd4:
		n = 1
	case 0xd5:
		n = 2
	case 0xd6:
		n = 4
	case 0xd7:
		n = 8
	case 0xd8:
		n = 16
	case 0xc7:
		x, err := r.u8()
		if err != nil {
			return err
		}
		n = int(x)
	case 0xc8:
		x, err := r.u16()
		if err != nil {
			return err
		}
		n = int(x)
	case 0xc9:
		x, err := r.u32()
		if err != nil {
			return err
		}
		n = int(x)
	}
	if err := r.need(n + 1); err != nil { // type byte + data
		return err
	}
	r.off += n + 1
	return nil
}
