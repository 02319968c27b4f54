package jsonscan

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// fixUTF8 replaces each byte that is not part of valid UTF-8 with U+FFFD, as
// encoding/json does when it decodes a string.
func fixUTF8(b []byte) string { return string([]rune(string(b))) }

type member struct {
	key, val string
}

// FuzzMatchesEncodingJSON checks the scanner against encoding/json: Object and Valid
// accept exactly what json.Valid accepts; Object and Iter see the same members, whose
// decoded keys and raw values equal encoding/json's; Skip ends where the value ends;
// AppendUnescaped of every string equals json.Unmarshal of it (after the U+FFFD
// replacement encoding/json does); Uint32Array agrees with decoding into []uint32. The
// corpus holds real request bodies and /tokenize answers (testdata/fuzz).
func FuzzMatchesEncodingJSON(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","stream":true,"messages":[{"role":"user","content":"h\u00e9\"llo\\"}],"user":"u"}`,
		`{"model":"m","prompt":[1,2,3e5,-0.5],"cache_salt":null,"x":{"a":[true,false,null]}}`,
		` {"\u006dodel":"m","input":"x"} `, `{}`, `[]`, `{"a":01}`, `{"a":1.}`, `{"a":"\x01"}`, `{"a":tru}`,
		`{"a":1}x`, `{"a":[1,]}`, `{"a":"\ud800"}`, `{"a":"\ud83d\ude00\ud800\u0041"}`, `"\ud800\udc00x\/"`,
		`[0,1,4294967295]`, `[4294967296]`, `[1.0]`, `{"k":"\xff"}`, `{"a":1,"a":2}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		trimmed := TrimWS(body)
		valid := json.Valid(body)
		if Valid(body) != valid {
			t.Fatalf("Valid(%q) = %v, json.Valid %v", body, !valid, valid)
		}
		var seen []member
		err := Object(body, func(key []byte, escaped bool, val []byte) error {
			if escaped != (bytes.IndexByte(key, '\\') >= 0) {
				t.Fatalf("key %q: escaped = %v", key, escaped)
			}
			seen = append(seen, member{string(key), string(val)})
			return nil
		})
		isObj := valid && trimmed[0] == '{'
		if (err == nil) != isObj {
			t.Fatalf("Object(%q) = %v, json.Valid says object=%v", body, err, isObj)
		}
		if err != nil && !errors.Is(err, ErrSyntax) {
			t.Fatalf("Object(%q) = %v, not an ErrSyntax", body, err)
		}
		if valid {
			if end, err := Skip(trimmed, 0); err != nil || end != len(trimmed) {
				t.Fatalf("Skip(%q) = %d, %v; want %d", trimmed, end, err, len(trimmed))
			}
		}
		if trimmed := TrimWS(body); len(trimmed) > 0 && trimmed[0] == '"' {
			checkUnescape(t, trimmed)
		}
		if len(trimmed) > 0 && trimmed[0] == '[' {
			// ArrayIter (elements) agrees with Skip on the array, and its elements are Skip's.
			end, err := Skip(trimmed, 0)
			var elems [][2]int
			gotEnd, gotErr := elements(trimmed, 0, 0, func(s, e int) { elems = append(elems, [2]int{s, e}) })
			if (err == nil) != (gotErr == nil) || (err == nil && gotEnd != end) {
				t.Fatalf("elements(%q) = %d, %v; Skip %d, %v", trimmed, gotEnd, gotErr, end, err)
			}
			for _, el := range elems {
				if e, err := Skip(trimmed, el[0]); err != nil || e != el[1] {
					t.Fatalf("elements(%q): element %q, Skip ends it at %d (%v)", trimmed, trimmed[el[0]:el[1]], e, err)
				}
			}
			var ref []uint32
			refErr := json.Unmarshal(body, &ref)
			got, end, err := Uint32Array(trimmed, 0, nil)
			if ok := err == nil && end == len(trimmed); ok != (refErr == nil) {
				t.Fatalf("Uint32Array(%q) = %v, %d, %v; encoding/json %v", trimmed, got, end, err, refErr)
			} else if ok && !equalUint32(got, ref) {
				t.Fatalf("Uint32Array(%q) = %v, encoding/json %v", trimmed, got, ref)
			}
		}
		if !isObj {
			return
		}
		it, err := NewIter(trimmed, 0)
		if err != nil {
			t.Fatal(err)
		}
		var iter []member
		for {
			key, vs, ve, ok, err := it.Next()
			if err != nil {
				t.Fatalf("Iter on %q: %v", trimmed, err)
			}
			if !ok {
				break
			}
			iter = append(iter, member{string(key), string(trimmed[vs:ve])})
		}
		if it.End() != len(trimmed) {
			t.Fatalf("Iter on %q ends at %d", trimmed, it.End())
		}
		if len(iter) != len(seen) {
			t.Fatalf("%q: Object saw %v, Iter %v", body, seen, iter)
		}
		last := map[string]string{} // encoding/json keeps the last of duplicate keys
		for i, m := range seen {
			if iter[i] != m {
				t.Fatalf("%q: Object saw %v, Iter %v", body, seen, iter)
			}
			key := checkUnescape(t, []byte(m.key))
			if !KeyIs([]byte(m.key), key) {
				t.Fatalf("KeyIs(%q, %q) = false", m.key, key)
			}
			key = fixUTF8([]byte(key))
			if m.val[0] == '"' {
				checkUnescape(t, []byte(m.val))
			}
			last[key] = m.val
		}
		var ref map[string]json.RawMessage
		if err := json.Unmarshal(body, &ref); err != nil {
			t.Fatal(err)
		}
		if len(ref) != len(last) {
			t.Fatalf("%q: members %v, encoding/json %v", body, last, ref)
		}
		for k, v := range ref {
			if last[k] != string(v) {
				t.Fatalf("%q: member %q = %s, encoding/json %s", body, k, last[k], v)
			}
		}
	})
}

// checkUnescape compares AppendUnescaped of the string literal lit with json.Unmarshal and
// returns the decoded string (before the U+FFFD replacement).
func checkUnescape(t *testing.T, lit []byte) string {
	t.Helper()
	var ref string
	refErr := json.Unmarshal(lit, &ref)
	got, end, err := AppendUnescaped(nil, lit, 0)
	if refErr != nil {
		return ""
	}
	if err != nil || end != len(lit) || fixUTF8(got) != ref {
		t.Fatalf("AppendUnescaped(%q) = %q, %d, %v; encoding/json %q", lit, got, end, err, ref)
	}
	return string(got)
}

func equalUint32(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDepthLimit(t *testing.T) {
	for _, c := range []struct {
		depth int
		ok    bool
	}{{MaxDepth, true}, {MaxDepth + 1, false}} {
		arr := strings.Repeat("[", c.depth) + strings.Repeat("]", c.depth)
		if got, want := Valid([]byte(arr)), json.Valid([]byte(arr)); got != c.ok || want != c.ok {
			t.Errorf("depth %d: Valid %v, json.Valid %v, want %v", c.depth, got, want, c.ok)
		}
		if _, err := Skip([]byte(arr), 0); (err == nil) != c.ok {
			t.Errorf("depth %d: Skip: %v", c.depth, err)
		}
		obj := []byte(`{"a":` + arr[1:len(arr)-1] + `}`)
		if err := Object(obj, func([]byte, bool, []byte) error { return nil }); (err == nil) != c.ok {
			t.Errorf("depth %d: Object: %v", c.depth, err)
		}
		if _, err := elements([]byte(arr), 0, 0, func(int, int) {}); (err == nil) != c.ok {
			t.Errorf("depth %d: Elements: %v", c.depth, err)
		}
		it, _ := NewIter(obj, 0) // the member's array through NextKey and ArrayIter at depth 1
		_, vs, _, _ := it.NextKey()
		if _, err := elements(obj, vs, 1, func(int, int) {}); (err == nil) != c.ok {
			t.Errorf("depth %d: Elements in a member: %v", c.depth, err)
		}
	}
}

// TestStringWordBoundaries puts each byte a string scan must stop at (and bytes it must
// not stop at) at every offset around the 8-byte words String skips, and checks the
// verdict and the end against encoding/json.
func TestStringWordBoundaries(t *testing.T) {
	for _, c := range []byte{'"', '\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xc3, 0xff, 'a'} {
		for n := 0; n < 24; n++ {
			for p := 0; p <= n; p++ {
				body := []byte(strings.Repeat("x", n))
				if p < n {
					body[p] = c
				}
				lit := append(append([]byte{'"'}, body...), '"')
				end, _, err := String(append(lit, " tail"...), 0)
				want := json.Valid(lit)
				innerQuote := c == '"' && p < n // ends the string early: not a literal of n bytes
				if (err == nil) != want && !innerQuote {
					t.Fatalf("byte %#x at %d of %d: err %v, encoding/json valid %v", c, p, n, err, want)
				}
				switch {
				case innerQuote:
					if err != nil || end != p+2 { // the string ends at the inner quote
						t.Fatalf("quote at %d of %d: end %d err %v", p, n, end, err)
					}
				case err == nil && end != len(lit):
					t.Fatalf("byte %#x at %d of %d: end %d, want %d", c, p, n, end, len(lit))
				}
			}
		}
	}
}

// elements walks the array at b[i] with an ArrayIter nested depth levels deep, calling fn
// with each element's bounds, and returns the index past it.
func elements(b []byte, i, depth int, fn func(start, end int)) (int, error) {
	a, err := NewArrayIter(b, i, depth)
	if err != nil {
		return 0, err
	}
	for {
		s, e, ok, err := a.Next()
		if err != nil {
			return 0, err
		}
		if !ok {
			return a.End(), nil
		}
		fn(s, e)
	}
}
