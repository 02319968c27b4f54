package blockhash

import (
	"bytes"
	"errors"
	"math"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
)

// A small JSON scanner over raw bytes. The request body was already validated as JSON
// by router/scan.go's scanObject, but these functions never trust that: on any input they
// return an error or a result, never panic, and run in time linear in the input
// (nesting is bounded by maxDepth). They allocate nothing beyond what their callers'
// buffers need, which keeps the approx mode and the engine mode's cache-hit path free of
// allocations.

// errSyntax is wrapped by every scanner error.
var errSyntax = errors.New("invalid JSON")

// maxDepth bounds the nesting of skipped values.
const maxDepth = 1000

func isWS(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// skipWS returns the index of the first non-whitespace byte at or after i.
func skipWS(b []byte, i int) int {
	for i < len(b) && isWS(b[i]) {
		i++
	}
	return i
}

// trimWS returns b without leading and trailing JSON whitespace.
func trimWS(b []byte) []byte {
	i, j := 0, len(b)
	for i < j && isWS(b[i]) {
		i++
	}
	for j > i && isWS(b[j-1]) {
		j--
	}
	return b[i:j]
}

// skipValue returns the index just after the JSON value starting at b[i] (i must be at
// the value's first byte, not whitespace).
func skipValue(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return 0, errSyntax
	}
	switch c := b[i]; {
	case c == '"':
		return skipString(b, i)
	case c == '{' || c == '[':
		if depth >= maxDepth {
			return 0, errors.New("JSON nested too deeply")
		}
		close := byte(']')
		if c == '{' {
			close = '}'
		}
		i = skipWS(b, i+1)
		if i < len(b) && b[i] == close {
			return i + 1, nil
		}
		for {
			var err error
			if c == '{' {
				if i >= len(b) || b[i] != '"' {
					return 0, errSyntax
				}
				if i, err = skipString(b, i); err != nil {
					return 0, err
				}
				i = skipWS(b, i)
				if i >= len(b) || b[i] != ':' {
					return 0, errSyntax
				}
				i = skipWS(b, i+1)
			}
			if i, err = skipValue(b, i, depth+1); err != nil {
				return 0, err
			}
			i = skipWS(b, i)
			if i >= len(b) {
				return 0, errSyntax
			}
			if b[i] == close {
				return i + 1, nil
			}
			if b[i] != ',' {
				return 0, errSyntax
			}
			i = skipWS(b, i+1)
		}
	case c == 't':
		return skipLit(b, i, "true")
	case c == 'f':
		return skipLit(b, i, "false")
	case c == 'n':
		return skipLit(b, i, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		j := i + 1
		for j < len(b) && (b[j] >= '0' && b[j] <= '9' || b[j] == '.' || b[j] == 'e' || b[j] == 'E' || b[j] == '+' || b[j] == '-') {
			j++
		}
		return j, nil
	}
	return 0, errSyntax
}

func skipLit(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, errSyntax
	}
	return i + len(lit), nil
}

// skipString returns the index just after the string starting at b[i] == '"'. It finds
// the closing quote with bytes.IndexByte (a quote preceded by an odd run of backslashes
// is escaped) and does not validate the contents; unescape does.
func skipString(b []byte, i int) (int, error) {
	i++
	for {
		if i > len(b) {
			return 0, errSyntax
		}
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			return 0, errSyntax
		}
		q := i + j
		n := 0
		for q-1-n >= i && b[q-1-n] == '\\' {
			n++
		}
		if n%2 == 0 {
			return q + 1, nil
		}
		i = q + 1
	}
}

// objIter walks the members of a JSON object.
type objIter struct {
	b     []byte
	i     int
	first bool
}

// newObjIter starts at b[i], which must be '{'.
func newObjIter(b []byte, i int) (objIter, error) {
	if i >= len(b) || b[i] != '{' {
		return objIter{}, errSyntax
	}
	return objIter{b: b, i: i + 1, first: true}, nil
}

// next returns the next member: its key as written (with the quotes, escapes kept)
// and its value's span b[vs:ve]. ok is false after the closing brace, where it.i points
// just past it.
func (it *objIter) next() (key []byte, vs, ve int, ok bool, err error) {
	b := it.b
	i := skipWS(b, it.i)
	if i >= len(b) {
		return nil, 0, 0, false, errSyntax
	}
	if b[i] == '}' && it.first {
		it.i = i + 1
		return nil, 0, 0, false, nil
	}
	if !it.first {
		if b[i] == '}' {
			it.i = i + 1
			return nil, 0, 0, false, nil
		}
		if b[i] != ',' {
			return nil, 0, 0, false, errSyntax
		}
		i = skipWS(b, i+1)
	}
	it.first = false
	if i >= len(b) || b[i] != '"' {
		return nil, 0, 0, false, errSyntax
	}
	ke, err := skipString(b, i)
	if err != nil {
		return nil, 0, 0, false, err
	}
	key = b[i:ke]
	i = skipWS(b, ke)
	if i >= len(b) || b[i] != ':' {
		return nil, 0, 0, false, errSyntax
	}
	vs = skipWS(b, i+1)
	ve, err = skipValue(b, vs, 1)
	if err != nil {
		return nil, 0, 0, false, err
	}
	it.i = ve
	return key, vs, ve, true, nil
}

// keyIs reports whether a key as written (quotes and escapes kept) equals want after
// unescaping.
func keyIs(key []byte, want string) bool {
	if len(key) < 2 || key[0] != '"' {
		return false
	}
	inner := key[1 : len(key)-1]
	if len(inner) == len(want) && string(inner) == want {
		return true
	}
	for _, c := range inner {
		if c == '\\' {
			var arr [64]byte
			s := textSink{collect: true, buf: arr[:0]}
			if _, err := unescape(key, 0, &s); err != nil {
				return false
			}
			return string(s.buf) == want
		}
	}
	return false
}

// unescape writes the contents of the string starting at b[i] == '"' to s, decoding
// escapes as encoding/json does (an unpaired surrogate becomes U+FFFD), and returns the
// index just past the closing quote. Bytes that are not escapes are copied as they are
// (raw control characters, invalid in JSON, are not rejected).
func unescape(b []byte, i int, s *textSink) (int, error) {
	if i >= len(b) || b[i] != '"' {
		return 0, errSyntax
	}
	i++
	start := i
	quote := -1 // index of the next quote at or after i, once found
	for {
		// The next quote or backslash, found with vectorized scans; each byte is
		// scanned at most twice.
		if quote < i {
			q := bytes.IndexByte(b[i:], '"')
			if q < 0 {
				return 0, errSyntax
			}
			quote = i + q
		}
		if bs := bytes.IndexByte(b[i:quote], '\\'); bs >= 0 {
			i += bs
		} else {
			i = quote
		}
		s.write(b[start:i])
		if b[i] == '"' {
			return i + 1, nil
		}
		// b[i] == '\\'
		if i+1 >= len(b) {
			return 0, errSyntax
		}
		var tmp [8]byte
		switch e := b[i+1]; e {
		case '"', '\\', '/':
			tmp[0] = e
			s.write(tmp[:1])
			i += 2
		case 'b', 'f', 'n', 'r', 't':
			switch e {
			case 'b':
				tmp[0] = '\b'
			case 'f':
				tmp[0] = '\f'
			case 'n':
				tmp[0] = '\n'
			case 'r':
				tmp[0] = '\r'
			default:
				tmp[0] = '\t'
			}
			s.write(tmp[:1])
			i += 2
		case 'u':
			r, ok := hex4(b, i+2)
			if !ok {
				return 0, errSyntax
			}
			i += 6
			if utf16.IsSurrogate(r) {
				r2 := rune(-1)
				if i+1 < len(b) && b[i] == '\\' && b[i+1] == 'u' {
					if v, ok := hex4(b, i+2); ok {
						r2 = v
					}
				}
				if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
					r = dec
					i += 6
				} else {
					r = utf8.RuneError
				}
			}
			n := utf8.EncodeRune(tmp[:], r)
			s.write(tmp[:n])
		default:
			return 0, errSyntax
		}
		start = i
	}
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// readUint32Array appends to dst the token ids of the JSON array starting at b[i] and
// returns the extended slice and the index past the array. Every element must be an
// integer in [0, 2^32-1] written without sign, fraction or exponent.
func readUint32Array(b []byte, i int, dst []uint32) ([]uint32, int, error) {
	if i >= len(b) || b[i] != '[' {
		return dst, 0, errSyntax
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == ']' {
		return dst, i + 1, nil
	}
	for {
		j := i
		var v uint64
		for j < len(b) && b[j] >= '0' && b[j] <= '9' && j-i < 11 {
			v = v*10 + uint64(b[j]-'0')
			j++
		}
		if j == i || (b[i] == '0' && j-i > 1) || v > math.MaxUint32 {
			return dst, 0, errTokenID
		}
		dst = append(dst, uint32(v))
		j = skipWS(b, j)
		if j >= len(b) {
			return dst, 0, errSyntax
		}
		switch b[j] {
		case ',':
			i = skipWS(b, j+1)
		case ']':
			return dst, j + 1, nil
		default:
			return dst, 0, errTokenID
		}
	}
}

var errTokenID = errors.New("token id is not an integer in [0, 4294967295]")

func parseUint32(num []byte) (uint32, error) {
	if len(num) == 0 || len(num) > 10 || (num[0] == '0' && len(num) > 1) {
		return 0, errTokenID
	}
	var v uint64
	for _, c := range num {
		if c < '0' || c > '9' {
			return 0, errTokenID
		}
		v = v*10 + uint64(c-'0')
	}
	if v > math.MaxUint32 {
		return 0, errTokenID
	}
	return uint32(v), nil
}

// tokenPool recycles token-id buffers between calls.
var tokenPool = sync.Pool{New: func() any { b := make([]uint32, 0, 4096); return &b }}

func getTokens() *[]uint32 { return tokenPool.Get().(*[]uint32) }

// putTokens returns a buffer to the pool, dropping huge ones so the pool stays small.
func putTokens(b *[]uint32) {
	if cap(*b) > 1<<20 {
		return
	}
	*b = (*b)[:0]
	tokenPool.Put(b)
}
