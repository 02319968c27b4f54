package tokenize

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/kvroute/kvroute/router/jsonscan"
)

// The vocabulary and merges are most of a tokenizer.json (Gemma-3: 262k entries
// and 515k merges). Decoding them through encoding/json's reflection, and the
// merges through a per-element UnmarshalJSON, dominated Parse; they are read with
// router/jsonscan instead. Input was already validated by json.Unmarshal of the whole
// file.

// jsonString decodes the string literal lit (quotes included). Literals without
// escapes are copied directly.
func jsonString(lit []byte) (string, error) {
	if len(lit) < 2 || lit[0] != '"' {
		return "", fmt.Errorf("%w: expected a string", jsonscan.ErrSyntax)
	}
	inner := lit[1 : len(lit)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner), nil
	}
	if s, _, err := jsonscan.AppendUnescaped(nil, lit, 0); err == nil && utf8.Valid(s) {
		return string(s), nil
	}
	// Invalid UTF-8 among escapes: encoding/json's replacement of each bad byte.
	var out string
	if err := json.Unmarshal(lit, &out); err != nil {
		return "", err
	}
	return out, nil
}

// nextString returns the string literal starting at b[i] and the index past it.
func nextString(b []byte, i int) (string, int, error) {
	if i >= len(b) || b[i] != '"' {
		return "", 0, fmt.Errorf("%w: expected a string at offset %d", jsonscan.ErrSyntax, i)
	}
	end, err := jsonscan.Skip(b, i)
	if err != nil {
		return "", 0, err
	}
	s, err := jsonString(b[i:end])
	if err != nil {
		return "", 0, fmt.Errorf("string at offset %d: %w", i, err)
	}
	return s, end, nil
}

// parseVocab reads {"token": id, ...}.
func parseVocab(b []byte) (map[string]uint32, error) {
	i := jsonscan.SkipWS(b, 0)
	if i < len(b) && b[i] == 'n' {
		return map[string]uint32{}, nil
	}
	it, err := jsonscan.NewIter(b, i)
	if err != nil {
		return nil, fmt.Errorf("vocab: %w", err)
	}
	m := make(map[string]uint32, len(b)/16)
	for {
		key, vs, ve, ok, err := it.Next()
		if err != nil {
			return nil, fmt.Errorf("vocab: %w", err)
		}
		if !ok {
			return m, nil
		}
		k, err := jsonString(key)
		if err != nil {
			return nil, fmt.Errorf("vocab: key at offset %d: %w", vs, err)
		}
		id, err := jsonscan.Uint32(b[vs:ve])
		if err != nil {
			return nil, fmt.Errorf("vocab: id at offset %d: %w", vs, err)
		}
		m[k] = id
	}
}

// parseMerges reads ["a b", ...] or [["a", "b"], ...].
func parseMerges(b []byte) ([]mergeJSON, error) {
	i := jsonscan.SkipWS(b, 0)
	if i >= len(b) || b[i] == 'n' {
		return nil, nil
	}
	if b[i] != '[' {
		return nil, fmt.Errorf("merges: %w: expected '['", jsonscan.ErrSyntax)
	}
	var out []mergeJSON
	for i = jsonscan.SkipWS(b, i+1); i >= len(b) || b[i] != ']'; {
		var m mergeJSON
		var err error
		if i < len(b) && b[i] == '[' {
			m, i, err = mergePair(b, i)
			if err != nil {
				return nil, fmt.Errorf("merge %d: %w", len(out), err)
			}
		} else {
			var str string
			if str, i, err = nextString(b, i); err != nil {
				return nil, fmt.Errorf("merge %d: %w", len(out), err)
			}
			sp := strings.IndexByte(str, ' ')
			if sp < 0 {
				return nil, fmt.Errorf("merge %d %q has no space", len(out), str)
			}
			m = mergeJSON{Left: str[:sp], Right: str[sp+1:]}
		}
		out = append(out, m)
		if i = jsonscan.SkipWS(b, i); i < len(b) && b[i] == ',' {
			i = jsonscan.SkipWS(b, i+1)
		}
	}
	return out, nil
}

// mergePair reads ["a", "b"] at b[i] and returns the index past it.
func mergePair(b []byte, i int) (mergeJSON, int, error) {
	l, i, err := nextString(b, jsonscan.SkipWS(b, i+1))
	if err != nil {
		return mergeJSON{}, 0, err
	}
	if i = jsonscan.SkipWS(b, i); i >= len(b) || b[i] != ',' {
		return mergeJSON{}, 0, fmt.Errorf("%w: expected ','", jsonscan.ErrSyntax)
	}
	r, i, err := nextString(b, jsonscan.SkipWS(b, i+1))
	if err != nil {
		return mergeJSON{}, 0, err
	}
	if i = jsonscan.SkipWS(b, i); i >= len(b) || b[i] != ']' {
		return mergeJSON{}, 0, fmt.Errorf("want 2 parts: %w: expected ']'", jsonscan.ErrSyntax)
	}
	return mergeJSON{Left: l, Right: r}, i + 1, nil
}
