package router

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/kvroute/kvroute/router/jsonscan"
)

func TestParseRequest(t *testing.T) {
	cases := []struct {
		name    string
		ep      endpoint
		body    string
		wantErr error
		check   func(r *request) bool
	}{
		{"chat", epChat, `{"model":"m","stream":true,"user":"u","messages":[{"role":"user","content":"hi"}]}`, nil,
			func(r *request) bool { return r.Model == "m" && r.Stream && r.User == "u" && isJSONArray(r.Msgs) }},
		{"completion tokens", epCompletions, ` {"model":"m","prompt":[1,2,3]}`, nil,
			func(r *request) bool { return string(r.Prompt) == "[1,2,3]" && !r.Stream }},
		{"embeddings", epEmbeddings, `{"model":"m","input":"x"}`, nil, nil},
		{"unknown fields kept out", epChat, `{"model":"m","messages":[],"temperature":0.2,"tools":[{"a":1}]}`, nil, nil},
		{"empty", epChat, ``, errInvalidJSON, nil},
		{"array", epChat, `[1]`, errInvalidJSON, nil},
		{"truncated", epChat, `{"model":"m","messages":[`, errInvalidJSON, nil},
		{"model not string", epChat, `{"model":3,"messages":[]}`, errInvalidJSON, nil},
		{"stream not bool", epChat, `{"model":"m","stream":"yes","messages":[]}`, errInvalidJSON, nil},
		{"no model", epChat, `{"messages":[]}`, errInvalidField, nil},
		{"messages not array", epChat, `{"model":"m","messages":"hi"}`, errInvalidField, nil},
		{"no prompt", epCompletions, `{"model":"m"}`, errInvalidField, nil},
		{"null prompt", epCompletions, `{"model":"m","prompt":null}`, errInvalidField, nil},
		{"no input", epEmbeddings, `{"model":"m"}`, errInvalidField, nil},
	}
	for _, c := range cases {
		var r request
		err := parseRequest([]byte(c.body), c.ep, &r)
		if !errors.Is(err, c.wantErr) || (c.wantErr == nil) != (err == nil) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.wantErr)
			continue
		}
		if c.check != nil && !c.check(&r) {
			t.Errorf("%s: parsed %+v", c.name, r)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`), uint8(0))
	f.Add([]byte(`{"model":"m","prompt":[1,2,3],"stream_options":{"include_usage":true}}`), uint8(1))
	f.Add([]byte(`{"model":"m","input":["a","b"]}`), uint8(2))
	f.Add([]byte(`{"model":"\u00e9","messages":[],"user":"x"}`), uint8(0))
	f.Fuzz(func(t *testing.T, body []byte, ep uint8) {
		var r request
		err := parseRequest(body, endpoint(ep%3), &r)
		if err != nil {
			if !errors.Is(err, errInvalidJSON) && !errors.Is(err, errInvalidField) {
				t.Fatalf("unexpected error class: %v", err)
			}
			if st := statusOf(err); st.code != 400 {
				t.Fatalf("parse error maps to %d, want 400", st.code)
			}
			return
		}
		if r.Model == "" {
			t.Fatal("accepted a request without a model")
		}
	})
}

// BenchmarkParseRequest parses a 2 KB chat request.
// Compare two runs with benchstat:
//
//	go test -run x -bench ParseRequest -count 10 ./router > new.txt && benchstat old.txt new.txt
func BenchmarkParseRequest(b *testing.B) {
	content := strings.Repeat("lorem ipsum dolor sit amet ", 70)
	body := []byte(`{"model":"meta-llama/Llama-3.1-8B-Instruct","stream":false,"max_tokens":128,"temperature":0.7,` +
		`"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"` + content + `"}]}`)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	var r request
	for b.Loop() {
		if err := parseRequest(body, epChat, &r); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzScanMatchesEncodingJSON checks the hand-written scanner against encoding/json: it
// accepts exactly the bodies json.Valid accepts that are objects, and the routing fields
// it extracts equal encoding/json's decoding (for bodies whose member names match the
// fields' case exactly; encoding/json also matches other cases, vLLM does not).
func FuzzScanMatchesEncodingJSON(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","stream":true,"messages":[{"role":"user","content":"h\u00e9\"llo\\"}],"user":"u"}`,
		`{"model":"m","prompt":[1,2,3e5,-0.5],"cache_salt":null,"x":{"a":[true,false,null]}}`,
		` {"\u006dodel":"m","input":"x"} `, `{}`, `[]`, `{"a":01}`, `{"a":1.}`, `{"a":"\x01"}`, `{"a":tru}`,
		`{"model":"m","stream":"yes"}`, `{"model":3}`, `{"a":1}x`, `{"a":[1,]}`, `{"a":"\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		scanErr := jsonscan.Object(body, func([]byte, bool, []byte) error { return nil })
		trimmed := bytes.TrimLeft(body, " \t\r\n")
		want := json.Valid(body) && len(trimmed) > 0 && trimmed[0] == '{'
		if (scanErr == nil) != want {
			t.Fatalf("jsonscan.Object(%q) = %v, json.Valid says object=%v", body, scanErr, want)
		}
		if !want {
			return
		}
		var keys map[string]json.RawMessage
		if json.Unmarshal(body, &keys) != nil {
			return
		}
		for k := range keys {
			for _, f := range []string{"model", "stream", "user", "cache_salt", "messages", "prompt", "input"} {
				if k != f && strings.EqualFold(k, f) {
					return // encoding/json would match it case-insensitively
				}
			}
		}
		var ref struct {
			Model     string          `json:"model"`
			Stream    bool            `json:"stream"`
			User      string          `json:"user"`
			CacheSalt string          `json:"cache_salt"`
			Msgs      json.RawMessage `json:"messages"`
			Prompt    json.RawMessage `json:"prompt"`
		}
		refErr := json.Unmarshal(body, &ref)
		var r request
		err := jsonscan.Object(body, r.member)
		if (err == nil) != (refErr == nil) {
			t.Fatalf("%q: scanner err %v, encoding/json err %v", body, err, refErr)
		}
		if err == nil && (r.Model != ref.Model || r.Stream != ref.Stream || r.User != ref.User || r.CacheSalt != ref.CacheSalt ||
			!bytes.Equal(r.Msgs, ref.Msgs) || !bytes.Equal(r.Prompt, ref.Prompt)) {
			t.Fatalf("%q: scanner %+v, encoding/json %+v", body, r, ref)
		}
	})
}
