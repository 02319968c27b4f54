package jsonscan

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// ErrSyntax is wrapped by every error this package returns for malformed input.
var ErrSyntax = errors.New("invalid JSON")

// ErrNumber is returned by [Uint32] and [Uint32Array] for a value that is not an unsigned
// decimal integer in [0, 4294967295] without sign, fraction or exponent.
var ErrNumber = errors.New("not an integer in [0, 4294967295]")

// MaxDepth is the deepest nesting of arrays and objects any function here accepts. See
// the package documentation for why 10000.
const MaxDepth = 10000

var (
	errTooDeep      = fmt.Errorf("%w: nested too deeply", ErrSyntax)
	errUnterminated = fmt.Errorf("%w: unterminated string", ErrSyntax)
	errNotString    = fmt.Errorf("%w: expected a string", ErrSyntax)
)

func syntaxErr(what string, off int) error {
	return fmt.Errorf("%w: %s at offset %d", ErrSyntax, what, off)
}

// IsWS reports whether c is JSON whitespace (RFC 8259 section 2).
func IsWS(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// SkipWS returns the index of the first non-whitespace byte of b at or after i, or
// len(b).
func SkipWS(b []byte, i int) int {
	for i < len(b) && IsWS(b[i]) {
		i++
	}
	return i
}

// TrimWS returns b without leading and trailing JSON whitespace.
func TrimWS(b []byte) []byte {
	i, j := 0, len(b)
	for i < j && IsWS(b[i]) {
		i++
	}
	for j > i && IsWS(b[j-1]) {
		j--
	}
	return b[i:j]
}

// Object validates body as one JSON object, exactly as encoding/json.Valid would plus
// the requirement that it is an object, and calls member for each top-level member, in
// order, with the key's raw string literal (quotes included, escapes not decoded;
// escaped reports whether it has any) and the value's raw bytes. An error from member
// stops the scan and is returned as it is; every other error wraps [ErrSyntax]. member
// sees the members before the end of the body is validated, so a caller must not act on
// them before Object returns nil.
func Object(body []byte, member func(key []byte, escaped bool, val []byte) error) error {
	i := SkipWS(body, 0)
	if i >= len(body) || body[i] != '{' {
		return fmt.Errorf("%w: not an object", ErrSyntax)
	}
	i = SkipWS(body, i+1)
	if i < len(body) && body[i] == '}' {
		return checkEnd(body, i+1)
	}
	for {
		if i >= len(body) || body[i] != '"' {
			return syntaxErr("expected a member name", i)
		}
		end, escaped, err := String(body, i)
		if err != nil {
			return err
		}
		key := body[i:end]
		i = SkipWS(body, end)
		if i >= len(body) || body[i] != ':' {
			return syntaxErr("expected ':'", i)
		}
		vs := SkipWS(body, i+1)
		ve, err := validValue(body, vs, 1)
		if err != nil {
			return err
		}
		if err := member(key, escaped, body[vs:ve]); err != nil {
			return err
		}
		i = SkipWS(body, ve)
		if i >= len(body) {
			return fmt.Errorf("%w: unexpected end", ErrSyntax)
		}
		switch body[i] {
		case ',':
			i = SkipWS(body, i+1)
		case '}':
			return checkEnd(body, i+1)
		default:
			return syntaxErr("expected ',' or '}'", i)
		}
	}
}

// Valid reports whether b is one valid JSON value, as encoding/json.Valid does (which
// has the same nesting limit).
func Valid(b []byte) bool { return Validate(b) == nil }

// Validate is [Valid] with the reason: nil for one valid JSON value, else an error
// wrapping [ErrSyntax] that says what is wrong and at which offset.
func Validate(b []byte) error {
	end, err := validValue(b, SkipWS(b, 0), 0)
	if err != nil {
		return err
	}
	return checkEnd(b, end)
}

func checkEnd(b []byte, i int) error {
	if i = SkipWS(b, i); i != len(b) {
		return syntaxErr("data after the value", i)
	}
	return nil
}

// validValue returns the end of the JSON value starting at b[i], validating it fully.
func validValue(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return 0, fmt.Errorf("%w: unexpected end", ErrSyntax)
	}
	switch c := b[i]; {
	case c == '"':
		end, _, err := String(b, i)
		return end, err
	case c == '{' || c == '[':
		if depth >= MaxDepth {
			return 0, errTooDeep
		}
		return validContainer(b, i, depth+1)
	case c == 't':
		return literal(b, i, "true")
	case c == 'f':
		return literal(b, i, "false")
	case c == 'n':
		return literal(b, i, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		return number(b, i)
	}
	return 0, syntaxErr(fmt.Sprintf("unexpected %q", b[i]), i)
}

func validContainer(b []byte, i, depth int) (int, error) {
	obj := b[i] == '{'
	closing := byte(']')
	if obj {
		closing = '}'
	}
	i = SkipWS(b, i+1)
	if i < len(b) && b[i] == closing {
		return i + 1, nil
	}
	for {
		if obj {
			if i >= len(b) || b[i] != '"' {
				return 0, syntaxErr("expected a member name", i)
			}
			end, _, err := String(b, i)
			if err != nil {
				return 0, err
			}
			i = SkipWS(b, end)
			if i >= len(b) || b[i] != ':' {
				return 0, syntaxErr("expected ':'", i)
			}
			i = SkipWS(b, i+1)
		}
		end, err := validValue(b, i, depth)
		if err != nil {
			return 0, err
		}
		i = SkipWS(b, end)
		if i >= len(b) {
			return 0, fmt.Errorf("%w: unexpected end", ErrSyntax)
		}
		switch b[i] {
		case ',':
			i = SkipWS(b, i+1)
		case closing:
			return i + 1, nil
		default:
			return 0, syntaxErr(fmt.Sprintf("unexpected %q", b[i]), i)
		}
	}
}

// String validates the string literal starting at b[i] == '"' and returns the index
// just past its closing quote and whether it has escapes. Control characters must be
// escaped (RFC 8259 section 7); bytes that are not valid UTF-8 are accepted, as
// encoding/json accepts them.
func String(b []byte, i int) (end int, escaped bool, err error) {
	if i >= len(b) || b[i] != '"' {
		return 0, false, syntaxErr("expected a string", i)
	}
	i++
	// The closing quote and each backslash are found with bytes.IndexByte (vectorized);
	// only the control-character check reads the string word by word. quote is the next
	// quote at or after i, kept across escapes so that a string of many escapes is not
	// searched again to its end at each one.
	quote := -1
	for {
		if quote < i {
			q := bytes.IndexByte(b[i:], '"')
			if q < 0 {
				if j := ctlIndex(b[i:]); j >= 0 {
					return 0, false, syntaxErr("control character in a string", i+j)
				}
				return 0, false, fmt.Errorf("%w: unterminated string", ErrSyntax)
			}
			quote = i + q
		}
		stop := quote
		if bs := bytes.IndexByte(b[i:quote], '\\'); bs >= 0 {
			stop = i + bs
		}
		if j := ctlIndex(b[i:stop]); j >= 0 {
			return 0, false, syntaxErr("control character in a string", i+j)
		}
		if stop == quote {
			return quote + 1, escaped, nil
		}
		escaped = true
		i = stop + 1 // the escape's letter
		if i >= len(b) {
			return 0, false, fmt.Errorf("%w: unterminated string", ErrSyntax)
		}
		switch b[i] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			i++
		case 'u':
			if _, ok := hex4(b, i+1); !ok {
				return 0, false, syntaxErr(`bad \u escape`, i)
			}
			i += 5
		default:
			return 0, false, syntaxErr("bad escape", i)
		}
	}
}

// ctlIndex returns the index of the first control character (< 0x20) in b, or -1. It
// tests 8 bytes at a time: (x - ones*0x20) & ^x & highs is non-zero exactly when some
// byte of x is below 0x20.
func ctlIndex(b []byte) int {
	i := 0
	for ; i+16 <= len(b); i += 16 {
		x := binary.LittleEndian.Uint64(b[i:])
		y := binary.LittleEndian.Uint64(b[i+8:])
		if ((x-ones*0x20)&^x|(y-ones*0x20)&^y)&highs != 0 {
			break
		}
	}
	for ; i < len(b); i++ {
		if b[i] < 0x20 {
			return i
		}
	}
	return -1
}

// Word-at-a-time constants: a byte value repeated in every byte of a uint64.
const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

func literal(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, syntaxErr("bad literal", i)
	}
	return i + len(lit), nil
}

// number follows the JSON number grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func number(b []byte, i int) (int, error) {
	start := i
	if b[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case digits() == 0:
		return 0, syntaxErr("bad number", start)
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return 0, syntaxErr("bad number", start)
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return 0, syntaxErr("bad number", start)
		}
	}
	return i, nil
}

// Skip returns the index just past the JSON value starting at b[i] (i must be at the
// value's first byte, not whitespace), checking only its structure: brackets, quotes,
// member colons and commas, literals and the nesting limit. Strings are found with a
// vectorized search for the closing quote and not validated (see [AppendUnescaped]); numbers
// are any run of number characters. It is for input that was validated before, or
// whose strings are decoded after: it never panics and runs in time linear in the input
// on any bytes, but it accepts some invalid JSON.
func Skip(b []byte, i int) (int, error) { return skip(b, i, 0) }

func skip(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return 0, fmt.Errorf("%w: unexpected end", ErrSyntax)
	}
	switch c := b[i]; {
	case c == '"':
		return skipString(b, i)
	case c == '{' || c == '[':
		if depth >= MaxDepth {
			return 0, errTooDeep
		}
		closing := byte(']')
		if c == '{' {
			closing = '}'
		}
		i = SkipWS(b, i+1)
		if i < len(b) && b[i] == closing {
			return i + 1, nil
		}
		for {
			var err error
			if c == '{' {
				if i >= len(b) || b[i] != '"' {
					return 0, syntaxErr("expected a member name", i)
				}
				if i, err = skipString(b, i); err != nil {
					return 0, err
				}
				i = SkipWS(b, i)
				if i >= len(b) || b[i] != ':' {
					return 0, syntaxErr("expected ':'", i)
				}
				i = SkipWS(b, i+1)
			}
			if i, err = skip(b, i, depth+1); err != nil {
				return 0, err
			}
			i = SkipWS(b, i)
			if i >= len(b) {
				return 0, fmt.Errorf("%w: unexpected end", ErrSyntax)
			}
			if b[i] == closing {
				return i + 1, nil
			}
			if b[i] != ',' {
				return 0, syntaxErr(fmt.Sprintf("unexpected %q", b[i]), i)
			}
			i = SkipWS(b, i+1)
		}
	case c == 't':
		return literal(b, i, "true")
	case c == 'f':
		return literal(b, i, "false")
	case c == 'n':
		return literal(b, i, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		j := i + 1
		for j < len(b) && (b[j] >= '0' && b[j] <= '9' || b[j] == '.' || b[j] == 'e' || b[j] == 'E' || b[j] == '+' || b[j] == '-') {
			j++
		}
		return j, nil
	}
	return 0, syntaxErr(fmt.Sprintf("unexpected %q", b[i]), i)
}

// skipString returns the index just past the string starting at b[i] == '"'. A quote
// preceded by an odd run of backslashes is escaped.
func skipString(b []byte, i int) (int, error) {
	i++
	for {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			return 0, fmt.Errorf("%w: unterminated string", ErrSyntax)
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

// Iter walks the members of a JSON object with [Skip]'s checks. The zero Iter is not
// usable; start one with [NewIter].
type Iter struct {
	b     []byte
	i     int
	first bool
}

// NewIter starts an iterator at b[i], which must be '{'.
func NewIter(b []byte, i int) (Iter, error) {
	if i >= len(b) || b[i] != '{' {
		return Iter{}, syntaxErr("expected '{'", i)
	}
	return Iter{b: b, i: i + 1, first: true}, nil
}

// End is the index just past the object's closing brace once Next has returned
// ok == false.
func (it *Iter) End() int { return it.i }

// Next returns the next member: its key as written (with the quotes, escapes kept; see
// [KeyIs]) and its value's span b[vs:ve]. ok is false after the closing brace.
func (it *Iter) Next() (key []byte, vs, ve int, ok bool, err error) {
	key, vs, ok, err = it.NextKey()
	if !ok || err != nil {
		return nil, 0, 0, ok, err
	}
	if ve, err = it.SkipValue(); err != nil {
		return nil, 0, 0, false, err
	}
	return key, vs, ve, true, nil
}

// SkipValue skips the value NextKey returned, as Next does, and returns its end.
func (it *Iter) SkipValue() (int, error) {
	ve, err := skip(it.b, it.i, 1)
	if err != nil {
		return 0, err
	}
	it.i = ve
	return ve, nil
}

// NextKey is Next for a caller that scans the value itself: it returns the member's
// key and the index of its value's first byte, vs. Before the next call the caller
// either calls SkipValue, or finds the value's end itself, as Next would (a member's
// value is at depth 1: [NewArrayIter](b, vs, 1) for an array), and calls ValueEnd
// with it.
func (it *Iter) NextKey() (key []byte, vs int, ok bool, err error) {
	b := it.b
	i := SkipWS(b, it.i)
	if i >= len(b) {
		return nil, 0, false, fmt.Errorf("%w: unexpected end", ErrSyntax)
	}
	if b[i] == '}' {
		it.i = i + 1
		return nil, 0, false, nil
	}
	if !it.first {
		if b[i] != ',' {
			return nil, 0, false, syntaxErr("expected ',' or '}'", i)
		}
		i = SkipWS(b, i+1)
	}
	it.first = false
	if i >= len(b) || b[i] != '"' {
		return nil, 0, false, syntaxErr("expected a member name", i)
	}
	ke, err := skipString(b, i)
	if err != nil {
		return nil, 0, false, err
	}
	key = b[i:ke]
	i = SkipWS(b, ke)
	if i >= len(b) || b[i] != ':' {
		return nil, 0, false, syntaxErr("expected ':'", i)
	}
	it.i = SkipWS(b, i+1)
	return key, it.i, true, nil
}

// ValueEnd tells the iterator where the value NextKey returned ends.
func (it *Iter) ValueEnd(ve int) { it.i = ve }

// ArrayIter walks the elements of an array with [Skip]'s checks, for a caller that
// wants the elements without scanning them twice; start one with [NewArrayIter].
type ArrayIter struct {
	b         []byte
	i, depth  int
	afterElem bool // an element was read: ',' or ']' comes next
}

// NewArrayIter starts an iterator at b[i], which must be '[', of an array nested
// depth levels deep (an object member's value is at depth 1).
func NewArrayIter(b []byte, i, depth int) (ArrayIter, error) {
	if i >= len(b) || b[i] != '[' {
		return ArrayIter{}, syntaxErr("expected '['", i)
	}
	if depth >= MaxDepth {
		return ArrayIter{}, errTooDeep
	}
	return ArrayIter{b: b, i: i + 1, depth: depth}, nil
}

// Next returns the next element's bounds b[start:end]; ok is false after the closing
// bracket, and End is then just past it.
func (a *ArrayIter) Next() (start, end int, ok bool, err error) {
	b := a.b
	i := SkipWS(b, a.i)
	if i >= len(b) {
		return 0, 0, false, fmt.Errorf("%w: unexpected end", ErrSyntax)
	}
	if b[i] == ']' { // after '[' or after an element (after ',' an element must follow)
		a.i = i + 1
		return 0, 0, false, nil
	}
	if a.afterElem {
		if b[i] != ',' {
			return 0, 0, false, syntaxErr(fmt.Sprintf("unexpected %q", b[i]), i)
		}
		i = SkipWS(b, i+1)
	}
	end, err = skip(b, i, a.depth+1)
	if err != nil {
		return 0, 0, false, err
	}
	a.i, a.afterElem = end, true
	return i, end, true, nil
}

// Skipped moves the iterator to end, just past an element, for a caller that knows
// the elements before it: b up to end repeats bytes this walk (or one at the same
// depth) read before, from the same element's start.
func (a *ArrayIter) Skipped(end int) { a.i, a.afterElem = end, true }

// End is the index just past the closing bracket once Next has returned ok == false.
func (a *ArrayIter) End() int { return a.i }

// KeyIs reports whether a string literal as written (quotes and escapes kept) decodes
// to want. It allocates nothing for keys up to 64 decoded bytes.
func KeyIs(key []byte, want string) bool {
	if len(key) < 2 || key[0] != '"' {
		return false
	}
	inner := key[1 : len(key)-1]
	if len(inner) == len(want) && string(inner) == want {
		return true
	}
	if bytes.IndexByte(inner, '\\') < 0 {
		return false
	}
	var arr [64]byte
	s, _, err := AppendUnescaped(arr[:0], key, 0)
	return err == nil && string(s) == want
}

// Uint32 parses num as an unsigned decimal integer in [0, 4294967295], written without
// sign, fraction, exponent or leading zeros.
func Uint32(num []byte) (uint32, error) {
	if len(num) == 0 || len(num) > 10 || (num[0] == '0' && len(num) > 1) {
		return 0, ErrNumber
	}
	var v uint64
	for _, c := range num {
		if c < '0' || c > '9' {
			return 0, ErrNumber
		}
		v = v*10 + uint64(c-'0')
	}
	if v > math.MaxUint32 {
		return 0, ErrNumber
	}
	return uint32(v), nil
}

// Uint32Array appends to dst the elements of the JSON array starting at b[i] and returns
// the extended slice and the index just past the array. Every element must be as
// [Uint32] requires; an element that is not wraps [ErrNumber].
func Uint32Array(b []byte, i int, dst []uint32) ([]uint32, int, error) {
	if i >= len(b) || b[i] != '[' {
		return dst, 0, syntaxErr("expected '['", i)
	}
	i = SkipWS(b, i+1)
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
			return dst, 0, ErrNumber
		}
		dst = append(dst, uint32(v))
		j = SkipWS(b, j)
		if j >= len(b) {
			return dst, 0, fmt.Errorf("%w: unexpected end", ErrSyntax)
		}
		switch b[j] {
		case ',':
			i = SkipWS(b, j+1)
		case ']':
			return dst, j + 1, nil
		default:
			return dst, 0, ErrNumber
		}
	}
}
