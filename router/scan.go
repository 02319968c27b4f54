package router

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// This file is a validating JSON scanner for the top level of a request body: it checks
// the whole body is one valid JSON object (RFC 8259 grammar, as encoding/json.Valid) and
// hands each top-level member's key and raw value to a callback, without decoding the
// values it is not asked about. Routing needs five fields of bodies that can be
// megabytes of chat history; encoding/json.Unmarshal into a struct costs four times
// json.Valid on such bodies because it copies every json.RawMessage (see
// BenchmarkParseRequest).

// maxDepth bounds nesting, as encoding/json does, so a hostile body cannot exhaust the
// stack.
const maxDepth = 10000

// scanObject validates body as a JSON object and calls member for each top-level member
// with the key's raw string literal (quotes included, escapes not decoded; escaped
// reports whether it has any) and the value's raw bytes.
func scanObject(body []byte, member func(key []byte, escaped bool, val []byte) error) error {
	i := skipWS(body, 0)
	if i >= len(body) || body[i] != '{' {
		return fmt.Errorf("%w: the body must be a JSON object", errInvalidJSON)
	}
	i = skipWS(body, i+1)
	if i < len(body) && body[i] == '}' {
		return checkEnd(body, i+1)
	}
	for {
		if i >= len(body) || body[i] != '"' {
			return fmt.Errorf("%w: expected a member name at offset %d", errInvalidJSON, i)
		}
		end, escaped, err := scanString(body, i)
		if err != nil {
			return err
		}
		key := body[i:end]
		i = skipWS(body, end)
		if i >= len(body) || body[i] != ':' {
			return fmt.Errorf("%w: expected ':' at offset %d", errInvalidJSON, i)
		}
		vs := skipWS(body, i+1)
		ve, err := scanValue(body, vs, 1)
		if err != nil {
			return err
		}
		if err := member(key, escaped, body[vs:ve]); err != nil {
			return err
		}
		i = skipWS(body, ve)
		if i >= len(body) {
			return fmt.Errorf("%w: unexpected end of body", errInvalidJSON)
		}
		switch body[i] {
		case ',':
			i = skipWS(body, i+1)
		case '}':
			return checkEnd(body, i+1)
		default:
			return fmt.Errorf("%w: expected ',' or '}' at offset %d", errInvalidJSON, i)
		}
	}
}

func checkEnd(b []byte, i int) error {
	if i = skipWS(b, i); i != len(b) {
		return fmt.Errorf("%w: data after the object at offset %d", errInvalidJSON, i)
	}
	return nil
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// scanValue returns the end of the JSON value starting at b[i].
func scanValue(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return 0, fmt.Errorf("%w: unexpected end of body", errInvalidJSON)
	}
	switch c := b[i]; {
	case c == '"':
		end, _, err := scanString(b, i)
		return end, err
	case c == '{' || c == '[':
		if depth >= maxDepth {
			return 0, fmt.Errorf("%w: nested too deeply", errInvalidJSON)
		}
		return scanContainer(b, i, depth+1)
	case c == 't':
		return scanLiteral(b, i, "true")
	case c == 'f':
		return scanLiteral(b, i, "false")
	case c == 'n':
		return scanLiteral(b, i, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		return scanNumber(b, i)
	}
	return 0, fmt.Errorf("%w: unexpected %q at offset %d", errInvalidJSON, b[i], i)
}

func scanContainer(b []byte, i, depth int) (int, error) {
	obj := b[i] == '{'
	closing := byte(']')
	if obj {
		closing = '}'
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == closing {
		return i + 1, nil
	}
	for {
		if obj {
			if i >= len(b) || b[i] != '"' {
				return 0, fmt.Errorf("%w: expected a member name at offset %d", errInvalidJSON, i)
			}
			end, _, err := scanString(b, i)
			if err != nil {
				return 0, err
			}
			i = skipWS(b, end)
			if i >= len(b) || b[i] != ':' {
				return 0, fmt.Errorf("%w: expected ':' at offset %d", errInvalidJSON, i)
			}
			i = skipWS(b, i+1)
		}
		end, err := scanValue(b, i, depth)
		if err != nil {
			return 0, err
		}
		i = skipWS(b, end)
		if i >= len(b) {
			return 0, fmt.Errorf("%w: unexpected end of body", errInvalidJSON)
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case closing:
			return i + 1, nil
		default:
			return 0, fmt.Errorf("%w: unexpected %q at offset %d", errInvalidJSON, b[i], i)
		}
	}
}

// scanString returns the end (after the closing quote) of the string starting at b[i],
// and whether it has escapes. Control characters must be escaped (RFC 8259 section 7).
func scanString(b []byte, i int) (end int, escaped bool, err error) {
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1, escaped, nil
		case c == '\\':
			escaped = true
			i++
			if i >= len(b) {
				break
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(b) || !isHex(b[i+1]) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) {
					return 0, false, fmt.Errorf("%w: bad \\u escape at offset %d", errInvalidJSON, i)
				}
				i += 4
			default:
				return 0, false, fmt.Errorf("%w: bad escape at offset %d", errInvalidJSON, i)
			}
		case c < 0x20:
			return 0, false, fmt.Errorf("%w: control character in a string at offset %d", errInvalidJSON, i)
		}
	}
	return 0, false, fmt.Errorf("%w: unterminated string", errInvalidJSON)
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func scanLiteral(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, fmt.Errorf("%w: bad literal at offset %d", errInvalidJSON, i)
	}
	return i + len(lit), nil
}

// scanNumber follows the JSON number grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func scanNumber(b []byte, i int) (int, error) {
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
		return 0, fmt.Errorf("%w: bad number at offset %d", errInvalidJSON, start)
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return 0, fmt.Errorf("%w: bad number at offset %d", errInvalidJSON, start)
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return 0, fmt.Errorf("%w: bad number at offset %d", errInvalidJSON, start)
		}
	}
	return i, nil
}

// stringValue decodes a raw JSON value into a string field as encoding/json would: a
// string literal (escapes decoded, invalid UTF-8 replaced by U+FFFD), or null (leaves
// ""). Any other type is an error naming the field.
func stringValue(raw []byte, field string) (string, error) {
	switch {
	case raw[0] == '"':
		if !hasEscape(raw) && utf8.Valid(raw) {
			return string(raw[1 : len(raw)-1]), nil
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("%w: %q: %w", errInvalidJSON, field, err)
		}
		return s, nil
	case string(raw) == "null":
		return "", nil
	}
	return "", fmt.Errorf("%w: %q must be a string", errInvalidJSON, field)
}

func hasEscape(raw []byte) bool {
	for _, c := range raw {
		if c == '\\' {
			return true
		}
	}
	return false
}

// boolValue decodes a raw JSON value into a bool field: true, false or null (false).
func boolValue(raw []byte, field string) (bool, error) {
	switch string(raw) {
	case "true":
		return true, nil
	case "false", "null":
		return false, nil
	}
	return false, fmt.Errorf("%w: %q must be a boolean", errInvalidJSON, field)
}
