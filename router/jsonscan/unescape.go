package jsonscan

import (
	"bytes"
	"unicode/utf16"
	"unicode/utf8"
)

// Escape decodes the escape sequence at b[i] == '\\' inside a string literal, as
// encoding/json decodes it (a surrogate pair is one escape; an unpaired surrogate
// becomes U+FFFD), and returns its character and the index just past it.
//
// A caller that streams a string's text into a sink of its own (a hash, a buffer) finds
// the runs between escapes with bytes.IndexByte and calls Escape for each escape, as
// [AppendUnescaped] does: an iterator or a sink argument here would cost a call per run
// or make the caller's sink escape to the heap (measured: an iterator was about a third
// slower per chat message string, 2026-12-06).
func Escape(b []byte, i int) (r rune, next int, err error) {
	if i+1 >= len(b) || b[i] != '\\' {
		return 0, 0, errUnterminated
	}
	switch e := b[i+1]; e {
	case '"', '\\', '/':
		return rune(e), i + 2, nil
	case 'b':
		return '\b', i + 2, nil
	case 'f':
		return '\f', i + 2, nil
	case 'n':
		return '\n', i + 2, nil
	case 'r':
		return '\r', i + 2, nil
	case 't':
		return '\t', i + 2, nil
	case 'u':
		r, ok := hex4(b, i+2)
		if !ok {
			return 0, 0, syntaxErr(`bad \u escape`, i)
		}
		i += 6
		if !utf16.IsSurrogate(r) {
			return r, i, nil
		}
		r2 := rune(-1)
		if i+1 < len(b) && b[i] == '\\' && b[i+1] == 'u' {
			if v, ok := hex4(b, i+2); ok {
				r2 = v
			}
		}
		if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
			return dec, i + 6, nil
		}
		return utf8.RuneError, i, nil
	}
	return 0, 0, syntaxErr("bad escape", i)
}

// AppendUnescaped appends the text of the string literal starting at b[i] == '"' to
// dst and returns the extended slice and the index just past the closing quote. Escapes
// decode as [Escape] decodes them; other bytes are copied as they are: raw control
// characters, which JSON forbids, are not rejected, and invalid UTF-8 is not replaced
// (encoding/json replaces each invalid byte with U+FFFD; a caller that needs that does
// it on the result). Like [Skip], it suits input validated before, or untrusted input
// that is only hashed.
func AppendUnescaped(dst, b []byte, i int) ([]byte, int, error) {
	if i >= len(b) || b[i] != '"' {
		return dst, 0, errNotString
	}
	i++
	quote := -1 // index of the next quote at or after i, once found
	for {
		// The next quote or backslash, found with vectorized scans; each byte is
		// scanned at most twice.
		if quote < i {
			q := bytes.IndexByte(b[i:], '"')
			if q < 0 {
				return dst, 0, errUnterminated
			}
			quote = i + q
		}
		bs := bytes.IndexByte(b[i:quote], '\\')
		if bs < 0 {
			return append(dst, b[i:quote]...), quote + 1, nil
		}
		dst = append(dst, b[i:i+bs]...)
		r, next, err := Escape(b, i+bs)
		if err != nil {
			return dst, 0, err
		}
		dst = utf8.AppendRune(dst, r)
		i = next
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
