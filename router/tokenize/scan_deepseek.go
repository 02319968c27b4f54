package tokenize

import (
	"unicode"
	"unicode/utf8"
)

// DeepSeek-V3's pre-tokenizer is a sequence of three Splits. Unlike the GPT-2
// family patterns, the third does not tile its input (digits and some symbols match
// no alternative and fall into the gaps), so these finders search: at each position
// they try the alternatives in order and move one character on when none matches.
const (
	patDSDigits = `\p{N}{1,3}`
	patDSCJK    = "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
	patDSMain   = "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"
)

// finderFor returns a hand-written finder for a known pattern, or nil.
func finderFor(pattern string) finder {
	if s := scannerFor(pattern); s != nil {
		return s
	}
	switch pattern {
	case patDSDigits:
		return numberRunFinder{max: 3}
	case patDSCJK:
		return cjkFinder{}
	case patDSMain:
		return deepseekFinder{}
	}
	return nil
}

// numberRunFinder matches \p{N}{1,max}.
type numberRunFinder struct{ max int }

func (f numberRunFinder) find(s string, dst [][2]int) [][2]int {
	for i := 0; i < len(s); {
		c, w := classAt(s, i)
		if c&clNumber == 0 {
			i += w
			continue
		}
		j := i + w
		for n := 1; n < f.max && j < len(s); n++ {
			c2, w2 := classAt(s, j)
			if c2&clNumber == 0 {
				break
			}
			j += w2
		}
		dst = append(dst, [2]int{i, j})
		i = j
	}
	return dst
}

// cjkFinder matches runs of CJK ideographs U+4E00..U+9FA5, hiragana and katakana.
type cjkFinder struct{}

func isCJK(r rune) bool {
	return (r >= 0x4e00 && r <= 0x9fa5) || (r >= 0x3040 && r <= 0x30ff)
}

func (cjkFinder) find(s string, dst [][2]int) [][2]int {
	for i := 0; i < len(s); {
		r, w := utf8.DecodeRuneInString(s[i:])
		if !isCJK(r) {
			i += w
			continue
		}
		j := i + w
		for j < len(s) {
			r2, w2 := utf8.DecodeRuneInString(s[j:])
			if !isCJK(r2) {
				break
			}
			j += w2
		}
		dst = append(dst, [2]int{i, j})
		i = j
	}
	return dst
}

// Rune classes of the DeepSeek pattern.
const (
	dsL = 1 << iota
	dsM
	dsP
	dsS
	dsSpace
	dsCRLF
	dsASCIIPunct  // the class [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]
	dsASCIILetter // [A-Za-z]
)

var dsASCII [128]uint8

func init() {
	for r := rune(0); r < 128; r++ {
		dsASCII[r] = dsClassSlow(r)
	}
}

func dsClassSlow(r rune) uint8 {
	var c uint8
	switch {
	case isSpace(r):
		c = dsSpace
	case unicode.IsLetter(r):
		c = dsL
	case unicode.Is(unicode.M, r):
		c = dsM
	case unicode.IsPunct(r):
		c = dsP
	case unicode.IsSymbol(r):
		c = dsS
	}
	if r == '\r' || r == '\n' {
		c |= dsCRLF
	}
	letter := (r >= 'A' && r <= 'Z') || (r >= 'a' && r <= 'z')
	digit := r >= '0' && r <= '9'
	if r > ' ' && r < 127 && !letter && !digit {
		c |= dsASCIIPunct
	}
	if letter {
		c |= dsASCIILetter
	}
	return c
}

func dsClassAt(s string, i int) (uint8, int) {
	if b := s[i]; b < utf8.RuneSelf {
		return dsASCII[b], 1
	}
	r, w := utf8.DecodeRuneInString(s[i:])
	return dsClassSlow(r), w
}

func dsRun(s string, i int, bits uint8) int {
	for i < len(s) {
		c, w := dsClassAt(s, i)
		if c&bits == 0 {
			return i
		}
		i += w
	}
	return i
}

// deepseekFinder matches patDSMain.
type deepseekFinder struct{}

func (deepseekFinder) find(s string, dst [][2]int) [][2]int {
	for i := 0; i < len(s); {
		c, w := dsClassAt(s, i)
		end := dsMatch(s, i, c, w)
		if end < 0 {
			i += w
			continue
		}
		dst = append(dst, [2]int{i, end})
		i = end
	}
	return dst
}

// dsMatch returns the end of patDSMain's match at i, or -1.
func dsMatch(s string, i int, c uint8, w int) int {
	var next uint8
	var nw int
	if i+w < len(s) {
		next, nw = dsClassAt(s, i+w)
	}
	// [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+
	if c&dsASCIIPunct != 0 && next&dsASCIILetter != 0 {
		return dsRun(s, i+w+nw, dsASCIILetter)
	}
	// [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
	if c&(dsCRLF|dsL|dsP|dsS) == 0 && next&(dsL|dsM) != 0 {
		return dsRun(s, i+w+nw, dsL|dsM)
	}
	if c&(dsL|dsM) != 0 {
		return dsRun(s, i+w, dsL|dsM)
	}
	// ` ?[\p{P}\p{S}]+[\r\n]*`
	j := -1
	if c&(dsP|dsS) != 0 {
		j = dsRun(s, i+w, dsP|dsS)
	} else if s[i] == ' ' && next&(dsP|dsS) != 0 {
		j = dsRun(s, i+1+nw, dsP|dsS)
	}
	if j >= 0 {
		for j < len(s) && (s[j] == '\r' || s[j] == '\n') {
			j++
		}
		return j
	}
	if c&dsSpace == 0 {
		return -1
	}
	// \s*[\r\n]+, \s+(?!\S), \s+
	k, last, lastNL := i, i, -1
	for k < len(s) {
		c2, w2 := dsClassAt(s, k)
		if c2&dsSpace == 0 {
			break
		}
		if c2&dsCRLF != 0 {
			lastNL = k
		}
		last = k
		k += w2
	}
	if lastNL >= 0 {
		return lastNL + 1
	}
	if k == len(s) || last == i {
		return k
	}
	return last
}
