package tokenize

import (
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// piece is one pre-token: a substring the model encodes on its own.
type piece struct {
	s string
	// start is true when the piece begins at offset 0 of the input (Metaspace's
	// prepend_scheme "first" depends on it).
	start bool
}

// preTokenizer splits each piece further. It appends to dst and returns it.
type preTokenizer interface {
	split(dst []piece, in []piece) []piece
}

// finder reports the matches of a pattern in s, in order, as byte offsets.
type finder interface {
	find(s string, dst [][2]int) [][2]int
}

func (p *scanPattern) find(s string, dst [][2]int) [][2]int {
	for i := 0; i < len(s); {
		e := p.match(s, i)
		dst = append(dst, [2]int{i, e})
		i = e
	}
	return dst
}

// literalFinder matches a fixed string.
type literalFinder string

func (l literalFinder) find(s string, dst [][2]int) [][2]int {
	if l == "" {
		return dst
	}
	for i := 0; ; {
		k := strings.Index(s[i:], string(l))
		if k < 0 {
			return dst
		}
		dst = append(dst, [2]int{i + k, i + k + len(l)})
		i += k + len(l)
	}
}

// regexFinder matches with regexp2, a backtracking engine with lookaround. Its
// indices are in runes, converted here to bytes.
type regexFinder struct{ re *regexp2.Regexp }

// regexTimeout bounds one regexp2 match so hostile input cannot hang a request.
const regexTimeout = 2 * time.Second

func newRegexFinder(pattern string) (*regexFinder, error) {
	re, err := regexp2.Compile(pattern, regexp2.None)
	if err != nil {
		return nil, fmt.Errorf("compile split pattern %q: %w", pattern, err)
	}
	re.MatchTimeout = regexTimeout
	return &regexFinder{re: re}, nil
}

func (r *regexFinder) find(s string, dst [][2]int) [][2]int {
	runes := []rune(s)
	// byteAt[k] is the byte offset of rune k; invalid UTF-8 decodes as U+FFFD of
	// width 1, as []rune does.
	byteAt := make([]int, len(runes)+1)
	for i, k := 0, 0; i < len(s); k++ {
		_, w := utf8.DecodeRuneInString(s[i:])
		byteAt[k] = i
		i += w
	}
	byteAt[len(runes)] = len(s)
	m, err := r.re.FindRunesMatch(runes)
	for err == nil && m != nil {
		if m.Length > 0 {
			dst = append(dst, [2]int{byteAt[m.Index], byteAt[m.Index+m.Length]})
		}
		m, err = r.re.FindNextMatch(m)
	}
	return dst
}

// digitsFinder matches runs of ASCII digits, or single digits.
type digitsFinder struct{ individual bool }

func (d digitsFinder) find(s string, dst [][2]int) [][2]int {
	for i := 0; i < len(s); {
		if s[i] < '0' || s[i] > '9' {
			i++
			continue
		}
		j := i + 1
		for !d.individual && j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		dst = append(dst, [2]int{i, j})
		i = j
	}
	return dst
}

type behavior uint8

const (
	bIsolated behavior = iota
	bRemoved
	bMergedWithPrevious
	bMergedWithNext
	bContiguous
)

func parseBehavior(s string) (behavior, error) {
	switch s {
	case "Isolated":
		return bIsolated, nil
	case "Removed":
		return bRemoved, nil
	case "MergedWithPrevious":
		return bMergedWithPrevious, nil
	case "MergedWithNext":
		return bMergedWithNext, nil
	case "Contiguous":
		return bContiguous, nil
	}
	return 0, fmt.Errorf("unknown split behavior %q", s)
}

// splitPre is the Split pre-tokenizer (and Digits, which is a Split on digits).
type splitPre struct {
	f        finder
	behavior behavior
	invert   bool
}

type span struct {
	start, end int
	match      bool
}

var (
	spanPool  = sync.Pool{New: func() any { return new([]span) }}
	matchPool = sync.Pool{New: func() any { return new([][2]int) }}
)

func (p *splitPre) split(dst []piece, in []piece) []piece {
	sp := spanPool.Get().(*[]span)
	defer spanPool.Put(sp)
	spans := (*sp)[:0]
	mp := matchPool.Get().(*[][2]int)
	defer matchPool.Put(mp)
	for _, pc := range in {
		spans = spans[:0]
		prev := 0
		*mp = p.f.find(pc.s, (*mp)[:0])
		for _, m := range *mp {
			if m[0] > prev {
				spans = append(spans, span{prev, m[0], p.invert})
			}
			spans = append(spans, span{m[0], m[1], !p.invert})
			prev = m[1]
		}
		if prev < len(pc.s) {
			spans = append(spans, span{prev, len(pc.s), p.invert})
		}
		spans = applyBehavior(spans, p.behavior)
		for _, s := range spans {
			if s.end > s.start {
				dst = append(dst, piece{s: pc.s[s.start:s.end], start: pc.start && s.start == 0})
			}
		}
	}
	*sp = spans[:0]
	return dst
}

// applyBehavior merges or drops spans as the Rust tokenizers crate's
// SplitDelimiterBehavior does; the returned spans' match field means "drop".
func applyBehavior(spans []span, b behavior) []span {
	switch b {
	case bIsolated:
		for i := range spans {
			spans[i].match = false
		}
		return spans
	case bRemoved:
		return spans
	case bMergedWithPrevious:
		out, prevMatch := spans[:0], false
		for _, sp := range spans {
			if sp.match && !prevMatch && len(out) > 0 {
				out[len(out)-1].end = sp.end
			} else {
				out = append(out, span{sp.start, sp.end, false})
			}
			prevMatch = sp.match
		}
		return out
	case bMergedWithNext:
		out, prevMatch := make([]span, 0, len(spans)), false
		for i := len(spans) - 1; i >= 0; i-- {
			sp := spans[i]
			if sp.match && !prevMatch && len(out) > 0 {
				out[len(out)-1].start = sp.start
			} else {
				out = append(out, span{sp.start, sp.end, false})
			}
			prevMatch = sp.match
		}
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
		return out
	default: // bContiguous
		out, prevMatch := spans[:0], false
		for i, sp := range spans {
			if i > 0 && sp.match == prevMatch {
				out[len(out)-1].end = sp.end
			} else {
				out = append(out, span{sp.start, sp.end, false})
			}
			prevMatch = sp.match
		}
		return out
	}
}

// byteLevelPre is the ByteLevel pre-tokenizer: an optional prefix space and the
// GPT-2 split. The byte-to-unicode mapping itself is done by the model, which works
// on raw bytes (see bpe.go).
type byteLevelPre struct {
	addPrefixSpace bool
	split2         *splitPre // nil when use_regex is false
}

func (p *byteLevelPre) split(dst []piece, in []piece) []piece {
	if p.addPrefixSpace {
		tmp := make([]piece, len(in))
		for i, pc := range in {
			tmp[i] = pc
			if !strings.HasPrefix(pc.s, " ") {
				tmp[i].s = " " + pc.s
			}
		}
		in = tmp
	}
	if p.split2 == nil {
		return append(dst, in...)
	}
	return p.split2.split(dst, in)
}

// metaspacePre replaces spaces with the replacement character (▁), prepends it
// according to the scheme, and splits before each replacement.
type metaspacePre struct {
	replacement string
	scheme      string // "always", "first" or "never"
	split2      bool
}

func (p *metaspacePre) split(dst []piece, in []piece) []piece {
	for _, pc := range in {
		s := strings.ReplaceAll(pc.s, " ", p.replacement)
		if !strings.HasPrefix(s, p.replacement) && (p.scheme == "always" || (p.scheme == "first" && pc.start)) {
			s = p.replacement + s
		}
		if !p.split2 {
			dst = append(dst, piece{s: s, start: pc.start})
			continue
		}
		sp := splitPre{f: literalFinder(p.replacement), behavior: bMergedWithNext}
		dst = sp.split(dst, []piece{{s: s, start: pc.start}})
	}
	return dst
}

// seqPre runs pre-tokenizers in order.
type seqPre []preTokenizer

var seqPool = sync.Pool{New: func() any { return new([2][]piece) }}

func (q seqPre) split(dst []piece, in []piece) []piece {
	// Intermediate stages write into two pooled buffers in turn: stage i reads the
	// buffer stage i-1 wrote.
	bufs := seqPool.Get().(*[2][]piece)
	defer seqPool.Put(bufs)
	cur := in
	for i, p := range q {
		if i == len(q)-1 {
			return p.split(dst, cur)
		}
		nb := p.split(bufs[i%2][:0], cur)
		bufs[i%2] = nb
		cur = nb
	}
	return append(dst, cur...)
}

// buildPreTokenizer decodes a pre_tokenizer component. byteLevel is set when a
// ByteLevel pre-tokenizer is present.
func buildPreTokenizer(c component, byteLevel *bool) (preTokenizer, error) {
	switch c.Type {
	case "Sequence":
		var q seqPre
		for _, raw := range c.PreTokenizers {
			sub, err := decodeComponent(raw)
			if err != nil {
				return nil, fmt.Errorf("pre_tokenizer sequence: %w", err)
			}
			p, err := buildPreTokenizer(sub, byteLevel)
			if err != nil {
				return nil, err
			}
			if bl, ok := p.(*byteLevelPre); ok && !bl.addPrefixSpace && bl.split2 == nil {
				continue // splits nothing: the byte mapping is the model's
			}
			q = append(q, p)
		}
		if len(q) == 1 {
			return q[0], nil
		}
		return q, nil
	case "Split":
		if c.Pattern == nil {
			return nil, fmt.Errorf("split pre_tokenizer without pattern")
		}
		b, err := parseBehavior(c.Behavior)
		if err != nil {
			return nil, err
		}
		f, err := buildFinder(*c.Pattern)
		if err != nil {
			return nil, err
		}
		return &splitPre{f: f, behavior: b, invert: c.Invert}, nil
	case "ByteLevel":
		*byteLevel = true
		p := &byteLevelPre{addPrefixSpace: c.AddPrefixSpace == nil || *c.AddPrefixSpace}
		if c.UseRegex == nil || *c.UseRegex {
			p.split2 = &splitPre{f: scannerFor(patGPT2), behavior: bIsolated}
		}
		return p, nil
	case "Metaspace":
		p := &metaspacePre{replacement: c.Replacement, scheme: c.PrependScheme, split2: c.Split == nil || *c.Split}
		if p.replacement == "" {
			p.replacement = "▁"
		}
		if p.scheme == "" {
			p.scheme = "always"
			if c.AddPrefixSpace != nil && !*c.AddPrefixSpace {
				p.scheme = "never"
			}
		}
		return p, nil
	case "Digits":
		return &splitPre{f: digitsFinder{individual: c.IndividualDigits}, behavior: bIsolated}, nil
	}
	return nil, fmt.Errorf("unsupported pre_tokenizer %q", c.Type)
}

func buildFinder(p patternJSON) (finder, error) {
	switch {
	case p.String != nil:
		return literalFinder(*p.String), nil
	case p.Regex != nil:
		if f := finderFor(*p.Regex); f != nil {
			return f, nil
		}
		return newRegexFinder(*p.Regex)
	}
	return nil, fmt.Errorf("pattern with neither String nor Regex")
}
