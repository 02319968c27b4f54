package router

import (
	"bytes"
	"encoding/json"
	"errors"
	"mime/multipart"
	"strings"
	"testing"
	"time"
)

func TestParseResponsesRequest(t *testing.T) {
	tests := []struct {
		body, msgs, prev string
		store, stream    bool
	}{
		{`{"model":"m","input":"hi"}`, `[{"role":"user","content":"hi"}]`, "", true, false},
		{`{"model":"m","instructions":"be brief","input":"hi","stream":true,"store":false,"previous_response_id":"resp_1"}`,
			`[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]`, "resp_1", false, true},
		{`{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"a"}]},{"type":"message","role":"assistant","content":[{"type":"output_text","text":"b"}]}]}`,
			`[{"role":"user","content":[{"type":"input_text","text":"a"}]},{"role":"assistant","content":[{"type":"output_text","text":"b"}]}]`, "", true, false},
		// Another item type ends the hashed messages, as a non-text part.
		{`{"model":"m","input":[{"role":"user","content":"a"},{"type":"function_call","name":"f"},{"role":"user","content":"c"}]}`,
			`[{"role":"user","content":"a"},{"role":"user","content":[{"type":"input_item"}]}]`, "", true, false},
		{`{"model":"m","input":[{"role":"user","content":"a"},3]}`,
			`[{"role":"user","content":"a"},{"role":"user","content":[{"type":"input_item"}]}]`, "", true, false},
		{`{"model":"m","input":"x","instructions":null,"store":null}`, `[{"role":"user","content":"x"}]`, "", true, false},
	}
	for _, tc := range tests {
		var r request
		var rf responsesFields
		if err := parseResponsesRequest([]byte(tc.body), &r, &rf); err != nil {
			t.Errorf("%s: %v", tc.body, err)
			continue
		}
		if string(r.Msgs) != tc.msgs || rf.previous != tc.prev || rf.store != tc.store || r.Stream != tc.stream || r.Model != "m" {
			t.Errorf("%s:\n got %s prev %q store %v stream %v\nwant %s", tc.body, r.Msgs, rf.previous, rf.store, r.Stream, tc.msgs)
		}
		if !json.Valid(r.Msgs) {
			t.Errorf("%s: messages are not JSON: %s", tc.body, r.Msgs)
		}
	}
	for _, body := range []string{`{"input":"x"}`, `{"model":"m"}`, `{"model":"m","input":null}`, `{"model":"m","input":{}}`,
		`{"model":"m","input":"x","instructions":1}`, `{"model":"m","input":"x","store":"yes"}`, `{"model":"m","input":"x",}`,
		`{"model":"m","input":"x","previous_response_id":"` + strings.Repeat("a", 300) + `"}`} {
		var r request
		var rf responsesFields
		err := parseResponsesRequest([]byte(body), &r, &rf)
		if !errors.Is(err, errInvalidField) && !errors.Is(err, errInvalidJSON) {
			t.Errorf("%s: %v", body, err)
		}
	}
}

// FuzzParseResponsesRequest checks the Responses decoder on arbitrary bodies: no panic,
// errors of the two request kinds, and accepted bodies give valid JSON messages.
func FuzzParseResponsesRequest(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","input":"hi"}`,
		`{"model":"m","instructions":"sys","input":[{"role":"user","content":[{"type":"input_text","text":"a"},{"type":"input_image","image_url":"x"}]}],"previous_response_id":"resp_1","store":true,"stream":true}`,
		`{"model":"m","input":[{"type":"function_call_output","call_id":"c","output":"o"}]}`,
		`{"model":"m","input":[{"type":"message","role":"assistant","content":[{"type":"output_text","text":"b"}]}]}`,
		`{"model":"m","input":[]}`, `[]`, `{"model":"m","input":[null]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var r request
		var rf responsesFields
		err := parseResponsesRequest(body, &r, &rf)
		if err != nil {
			if !errors.Is(err, errInvalidField) && !errors.Is(err, errInvalidJSON) {
				t.Fatalf("error of no kind: %v", err)
			}
			return
		}
		if !json.Valid(r.Msgs) || r.Msgs[0] != '[' {
			t.Fatalf("messages not a JSON array: %s", r.Msgs)
		}
	})
}

func multipartBody(t testing.TB, fields ...string) ([]byte, string) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for i := 0; i+1 < len(fields); i += 2 {
		if fields[i] == "file" {
			fw, _ := mw.CreateFormFile("file", "a.wav")
			_, _ = fw.Write([]byte(fields[i+1]))
			continue
		}
		_ = mw.WriteField(fields[i], fields[i+1])
	}
	_ = mw.Close()
	return buf.Bytes(), mw.FormDataContentType()
}

func TestPassthroughModel(t *testing.T) {
	body, ct := multipartBody(t, "file", "RIFF", "model", "whisper", "language", "en")
	if m, err := passthroughModel(body, []byte(ct)); err != nil || m != "whisper" {
		t.Errorf("multipart: %q %v", m, err)
	}
	body, ct = multipartBody(t, "file", "RIFF")
	if _, err := passthroughModel(body, []byte(ct)); !errors.Is(err, errInvalidField) {
		t.Errorf("multipart without model: %v", err)
	}
	if _, err := passthroughModel(body, []byte("multipart/form-data")); !errors.Is(err, errInvalidField) {
		t.Errorf("multipart without boundary: %v", err)
	}
	body, ct = multipartBody(t, "model", strings.Repeat("m", 2000))
	if _, err := passthroughModel(body, []byte(ct)); !errors.Is(err, errInvalidField) {
		t.Errorf("long model: %v", err)
	}
	if m, err := passthroughModel([]byte(`{"prompt":"x","model":"a\u0062"}`), []byte("application/json")); err != nil || m != "ab" {
		t.Errorf("json: %q %v", m, err)
	}
	for _, b := range []string{`{"prompt":"x"}`, `{"model":1}`, `not json`, ``} {
		if _, err := passthroughModel([]byte(b), nil); err == nil {
			t.Errorf("%q: no error", b)
		}
	}
}

// FuzzPassthroughModel checks the model extraction on arbitrary bodies, as JSON and as
// multipart: no panic, errors of the two request kinds.
func FuzzPassthroughModel(f *testing.F) {
	body, ct := multipartBody(f, "file", "RIFF", "model", "whisper")
	f.Add(body, true)
	body, _ = multipartBody(f, "model", "")
	f.Add(body, true)
	f.Add([]byte(`{"model":"m","query":"q","documents":["a"]}`), false)
	f.Add([]byte(`{"model":null}`), false)
	boundary := ct[strings.Index(ct, "boundary=")+len("boundary="):]
	f.Fuzz(func(t *testing.T, body []byte, multi bool) {
		ctype := "application/json"
		if multi {
			ctype = "multipart/form-data; boundary=" + boundary
		}
		m, err := passthroughModel(body, []byte(ctype))
		if err != nil {
			if !errors.Is(err, errInvalidField) && !errors.Is(err, errInvalidJSON) {
				t.Fatalf("error of no kind: %v", err)
			}
			return
		}
		if m == "" || len(m) > maxFormModel && multi {
			t.Fatalf("model %q accepted", m)
		}
	})
}

func TestResponseMap(t *testing.T) {
	now := time.Unix(1000, 0)
	m := newResponseMap(3, time.Minute)
	for _, id := range []string{"a", "b", "c"} {
		m.put(id, "w-"+id, "m", now)
	}
	if w, ok := m.get("a", now); !ok || w != "w-a" { // a is now the most recent
		t.Fatalf("a: %q %v", w, ok)
	}
	m.put("d", "w-d", "m", now) // evicts b, the least recently used
	if _, ok := m.get("b", now); ok {
		t.Error("b survived eviction")
	}
	if m.len() != 3 {
		t.Errorf("len %d", m.len())
	}
	// TTL counts from the last use.
	if _, ok := m.get("c", now.Add(50*time.Second)); !ok {
		t.Error("c expired early")
	}
	if _, ok := m.get("c", now.Add(100*time.Second)); !ok {
		t.Error("c's use did not refresh it")
	}
	if _, ok := m.get("d", now.Add(61*time.Second)); ok {
		t.Error("d outlived its TTL")
	}
	m.forget("a")
	if _, ok := m.get("a", now); ok || m.model("a") != "" {
		t.Error("a not forgotten")
	}
}

func TestResponseIDsAndUsage(t *testing.T) {
	if id := topLevelID([]byte(` {"object":"response","output":[{"id":"msg_1"}],"id":"resp_1"}`)); id != "resp_1" {
		t.Errorf("topLevelID %q", id)
	}
	for _, b := range []string{`{"id":1}`, `[]`, `{"id":"` + strings.Repeat("x", 300) + `"}`, `{"object":"x"}`} {
		if id := topLevelID([]byte(b)); id != "" {
			t.Errorf("%s: id %q", b, id)
		}
	}
	chunk := "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_9\",\"status\":\"in_progress\"}}\r\n\r\n"
	if id := sseResponseID([]byte(chunk)); id != "resp_9" {
		t.Errorf("sseResponseID %q", id)
	}
	if id := sseResponseID([]byte("data: {\"type\":\"response.output_text.delta\",\"delta\":\"response\"}\n\n")); id != "" {
		t.Errorf("delta gave id %q", id)
	}
	// Usage in the Responses shape, top level and in a stream event.
	u, ok := parseUsage([]byte(`{"id":"r","usage":{"input_tokens":100,"input_tokens_details":{"cached_tokens":64},"output_tokens":5}}`))
	if !ok || u.PromptTokens != 100 || u.CachedTokens != 64 {
		t.Errorf("usage %+v %v", u, ok)
	}
	u, ok = sseUsage([]byte("event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":40,\"input_tokens_details\":{\"cached_tokens\":32}}}}\n\n"))
	if !ok || u.PromptTokens != 40 || u.CachedTokens != 32 {
		t.Errorf("stream usage %+v %v", u, ok)
	}
	if _, ok := parseUsage([]byte(`{"type":"response.created","response":{"id":"r","usage":null}}`)); ok {
		t.Error("null usage counted")
	}
}
