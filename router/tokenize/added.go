package tokenize

import (
	"unicode"
	"unicode/utf8"
)

// addedToken is one entry of tokenizer.json's added_tokens.
type addedToken struct {
	id                         uint32
	content                    string
	special                    bool
	singleWord, lstrip, rstrip bool
}

// addedMatcher finds added tokens in text with leftmost-longest semantics, as the
// Rust crate's Aho-Corasick automaton (MatchKind::LeftmostLongest) does. It is a
// byte trie: node 0 is the root, edges live in one map keyed by node and byte.
type addedMatcher struct {
	tokens []addedToken
	first  [256]bool
	edges  map[uint64]int32
	term   []int32 // per node: index into tokens, or -1
}

func newAddedMatcher(tokens []addedToken) *addedMatcher {
	m := &addedMatcher{tokens: tokens, edges: map[uint64]int32{}, term: []int32{-1}}
	for ti, t := range tokens {
		if t.content == "" {
			continue
		}
		m.first[t.content[0]] = true
		n := int32(0)
		for i := 0; i < len(t.content); i++ {
			k := uint64(n)<<8 | uint64(t.content[i])
			next, ok := m.edges[k]
			if !ok {
				next = int32(len(m.term))
				m.term = append(m.term, -1)
				m.edges[k] = next
			}
			n = next
		}
		if m.term[n] < 0 {
			m.term[n] = int32(ti) // first definition wins for duplicate contents
		}
	}
	return m
}

// longestAt returns the token index and end of the longest token starting at i,
// and the end of the bytes it read.
func (m *addedMatcher) longestAt(s string, i int) (int, int, int) {
	best, end := -1, 0
	n := int32(0)
	j := i
	for ; j < len(s); j++ {
		next, ok := m.edges[uint64(n)<<8|uint64(s[j])]
		if !ok {
			break
		}
		n = next
		if t := m.term[n]; t >= 0 {
			best, end = int(t), j+1
		}
	}
	return best, end, min(j+1, len(s))
}

// segment is a run of input text: either an added token (tok >= 0) or plain text.
type segment struct {
	s     string
	tok   int32 // index into matcher tokens, or -1
	start bool  // begins at offset 0 of the input
}

// split appends the segments of s to dst. Plain segments keep their order and are
// never empty.
//
// When cp is not nil it is called after each added token with the token's end and
// the end of the bytes the scan has read so far: the segments up to that token are
// a function of s[:read] alone (see PrefixCache).
func (m *addedMatcher) split(dst []segment, s string, atStart bool, cp func(end, read int)) []segment {
	if m == nil || len(m.tokens) == 0 {
		if s != "" {
			dst = append(dst, segment{s: s, tok: -1, start: atStart})
		}
		return dst
	}
	from := 0 // start of the pending plain text
	read := 0 // end of the bytes examined so far
	for i := 0; i < len(s); {
		if !m.first[s[i]] {
			i++
			continue
		}
		ti, stop, r := m.longestAt(s, i)
		read = max(read, r)
		if ti < 0 {
			i++
			continue
		}
		t := &m.tokens[ti]
		start := i
		if t.singleWord && (endsWithWord(s[:start]) || startsWithWord(s[stop:])) {
			i = stop
			continue
		}
		if t.lstrip {
			for start > from {
				r, w := utf8.DecodeLastRuneInString(s[:start])
				if !unicode.IsSpace(r) {
					break
				}
				start -= w
			}
		}
		if t.rstrip {
			for stop < len(s) {
				r, w := utf8.DecodeRuneInString(s[stop:])
				read = max(read, stop+w)
				if !unicode.IsSpace(r) {
					break
				}
				stop += w
			}
		}
		if start > from {
			dst = append(dst, segment{s: s[from:start], tok: -1, start: atStart && from == 0})
		}
		dst = append(dst, segment{s: s[start:stop], tok: int32(ti), start: atStart && start == 0})
		from, i = stop, stop
		if cp != nil {
			cp(stop, max(read, stop))
		}
	}
	if from < len(s) {
		dst = append(dst, segment{s: s[from:], tok: -1, start: atStart && from == 0})
	}
	return dst
}

func isWordRune(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_' || unicode.Is(unicode.Mn, r)
}

func endsWithWord(s string) bool {
	r, _ := utf8.DecodeLastRuneInString(s)
	return s != "" && isWordRune(r)
}

func startsWithWord(s string) bool {
	r, _ := utf8.DecodeRuneInString(s)
	return s != "" && isWordRune(r)
}
