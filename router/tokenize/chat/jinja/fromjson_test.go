package jinja

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
)

// decoderFromJSON is FromJSON as it was, a json.Decoder walked with Token: the
// reference the in-place decoder is checked against.
func decoderFromJSON(data []byte) (Value, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decoderValue(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("trailing data after JSON value")
	}
	return v, nil
}

func decoderValue(dec *json.Decoder) (Value, error) {
	t, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch x := t.(type) {
	case json.Delim:
		switch x {
		case '[':
			list := []Value{}
			for dec.More() {
				v, err := decoderValue(dec)
				if err != nil {
					return nil, err
				}
				list = append(list, v)
			}
			_, err := dec.Token()
			return list, err
		case '{':
			d := NewDict()
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, _ := kt.(string)
				v, err := decoderValue(dec)
				if err != nil {
					return nil, err
				}
				d.Set(k, v)
			}
			_, err := dec.Token()
			return d, err
		}
		return nil, fmt.Errorf("unexpected %v", x)
	case json.Number:
		return decodeNumber(string(x))
	case string, bool, nil:
		return x, nil
	}
	return nil, fmt.Errorf("unexpected token %v", t)
}

var fromJSONSeeds = []string{
	`{"role":"user","content":"hi"}`, `[1, -0, 2.5, 1e3, 1E-2, 12345678901234567890, 1e400, -1e400]`,
	`{"a":1,"b":{"c":[true,false,null]},"a":2}`, `"\ud83d\ude00 \ud800 \u00e9 \n\t\"\\\/"`,
	"\"\xff\xfe raw \xc3\"", "\"\xe2\x82\"", ` 7 `, `1 2`, `{"a":}`, `[1,]`, `{"k\u0041":"v"}`, `"`, ``,
	`{"messages":[{"role":"assistant","content":null,"tool_calls":[{"function":{"arguments":"{\"x\": 1.0}"}}]}]}`,
	strings.Repeat("[", 10001) + strings.Repeat("]", 10001), strings.Repeat("[", 100) + strings.Repeat("]", 100),
}

// checkFromJSON compares FromJSON with decoderFromJSON on data. One difference is
// intended: a json.Decoder walked with Token has no nesting limit, FromJSON keeps
// encoding/json's (jsonscan.MaxDepth, which the router applies to every body first).
func checkFromJSON(t *testing.T, data []byte) {
	want, werr := decoderFromJSON(data)
	got, gerr := FromJSON(data)
	show := data
	if len(show) > 200 {
		show = show[:200]
	}
	if werr == nil && gerr != nil && strings.Contains(gerr.Error(), "nested too deeply") {
		return
	}
	if (werr == nil) != (gerr == nil) {
		t.Fatalf("%q: json.Decoder error %v, FromJSON error %v", show, werr, gerr)
	}
	if werr == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: FromJSON %#v, json.Decoder %#v", show, got, want)
	}
}

// TestFromJSONMatchesDecoder checks the in-place decoder against the json.Decoder one
// on the seeds: the same values (key order, int64 against float64, U+FFFD for bad
// bytes and unpaired surrogates) and the same inputs rejected.
func TestFromJSONMatchesDecoder(t *testing.T) {
	for _, s := range fromJSONSeeds {
		checkFromJSON(t, []byte(s))
	}
}

// FuzzFromJSON is TestFromJSONMatchesDecoder on any input.
func FuzzFromJSON(f *testing.F) {
	for _, s := range fromJSONSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkFromJSON(t, data) })
}

// BenchmarkFromJSON decodes one chat message of about 1 KB with the in-place decoder
// and with the json.Decoder one it replaced.
//
//	go test -run '^$' -bench FromJSON ./router/tokenize/chat/jinja
func BenchmarkFromJSON(b *testing.B) {
	msg, err := json.Marshal(map[string]any{"role": "user", "content": strings.Repeat("The router keeps a map of prefixes. ", 28) + "caf\u00e9 \"quoted\"\n"})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		f    func([]byte) (Value, error)
	}{{"in-place", FromJSON}, {"json.Decoder", decoderFromJSON}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if _, err := c.f(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
