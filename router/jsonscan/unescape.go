package jsonscan

import (
	"bytes"
	"fmt"
	"unicode/utf16"
	"unicode/utf8"
)

// Unescaper decodes a JSON string literal piece by piece, so a caller can stream the
// text into a hash or buffer of its own without an intermediate copy and without a
// callback (an interface or func argument would make the caller's sink escape to the
// heap). Escapes decode as encoding/json decodes them (an unpaired surrogate becomes
// U+FFFD). Other bytes are passed through as they are: raw control characters, which
// JSON forbids, are not rejected, and invalid UTF-8 is not replaced (encoding/json
// replaces each invalid byte with U+FFFD; a caller that needs that does it on the
// result). Like [Skip], it suits input that was validated before or is untrusted but
// only hashed.
type Unescaper struct {
	b     []byte
	i     int // next byte to decode
	start int // first byte of the pending raw run
	quote int // index of the next quote at or after i, once found
	done  bool
	tmp   [utf8.UTFMax]byte
}

// NewUnescaper starts at b[i], which must be '"'.
func NewUnescaper(b []byte, i int) (Unescaper, error) {
	if i >= len(b) || b[i] != '"' {
		return Unescaper{}, syntaxErr("expected a string", i)
	}
	return Unescaper{b: b, i: i + 1, start: i + 1, quote: -1}, nil
}

// Next returns the next piece of decoded text, which is valid until the following call.
// ok is false once the closing quote was reached; [Unescaper.End] then is the index
// just past it. Pieces may be empty.
func (u *Unescaper) Next() (piece []byte, ok bool, err error) {
	if u.done {
		return nil, false, nil
	}
	b, i := u.b, u.i
	// The next quote or backslash, found with vectorized scans; each byte is scanned
	// at most twice.
	if u.quote < i {
		q := bytes.IndexByte(b[i:], '"')
		if q < 0 {
			return nil, false, fmt.Errorf("%w: unterminated string", ErrSyntax)
		}
		u.quote = i + q
	}
	if bs := bytes.IndexByte(b[i:u.quote], '\\'); bs >= 0 {
		i += bs
	} else {
		i = u.quote
	}
	if i > u.start {
		u.i = i
		piece = b[u.start:i]
		u.start = i
		return piece, true, nil
	}
	if b[i] == '"' {
		u.i, u.done = i+1, true
		return nil, false, nil
	}
	// b[i] == '\\'
	if i+1 >= len(b) {
		return nil, false, fmt.Errorf("%w: unterminated string", ErrSyntax)
	}
	switch e := b[i+1]; e {
	case '"', '\\', '/':
		u.tmp[0] = e
		piece = u.tmp[:1]
		i += 2
	case 'b', 'f', 'n', 'r', 't':
		switch e {
		case 'b':
			u.tmp[0] = '\b'
		case 'f':
			u.tmp[0] = '\f'
		case 'n':
			u.tmp[0] = '\n'
		case 'r':
			u.tmp[0] = '\r'
		default:
			u.tmp[0] = '\t'
		}
		piece = u.tmp[:1]
		i += 2
	case 'u':
		r, ok := hex4(b, i+2)
		if !ok {
			return nil, false, syntaxErr(`bad \u escape`, i)
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
		piece = u.tmp[:utf8.EncodeRune(u.tmp[:], r)]
	default:
		return nil, false, syntaxErr("bad escape", i)
	}
	u.i, u.start = i, i
	return piece, true, nil
}

// End is the index just past the closing quote once [Unescaper.Next] has returned
// ok == false.
func (u *Unescaper) End() int { return u.i }

// AppendUnescaped appends the decoded contents of the string literal starting at
// b[i] == '"' to dst, as [Unescaper] decodes them, and returns the extended slice and
// the index just past the closing quote.
func AppendUnescaped(dst, b []byte, i int) ([]byte, int, error) {
	u, err := NewUnescaper(b, i)
	if err != nil {
		return dst, 0, err
	}
	for {
		p, ok, err := u.Next()
		if err != nil {
			return dst, 0, err
		}
		if !ok {
			return dst, u.End(), nil
		}
		dst = append(dst, p...)
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
