package jinja

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/kvroute/kvroute/router/jsonscan"
)

// Value is a template value: nil (None), Undefined, bool, int64, float64, string,
// []Value (list or tuple), *Dict, *Namespace, Func or *macro.
type Value = any

// Undefined is the value of a missing variable, attribute or key. It prints as "",
// is false, and `is defined` tells it apart.
type Undefined struct{}

// Func is a callable value: a global function or a bound method.
type Func func(args []Value, kw *Dict) (Value, error)

// Dict is an insertion-ordered mapping with string keys, like a Python dict built
// from JSON. The zero value is empty and usable.
//
// Keys and values are kept in insertion order, and a key is found by a scan of the keys
// until the dict has more than smallDict of them, then through an index map. Chat
// messages have two to five keys and templates read them on every loop iteration
// (message.role, message.content): the attribute lookups, a map access each, were 15%
// of a Qwen3 render at turn 40 of a conversation (CPU profile of BenchmarkDecision,
// 2026-12-07); a FromJSON message also no longer builds a map.
type Dict struct {
	keys []string
	vals []Value
	idx  map[string]int // key -> position, once there are more than smallDict keys
}

// smallDict is the most keys a Dict finds by scanning.
const smallDict = 8

// NewDict returns an empty Dict.
func NewDict() *Dict { return &Dict{} }

// find returns k's position, or -1.
func (d *Dict) find(k string) int {
	if d.idx != nil {
		if i, ok := d.idx[k]; ok {
			return i
		}
		return -1
	}
	for i, kk := range d.keys {
		if kk == k {
			return i
		}
	}
	return -1
}

// Set sets k to v, keeping k's position if it exists.
func (d *Dict) Set(k string, v Value) {
	if i := d.find(k); i >= 0 {
		d.vals[i] = v
		return
	}
	d.keys = append(d.keys, k)
	d.vals = append(d.vals, v)
	switch {
	case d.idx != nil:
		d.idx[k] = len(d.keys) - 1
	case len(d.keys) > smallDict:
		d.idx = make(map[string]int, len(d.keys))
		for i, kk := range d.keys {
			d.idx[kk] = i
		}
	}
}

// Get returns the value of k.
func (d *Dict) Get(k string) (Value, bool) {
	if d == nil {
		return nil, false
	}
	if i := d.find(k); i >= 0 {
		return d.vals[i], true
	}
	return nil, false
}

// reset empties d, keeping its slices' storage.
func (d *Dict) reset() {
	clear(d.vals)
	d.keys, d.vals, d.idx = d.keys[:0], d.vals[:0], nil
}

// at returns the value of k, nil if absent.
func (d *Dict) at(k string) Value {
	v, _ := d.Get(k)
	return v
}

// Keys returns the keys in insertion order. The caller must not modify the slice.
func (d *Dict) Keys() []string {
	if d == nil {
		return nil
	}
	return d.keys
}

// Len returns the number of keys.
func (d *Dict) Len() int {
	if d == nil {
		return 0
	}
	return len(d.keys)
}

// Namespace is the mutable object namespace() returns; `set ns.x = v` assigns to it.
type Namespace struct{ Dict }

// FromJSON decodes JSON into template values, keeping object key order and the
// difference between integers and floats, as Python's json.loads does: a number
// without '.', 'e' or 'E' that fits an int64 is an int64, any other a float64, and a
// number out of float64's range is an error. Strings decode as encoding/json decodes
// them (escapes, unpaired surrogates and each invalid UTF-8 byte as U+FFFD).
//
// The input is validated first ([jsonscan.Validate], which agrees with encoding/json's
// Valid, nesting limit included), then walked in place. It was a json.Decoder walked
// with Token, which costs a decoder, its buffer and an interface value per token;
// FuzzFromJSON checks the two agree (but for nesting deeper than jsonscan.MaxDepth,
// which Token allowed). BenchmarkFromJSON (a 1 KB chat message, 2026-12-07, load
// average 4-5): 4.1-4.9 us, 12 allocations, against 16-18.5 us and 39.
func FromJSON(data []byte) (Value, error) {
	if err := jsonscan.Validate(data); err != nil {
		return nil, err
	}
	v, _, err := decodeAt(data, jsonscan.SkipWS(data, 0))
	return v, err
}

// decodeAt decodes the value at b[i] of validated JSON and returns it and the index
// just past it.
func decodeAt(b []byte, i int) (Value, int, error) {
	switch c := b[i]; c {
	case '{':
		d := NewDict()
		it, err := jsonscan.NewIter(b, i)
		if err != nil {
			return nil, 0, err
		}
		for {
			key, vs, _, ok, err := it.Next()
			if err != nil {
				return nil, 0, err
			}
			if !ok {
				return d, it.End(), nil
			}
			k, _, err := decodeString(key, 0)
			if err != nil {
				return nil, 0, err
			}
			v, _, err := decodeAt(b, vs)
			if err != nil {
				return nil, 0, err
			}
			d.Set(k, v)
		}
	case '[':
		list := []Value{}
		i = jsonscan.SkipWS(b, i+1)
		if b[i] == ']' {
			return list, i + 1, nil
		}
		for {
			v, end, err := decodeAt(b, i)
			if err != nil {
				return nil, 0, err
			}
			list = append(list, v)
			i = jsonscan.SkipWS(b, end)
			if b[i] == ']' {
				return list, i + 1, nil
			}
			i = jsonscan.SkipWS(b, i+1) // past the ','
		}
	case '"':
		return decodeString(b, i)
	case 't':
		return true, i + 4, nil
	case 'f':
		return false, i + 5, nil
	case 'n':
		return nil, i + 4, nil
	}
	end := i
	for end < len(b) && strings.IndexByte("+-.0123456789eE", b[end]) >= 0 {
		end++
	}
	v, err := decodeNumber(string(b[i:end]))
	return v, end, err
}

// decodeNumber is a JSON number's value: an int64 when it has no '.', 'e' or 'E' and
// fits one, else a float64.
func decodeNumber(s string) (Value, error) {
	if !strings.ContainsAny(s, ".eE") {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return n, nil
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return nil, fmt.Errorf("number %s: %w", s, err)
	}
	return f, nil
}

// decodeString decodes the valid string literal at b[i] as encoding/json does and
// returns it and the index just past it.
func decodeString(b []byte, i int) (string, int, error) {
	end, escaped, err := jsonscan.String(b, i)
	if err != nil {
		return "", 0, err
	}
	raw := b[i+1 : end-1]
	if !escaped {
		if utf8.Valid(raw) {
			return string(raw), end, nil
		}
		return toValidUTF8(raw), end, nil
	}
	text, _, err := jsonscan.AppendUnescaped(make([]byte, 0, len(raw)), b, i)
	if err != nil {
		return "", 0, err
	}
	if utf8.Valid(text) {
		return string(text), end, nil
	}
	// Escapes only produce valid UTF-8, so the invalid bytes are the literal's own.
	return toValidUTF8(text), end, nil
}

// toValidUTF8 replaces each byte of b that is not part of a valid UTF-8 sequence with
// U+FFFD, as encoding/json does (strings.ToValidUTF8 replaces a run with one).
func toValidUTF8(b []byte) string {
	var sb strings.Builder
	sb.Grow(len(b) + 8)
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		sb.WriteRune(r) // RuneError, size 1, for an invalid byte
		b = b[size:]
	}
	return sb.String()
}

// truthy is Python's bool().
func truthy(v Value) bool {
	switch x := v.(type) {
	case nil, Undefined:
		return false
	case bool:
		return x
	case int64:
		return x != 0
	case float64:
		return x != 0
	case string:
		return x != ""
	case []Value:
		return len(x) > 0
	case *Dict:
		return x.Len() > 0
	}
	return true
}

// typeName is Python's type name of v, for error messages.
func typeName(v Value) string {
	switch v.(type) {
	case nil:
		return "NoneType"
	case Undefined:
		return "undefined"
	case bool:
		return "bool"
	case int64:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []Value:
		return "list"
	case *Dict:
		return "dict"
	case *Namespace:
		return "namespace"
	}
	return "function"
}

// pyFloat formats f as Python's repr(float).
func pyFloat(f float64) string {
	switch {
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	case math.IsNaN(f):
		return "nan"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64)
	exp, _ := strconv.Atoi(e[strings.IndexByte(e, 'e')+1:])
	if exp < -4 || exp >= 16 {
		return e
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}

// str is Python's str() of v, as {{ v }} prints it.
func str(v Value) string {
	switch x := v.(type) {
	case string:
		return x
	case Undefined:
		return ""
	case *macro:
		return "<macro " + x.name + ">"
	}
	return repr(v)
}

// repr is Python's repr() of v.
func repr(v Value) string {
	switch x := v.(type) {
	case nil:
		return "None"
	case Undefined:
		return ""
	case bool:
		if x {
			return "True"
		}
		return "False"
	case int64:
		return strconv.FormatInt(x, 10)
	case float64:
		return pyFloat(x)
	case string:
		return pyStrRepr(x)
	case []Value:
		var b strings.Builder
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(repr(e))
		}
		b.WriteByte(']')
		return b.String()
	case *Dict:
		var b strings.Builder
		b.WriteByte('{')
		for i, k := range x.keys {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(pyStrRepr(k))
			b.WriteString(": ")
			b.WriteString(repr(x.vals[i]))
		}
		b.WriteByte('}')
		return b.String()
	case *Namespace:
		return "<Namespace " + repr(&x.Dict) + ">"
	case *macro:
		return "<macro " + x.name + ">"
	}
	return "<function>"
}

func pyStrRepr(s string) string {
	q := byte('\'')
	if strings.IndexByte(s, '\'') >= 0 && strings.IndexByte(s, '"') < 0 {
		q = '"'
	}
	var b strings.Builder
	b.WriteByte(q)
	for _, r := range s {
		switch {
		case r == rune(q) || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte(q)
	return b.String()
}

// JSONOptions are the arguments of the tojson filter, as transformers passes them
// to Python's json.dumps.
type JSONOptions struct {
	Indent      int    // 0: compact; >0: newline and this many spaces per level
	HasIndent   bool   // indent was given (json.dumps then uses "," as item separator)
	ItemSep     string // "" means the json.dumps default
	KeySep      string // "" means ": "
	SortKeys    bool
	EnsureASCII bool
}

// ToJSON is Python's json.dumps(v, ensure_ascii=False) as transformers' tojson
// filter calls it: ", " and ": " separators, key order preserved, non-ASCII kept.
func ToJSON(v Value, o JSONOptions) (string, error) {
	if o.ItemSep == "" {
		o.ItemSep = ", "
		if o.HasIndent {
			o.ItemSep = ","
		}
	}
	if o.KeySep == "" {
		o.KeySep = ": "
	}
	var b strings.Builder
	if err := writeJSON(&b, v, o, 0); err != nil {
		return "", err
	}
	return b.String(), nil
}

func writeJSON(b *strings.Builder, v Value, o JSONOptions, depth int) error {
	if depth > 512 {
		return errors.New("tojson: nesting too deep")
	}
	nl := func(d int) {
		if o.HasIndent {
			b.WriteByte('\n')
			b.WriteString(strings.Repeat(" ", o.Indent*d))
		}
	}
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		if x {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case int64:
		b.WriteString(strconv.FormatInt(x, 10))
	case float64:
		switch {
		case math.IsNaN(x):
			b.WriteString("NaN")
		case math.IsInf(x, 1):
			b.WriteString("Infinity")
		case math.IsInf(x, -1):
			b.WriteString("-Infinity")
		default:
			b.WriteString(pyFloat(x))
		}
	case string:
		writeJSONString(b, x, o.EnsureASCII)
	case []Value:
		if len(x) == 0 {
			b.WriteString("[]")
			return nil
		}
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteString(o.ItemSep)
			}
			nl(depth + 1)
			if err := writeJSON(b, e, o, depth+1); err != nil {
				return err
			}
		}
		nl(depth)
		b.WriteByte(']')
	case *Dict, *Namespace:
		d, ok := x.(*Dict)
		if !ok {
			d = &x.(*Namespace).Dict
		}
		if d.Len() == 0 {
			b.WriteString("{}")
			return nil
		}
		keys := d.keys
		if o.SortKeys {
			keys = append([]string(nil), keys...)
			sort.Strings(keys)
		}
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteString(o.ItemSep)
			}
			nl(depth + 1)
			writeJSONString(b, k, o.EnsureASCII)
			b.WriteString(o.KeySep)
			if err := writeJSON(b, d.at(k), o, depth+1); err != nil {
				return err
			}
		}
		nl(depth)
		b.WriteByte('}')
	case Undefined:
		return errors.New("tojson: Object of type Undefined is not JSON serializable")
	default:
		return fmt.Errorf("tojson: Object of type %s is not JSON serializable", typeName(v))
	}
	return nil
}

func writeJSONString(b *strings.Builder, s string, ascii bool) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			switch {
			case r < 0x20:
				fmt.Fprintf(b, `\u%04x`, r)
			case ascii && r > 0x7e:
				if r > 0xffff {
					r -= 0x10000
					fmt.Fprintf(b, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
				} else {
					fmt.Fprintf(b, `\u%04x`, r)
				}
			default:
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}
