package tokenize

import (
	"unicode"
	"unicode/utf8"
)

// The pre-tokenizer patterns of GPT-2, Llama-3 and Qwen2/3 use `\s+(?!\S)`, a negative
// lookahead that Go's regexp rejects. scanPattern matches them by hand: each match
// function below is the pattern's alternation evaluated left to right with the
// backtracking a Perl-style engine (Oniguruma, which the Rust tokenizers crate uses)
// would do. scan_test.go checks every scanner against regexp2 on the literal pattern.

// Known Split patterns, byte for byte as they appear in tokenizer.json.
const (
	patGPT2   = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
	patLlama3 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	patQwen2  = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

// scanPattern is a hand-written matcher for one of the known patterns.
type scanPattern struct {
	gpt2      bool // GPT-2 style alternation; otherwise Llama-3 style
	maxDigits int  // Llama-3 style only: the n of \p{N}{1,n}
}

// scannerFor returns the hand-written scanner for pattern, or nil when the pattern
// is not one of the known ones.
func scannerFor(pattern string) *scanPattern {
	switch pattern {
	case patGPT2:
		return &scanPattern{gpt2: true}
	case patLlama3:
		return &scanPattern{maxDigits: 3}
	case patQwen2:
		return &scanPattern{maxDigits: 1}
	}
	return nil
}

// class bits of a rune as the patterns see it.
const (
	clLetter = 1 << iota
	clNumber
	clSpace
	clCRLF
)

var asciiClass [128]uint8

func init() {
	for r := 0; r < 128; r++ {
		var c uint8
		switch {
		case unicode.IsLetter(rune(r)):
			c = clLetter
		case unicode.IsNumber(rune(r)):
			c = clNumber
		case isSpace(rune(r)):
			c = clSpace
		}
		if r == '\r' || r == '\n' {
			c |= clCRLF
		}
		asciiClass[r] = c
	}
}

// isSpace is Oniguruma's Unicode \s: the White_Space property.
func isSpace(r rune) bool { return unicode.IsSpace(r) }

// classAt decodes the rune at s[i:] and returns its class bits and width. Invalid
// UTF-8 decodes as one byte of class "other".
func classAt(s string, i int) (uint8, int) {
	b := s[i]
	if b < utf8.RuneSelf {
		return asciiClass[b], 1
	}
	r, w := utf8.DecodeRuneInString(s[i:])
	switch {
	case unicode.IsLetter(r):
		return clLetter, w
	case unicode.IsNumber(r):
		return clNumber, w
	case isSpace(r):
		return clSpace, w
	}
	return 0, w
}

// run returns the end of the run of runes starting at i whose class has any of bits.
func run(s string, i int, bits uint8) int {
	for i < len(s) {
		c, w := classAt(s, i)
		if c&bits == 0 {
			return i
		}
		i += w
	}
	return i
}

// runOther returns the end of the run of [^\s\p{L}\p{N}] starting at i.
func runOther(s string, i int) int {
	for i < len(s) {
		c, w := classAt(s, i)
		if c&(clLetter|clNumber|clSpace) != 0 {
			return i
		}
		i += w
	}
	return i
}

// contraction returns the length of 's|'t|'re|'ve|'m|'ll|'d matched at s[i:] (i is
// just after the apostrophe), 0 if none. ci folds case as Oniguruma's (?i) does,
// which includes U+017F LATIN SMALL LETTER LONG S for s.
func contraction(s string, i int, ci bool) int {
	if i >= len(s) {
		return 0
	}
	lower := func(j int) (byte, int) {
		if j >= len(s) {
			return 0, 0
		}
		b := s[j]
		if ci {
			if b >= 'A' && b <= 'Z' {
				return b + 'a' - 'A', 1
			}
			if b == 0xC5 && j+1 < len(s) && s[j+1] == 0xBF { // U+017F
				return 's', 2
			}
		}
		return b, 1
	}
	c, w := lower(i)
	switch c {
	case 's', 't', 'm', 'd':
		return w
	case 'r', 'v':
		if c2, w2 := lower(i + w); c2 == 'e' {
			return w + w2
		}
	case 'l':
		if c2, w2 := lower(i + w); c2 == 'l' {
			return w + w2
		}
	}
	return 0
}

// match returns the end of the pattern's match starting at i (i < len(s)). Every
// rune is a letter, a number, a space or "other", and each has an alternative, so
// the result is always > i and matches tile the input.
func (p *scanPattern) match(s string, i int) int {
	if s[i] == '\'' {
		if n := contraction(s, i+1, !p.gpt2); n > 0 {
			return i + 1 + n
		}
	}
	c, w := classAt(s, i)
	if p.gpt2 {
		j := i
		if s[i] == ' ' && i+1 < len(s) {
			c2, w2 := classAt(s, i+1)
			if c2&clSpace == 0 {
				j, c, w = i+1, c2, w2
			}
		}
		switch {
		case c&clLetter != 0:
			return run(s, j+w, clLetter)
		case c&clNumber != 0:
			return run(s, j+w, clNumber)
		case c&clSpace == 0:
			return runOther(s, j+w)
		}
		return p.spaces(s, i, false)
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if c&clLetter != 0 {
		return run(s, i+w, clLetter)
	}
	if c&(clNumber|clCRLF) == 0 && i+w < len(s) {
		if c2, w2 := classAt(s, i+w); c2&clLetter != 0 {
			return run(s, i+w+w2, clLetter)
		}
	}
	// \p{N}{1,n}
	if c&clNumber != 0 {
		j := i + w
		for n := 1; n < p.maxDigits && j < len(s); n++ {
			c2, w2 := classAt(s, j)
			if c2&clNumber == 0 {
				break
			}
			j += w2
		}
		return j
	}
	// ` ?[^\s\p{L}\p{N}]+[\r\n]*`
	j := -1
	if c&clSpace == 0 {
		j = runOther(s, i+w)
	} else if s[i] == ' ' && i+1 < len(s) {
		if c2, w2 := classAt(s, i+1); c2&(clLetter|clNumber|clSpace) == 0 {
			j = runOther(s, i+1+w2)
		}
	}
	if j >= 0 {
		for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
			j++
		}
		return j
	}
	return p.spaces(s, i, true)
}

// spaces matches the whitespace alternatives at i, where s[i] is a space:
// `\s*[\r\n]+` (when crlf), then `\s+(?!\S)`, then `\s+`.
func (p *scanPattern) spaces(s string, i int, crlf bool) int {
	j, last, lastNL := i, i, -1
	for j < len(s) {
		c, w := classAt(s, j)
		if c&clSpace == 0 {
			break
		}
		if c&clCRLF != 0 {
			lastNL = j
		}
		last = j
		j += w
	}
	if crlf && lastNL >= 0 {
		return lastNL + 1
	}
	if j == len(s) || last == i {
		return j
	}
	return last
}
