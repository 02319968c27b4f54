package tokenize

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// The vocabulary and merges are most of a tokenizer.json (Gemma-3: 262k entries
// and 515k merges). Decoding them through encoding/json's reflection, and the
// merges through a per-element UnmarshalJSON, dominated Parse; this scanner reads
// them directly. Input was already validated by json.Unmarshal of the whole file.

type jsonScanner struct {
	b []byte
	i int
}

func (s *jsonScanner) ws() {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\n' || s.b[s.i] == '\r' || s.b[s.i] == '\t') {
		s.i++
	}
}

func (s *jsonScanner) expect(c byte) error {
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != c {
		return fmt.Errorf("offset %d: expected %q", s.i, c)
	}
	s.i++
	return nil
}

// peek returns the next non-space byte, or 0 at the end.
func (s *jsonScanner) peek() byte {
	s.ws()
	if s.i >= len(s.b) {
		return 0
	}
	return s.b[s.i]
}

// str reads a JSON string. Strings without escapes are copied directly.
func (s *jsonScanner) str() (string, error) {
	if err := s.expect('"'); err != nil {
		return "", err
	}
	start := s.i
	escaped := false
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '\\':
			escaped = true
			s.i += 2
			continue
		case '"':
			raw := s.b[start:s.i]
			s.i++
			if !escaped {
				return string(raw), nil
			}
			var out string
			if err := json.Unmarshal(s.b[start-1:s.i], &out); err != nil {
				return "", fmt.Errorf("string at offset %d: %w", start, err)
			}
			return out, nil
		}
		s.i++
	}
	return "", errors.New("unterminated string")
}

func (s *jsonScanner) uint() (uint32, error) {
	s.ws()
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	n, err := strconv.ParseUint(string(s.b[start:s.i]), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("id at offset %d: %w", start, err)
	}
	return uint32(n), nil
}

// parseVocab reads {"token": id, ...}.
func parseVocab(b []byte) (map[string]uint32, error) {
	s := &jsonScanner{b: b}
	if s.peek() == 'n' {
		return map[string]uint32{}, nil
	}
	if err := s.expect('{'); err != nil {
		return nil, fmt.Errorf("vocab: %w", err)
	}
	m := make(map[string]uint32, len(b)/16)
	for s.peek() != '}' {
		k, err := s.str()
		if err != nil {
			return nil, fmt.Errorf("vocab: %w", err)
		}
		if err := s.expect(':'); err != nil {
			return nil, fmt.Errorf("vocab: %w", err)
		}
		id, err := s.uint()
		if err != nil {
			return nil, fmt.Errorf("vocab: %w", err)
		}
		m[k] = id
		if s.peek() == ',' {
			s.i++
		}
	}
	return m, nil
}

// parseMerges reads ["a b", ...] or [["a", "b"], ...].
func parseMerges(b []byte) ([]mergeJSON, error) {
	s := &jsonScanner{b: b}
	if len(b) == 0 || s.peek() == 'n' {
		return nil, nil
	}
	if err := s.expect('['); err != nil {
		return nil, fmt.Errorf("merges: %w", err)
	}
	var out []mergeJSON
	for s.peek() != ']' {
		var m mergeJSON
		if s.peek() == '[' {
			s.i++
			l, err := s.str()
			if err != nil {
				return nil, fmt.Errorf("merge %d: %w", len(out), err)
			}
			if err := s.expect(','); err != nil {
				return nil, fmt.Errorf("merge %d: %w", len(out), err)
			}
			r, err := s.str()
			if err != nil {
				return nil, fmt.Errorf("merge %d: %w", len(out), err)
			}
			if err := s.expect(']'); err != nil {
				return nil, fmt.Errorf("merge %d: want 2 parts: %w", len(out), err)
			}
			m = mergeJSON{Left: l, Right: r}
		} else {
			str, err := s.str()
			if err != nil {
				return nil, fmt.Errorf("merge %d: %w", len(out), err)
			}
			sp := strings.IndexByte(str, ' ')
			if sp < 0 {
				return nil, fmt.Errorf("merge %d %q has no space", len(out), str)
			}
			m = mergeJSON{Left: str[:sp], Right: str[sp+1:]}
		}
		out = append(out, m)
		if s.peek() == ',' {
			s.i++
		}
	}
	return out, nil
}
