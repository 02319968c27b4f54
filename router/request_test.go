package router

import (
	"errors"
	"testing"
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
