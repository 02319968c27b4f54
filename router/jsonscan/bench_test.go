package jsonscan

import (
	"encoding/json"
	"strings"
	"testing"
)

// requestBody is the 2 KB chat request of router's BenchmarkParseRequest.
var requestBody = []byte(`{"model":"meta-llama/Llama-3.1-8B-Instruct","stream":false,"max_tokens":128,"temperature":0.7,` +
	`"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"` +
	strings.Repeat("lorem ipsum dolor sit amet ", 70) + `"}]}`)

type routingFields struct {
	Model     []byte
	Stream    []byte
	User      []byte
	CacheSalt []byte
	Msgs      []byte
}

func (r *routingFields) member(key []byte, _ bool, val []byte) error {
	switch string(key[1 : len(key)-1]) {
	case "model":
		r.Model = val
	case "stream":
		r.Stream = val
	case "user":
		r.User = val
	case "cache_salt":
		r.CacheSalt = val
	case "messages":
		r.Msgs = val
	}
	return nil
}

// BenchmarkRequestPath validates a 2 KB chat body and finds its five routing fields,
// with this package and with encoding/json (the comparison in the package doc).
// Compare two runs with benchstat:
//
//	go test -run '^$' -bench RequestPath -benchmem -count 10 ./router/jsonscan > new.txt && benchstat old.txt new.txt
func BenchmarkRequestPath(b *testing.B) {
	b.Run("lib=jsonscan", func(b *testing.B) {
		b.SetBytes(int64(len(requestBody)))
		b.ReportAllocs()
		var r routingFields
		for b.Loop() {
			r = routingFields{}
			if err := Object(requestBody, r.member); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("lib=encoding-json-unmarshal", func(b *testing.B) {
		b.SetBytes(int64(len(requestBody)))
		b.ReportAllocs()
		for b.Loop() {
			var r struct {
				Model     string          `json:"model"`
				Stream    bool            `json:"stream"`
				User      string          `json:"user"`
				CacheSalt string          `json:"cache_salt"`
				Msgs      json.RawMessage `json:"messages"`
			}
			if err := json.Unmarshal(requestBody, &r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("lib=encoding-json-valid", func(b *testing.B) {
		b.SetBytes(int64(len(requestBody)))
		b.ReportAllocs()
		for b.Loop() {
			if !json.Valid(requestBody) {
				b.Fatal("invalid")
			}
		}
	})
}

// BenchmarkUnescape decodes a 2 KB string literal with two escapes.
//
//	go test -run '^$' -bench Unescape -benchmem -count 10 ./router/jsonscan > new.txt && benchstat old.txt new.txt
func BenchmarkUnescape(b *testing.B) {
	lit := []byte(`"` + strings.Repeat("lorem ipsum dolor sit amet ", 35) + `\n\u00e9` + strings.Repeat("lorem ipsum dolor sit amet ", 35) + `"`)
	b.SetBytes(int64(len(lit)))
	b.ReportAllocs()
	buf := make([]byte, 0, len(lit))
	for b.Loop() {
		var err error
		if buf, _, err = AppendUnescaped(buf[:0], lit, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkString validates 2 KB string literals: plain prose, and source code with an
// escaped newline every line and escaped quotes (a common prompt's shape).
//
//	go test -run '^$' -bench 'String$' -benchmem -count 10 ./router/jsonscan > new.txt && benchstat old.txt new.txt
func BenchmarkString(b *testing.B) {
	for _, c := range []struct{ name, text string }{
		{"prose", strings.Repeat("lorem ipsum dolor sit amet ", 76)},
		{"code", strings.Repeat(`    if err := f(\"x\"); err != nil {\n        return err\n    }\n`, 32)},
	} {
		lit := []byte(`"` + c.text + `"`)
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(lit)))
			for b.Loop() {
				if _, _, err := String(lit, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
