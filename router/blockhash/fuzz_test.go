package blockhash

import (
	"bytes"
	"encoding/json"
	"math"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"unicode/utf8"

	"github.com/kvroute/kvroute/router/jsonscan"
)

// Real-format samples: vLLM /tokenize answers and OpenAI chat messages.
var (
	tokenizeAnswers = []string{
		`{"count":5,"max_model_len":32768,"tokens":[128000,9906,1917,0,13],"token_strs":null}`,
		`{"count":3,"max_model_len":4096,"tokens":[1,15043,29889],"token_strs":["<s>","▁Hello","."]}`,
		`{"tokens":[],"count":0,"max_model_len":8192}`,
		` {"count":1,"tokens":[4294967295]} `,
		`{"detail":[{"type":"missing","loc":["body","prompt"],"msg":"Field required"}]}`,
		`{"error":{"message":"model not found","type":"NotFoundError","param":null,"code":404}}`,
	}
	chatSamples = []string{
		`[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hello!"}]`,
		`[{"role":"user","content":[{"type":"text","text":"What is in this image?"},{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}]`,
		`[{"role":"user","content":"weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},{"role":"tool","tool_call_id":"call_1","content":"sunny"}]`,
		`[{"role":"user","name":"alice","content":"h\u00e9llo \ud83d\ude00 \n\t\"q\""}]`,
		`[{"content":"x","role":"user","role":"assistant"},{"role":"user","content":[{"type":"input_text","text":"a"},{"type":"text","text":"b"}]}]`,
		`[]`,
		`[{"role":"system","content":"sys"},{"role":"user","content":["plain",{"text":"untyped"},{"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}},{"type":"text","text":"after"}]},{"role":"user","content":"later"}]`,
		`[{"role":"user","content":[{"type":"video_url","video_url":{"url":"v.mp4"}}]},{"role":"user","content":"x"}]`,
	}
)

var uintRe = regexp.MustCompile(`^(0|[1-9][0-9]*)$`)

// refUint parses a token id as decodeTokenizeResponse must accept it.
func refUint(n json.Number) (uint32, bool) {
	if !uintRe.MatchString(string(n)) {
		return 0, false
	}
	v, err := strconv.ParseUint(string(n), 10, 64)
	if err != nil || v > math.MaxUint32 {
		return 0, false
	}
	return uint32(v), true
}

// refTokenizeAnswer is decodeTokenizeResponse written with encoding/json.
func refTokenizeAnswer(data []byte) ([]uint32, bool) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil || top == nil {
		return nil, false
	}
	raw, ok := top["tokens"]
	if !ok || len(raw) == 0 || raw[0] != '[' {
		return nil, false
	}
	var nums []json.Number
	if err := json.Unmarshal(raw, &nums); err != nil {
		return nil, false
	}
	ids := []uint32{}
	for _, n := range nums {
		v, ok := refUint(n)
		if !ok {
			return nil, false
		}
		ids = append(ids, v)
	}
	if c, ok := top["count"]; ok {
		v, ok := refUint(json.Number(c))
		if !ok || int(v) != len(ids) {
			return nil, false
		}
	}
	return ids, true
}

// FuzzDecodeTokenizeResponse checks the /tokenize answer decoder against encoding/json
// on valid JSON, and that it survives anything else.
func FuzzDecodeTokenizeResponse(f *testing.F) {
	for _, s := range tokenizeAnswers {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeTokenizeResponse(data, nil)
		if !json.Valid(data) {
			return
		}
		want, ok := refTokenizeAnswer(data)
		if ok != (err == nil) {
			t.Fatalf("%q: decoder error %v, reference ok %v", data, err, ok)
		}
		if ok && !slices.Equal(got, want) {
			t.Fatalf("%q: got %v, want %v", data, got, want)
		}
	})
}

// refTextPart is partText written with encoding/json: a part's text and whether it is
// a text part (a string, or an object typed text, input_text or output_text, or untyped,
// with a string "text").
func refTextPart(p json.RawMessage) (string, bool) {
	var text, typ string
	if len(p) > 0 && p[0] == '"' {
		return text, json.Unmarshal(p, &text) == nil
	}
	var part map[string]json.RawMessage
	if len(p) == 0 || p[0] != '{' || json.Unmarshal(p, &part) != nil {
		return "", false
	}
	t, typed := part["type"]
	if typed && (len(t) == 0 || t[0] != '"' || json.Unmarshal(t, &typ) != nil || (typ != "text" && typ != "input_text" && typ != "output_text")) {
		return "", false
	}
	if len(part["text"]) == 0 || part["text"][0] != '"' || json.Unmarshal(part["text"], &text) != nil {
		return "", false
	}
	return text, true
}

// refFirstNonText returns the index of the first message whose content is an array
// holding a non-text part, or -1.
func refFirstNonText(list []json.RawMessage) int {
	for i, m := range list {
		var fields map[string]json.RawMessage
		if json.Unmarshal(m, &fields) != nil {
			return -2 // not an object: the reader fails on it
		}
		if c := fields["content"]; len(c) > 0 && c[0] == '[' {
			var parts []json.RawMessage
			_ = json.Unmarshal(c, &parts)
			for _, p := range parts {
				if _, ok := refTextPart(p); !ok {
					return i
				}
			}
		}
	}
	return -1
}

// refChatText is the approx mode's canonical chat text (see Approx) written with
// encoding/json.
func refChatText(msgs []byte) ([]byte, bool) {
	if t := bytes.TrimSpace(msgs); len(t) == 0 || t[0] != '[' {
		return nil, false
	}
	var list []json.RawMessage
	if json.Unmarshal(msgs, &list) != nil {
		return nil, false
	}
	var out []byte
	value := func(v json.RawMessage) {
		var s string
		if len(v) > 0 && v[0] == '"' && json.Unmarshal(v, &s) == nil {
			out = append(out, s...)
			return
		}
		out = append(out, v...)
	}
	for _, m := range list {
		var fields map[string]json.RawMessage
		if len(m) == 0 || m[0] != '{' || json.Unmarshal(m, &fields) != nil {
			return nil, false
		}
		out = append(out, sepMessage)
		value(fields["role"])
		out = append(out, sepField)
		c := fields["content"]
		switch {
		case len(c) > 0 && c[0] == '[':
			var parts []json.RawMessage
			_ = json.Unmarshal(c, &parts)
			for i, p := range parts {
				text, ok := refTextPart(p)
				if !ok {
					return out, true // the text stops at the first non-text part
				}
				if i > 0 {
					out = append(out, '\n')
				}
				out = append(out, text...)
			}
		case string(c) != "null":
			value(c)
		}
		for _, k := range []string{"name", "tool_call_id", "tool_calls"} {
			v, ok := fields[k]
			if !ok || (k == "tool_calls" && string(v) == "null") {
				continue
			}
			out = append(out, sepField)
			out = append(out, k...)
			out = append(out, '=')
			value(v)
		}
	}
	return out, true
}

func chatText(msgs []byte) ([]byte, error) {
	s := textSink{collect: true}
	_, err := writeChat(&s, msgs, &Options{})
	return s.buf, err
}

// FuzzApproxChat checks the messages reader against encoding/json on valid UTF-8 JSON,
// the prefix stability of the canonical text, and that the approx mode survives
// anything.
func FuzzApproxChat(f *testing.F) {
	for _, s := range chatSamples {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req := &Request{Model: "m", BlockSize: 1, Messages: data}
		r, err := Approx{}.Hash(t.Context(), req, nil)
		got, terr := chatText(jsonscan.TrimWS(data))
		if !json.Valid(data) || !utf8.Valid(data) {
			return
		}
		want, ok := refChatText(data)
		if !ok {
			if trimmed := jsonscan.TrimWS(data); len(trimmed) > 0 && trimmed[0] == '[' && terr == nil {
				t.Fatalf("%q: reader accepted what the reference rejects", data)
			}
			return
		}
		if terr != nil || err != nil {
			t.Fatalf("%q: reader error %v / %v, reference accepts", data, terr, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%q:\ngot  %q\nwant %q", data, got, want)
		}
		if len(r.Hashes) != len(want)/CharsPerToken {
			t.Fatalf("%d hashes for %d bytes", len(r.Hashes), len(want))
		}
		// TextPrefix keeps the messages before the first one holding a non-text part.
		var all []json.RawMessage
		_ = json.Unmarshal(data, &all)
		first := refFirstNonText(all)
		if (first >= 0) != r.Truncated {
			t.Fatalf("%q: truncated %v, first non-text message %d", data, r.Truncated, first)
		}
		tp, cut, err := TextPrefix(nil, jsonscan.TrimWS(data))
		if first == -2 {
			return
		}
		if err != nil || cut != (first >= 0) {
			t.Fatalf("%q: TextPrefix cut %v err %v, first non-text message %d", data, cut, err, first)
		}
		var kept []json.RawMessage
		if cut && (json.Unmarshal(tp, &kept) != nil || len(kept) != first || (first > 0 && !bytes.Equal(kept[first-1], all[first-1]))) {
			t.Fatalf("%q: TextPrefix kept %s, want the first %d messages", data, tp, first)
		}
		// The text of the first messages is a prefix of the text of all of them.
		var list []json.RawMessage
		_ = json.Unmarshal(data, &list)
		if len(list) > 1 {
			head, _ := json.Marshal(list[:len(list)/2])
			h, err := chatText(head)
			if err != nil || !bytes.HasPrefix(got, h) {
				t.Fatalf("%q: first messages' text %q is not a prefix of %q (%v)", data, h, got, err)
			}
		}
	})
}

// FuzzPrompt checks the prompt reader: token-id arrays against encoding/json, string
// prompts' decoded text against encoding/json, and survival on anything.
func FuzzPrompt(f *testing.F) {
	for _, s := range []string{`"Once upon a time"`, `["a", "b"]`, `[1, 2, 3]`, `[[128000, 9906], [1]]`, `[]`, `"\u00e9\ud83d\ude00"`, `[4294967295, 0]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req := &Request{Model: "m", BlockSize: 1, Prompt: data}
		r, err := Approx{}.Hash(t.Context(), req, nil)
		if !json.Valid(data) || !utf8.Valid(data) {
			return
		}
		var s string
		var strs []string
		var nums []json.Number
		var batches [][]json.Number
		switch {
		case json.Unmarshal(data, &s) == nil && jsonscan.TrimWS(data)[0] == '"':
			if err != nil || r.Exact || len(r.Hashes) != len(s)/CharsPerToken {
				t.Fatalf("%q: string prompt: %+v %v", data, r, err)
			}
		case json.Unmarshal(data, &strs) == nil && len(strs) > 0 && firstIsString(data):
			if err != nil || len(r.Hashes) != len(strs[0])/CharsPerToken {
				t.Fatalf("%q: string batch: %+v %v", data, r, err)
			}
		case json.Unmarshal(data, &nums) == nil && nums != nil:
			ok := true
			for _, n := range nums {
				_, good := refUint(n)
				ok = ok && good
			}
			if ok != (err == nil) || ok && (!r.Exact || r.Tokens != len(nums)) {
				t.Fatalf("%q: token ids: %+v %v, reference ok %v", data, r, err, ok)
			}
		case json.Unmarshal(data, &batches) == nil && len(batches) > 0 && batches[0] != nil:
			ok := true
			for _, n := range batches[0] {
				_, good := refUint(n)
				ok = ok && good
			}
			if ok != (err == nil) || ok && r.Tokens != len(batches[0]) {
				t.Fatalf("%q: token batch: %+v %v, reference ok %v", data, r, err, ok)
			}
		}
	})
}

// FuzzTokenizeBody checks that the /tokenize body built from valid JSON messages and
// options is valid JSON carrying them.
func FuzzTokenizeBody(f *testing.F) {
	f.Add([]byte(chatSamples[2]), []byte(`{"enable_thinking":true}`), []byte(`[{"title":"t","text":"x"}]`), []byte(`"high"`), "org/model")
	f.Add([]byte(chatSamples[0]), []byte(``), []byte(``), []byte(`"none"`), "m\x00\"é")
	f.Add([]byte(chatSamples[1]), []byte(`{}`), []byte(`null`), []byte(``), "")
	f.Fuzz(func(t *testing.T, msgs, kwargs, docs, effort []byte, model string) {
		o := Options{ChatTemplateKwargs: kwargs, Documents: docs, ReasoningEffort: effort, AddGenerationPrompt: []byte("true")}
		body, err := appendTokenizeBody(nil, model, kindChat, msgs, &o, true)
		for _, v := range [][]byte{msgs, kwargs, docs, effort} {
			if len(v) > 0 && !json.Valid(v) {
				return
			}
		}
		if len(jsonscan.TrimWS(msgs)) == 0 || (present(kwargs) && jsonscan.TrimWS(kwargs)[0] != '{') {
			return
		}
		if err != nil {
			t.Fatalf("valid input rejected: %v", err)
		}
		var got map[string]json.RawMessage
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("body is not JSON: %v\n%s", err, body)
		}
		var m string
		if json.Unmarshal(got["model"], &m) != nil || (utf8.ValidString(model) && m != model) {
			t.Fatalf("model %q became %s", model, got["model"])
		}
		if !bytes.Equal(got["messages"], jsonscan.TrimWS(msgs)) {
			t.Fatalf("messages changed: %s", got["messages"])
		}
		if present(docs) || present(effort) {
			var kw map[string]json.RawMessage
			if err := json.Unmarshal(got["chat_template_kwargs"], &kw); err != nil {
				t.Fatalf("kwargs: %v", err)
			}
			if present(docs) && !bytes.Equal(kw["documents"], jsonscan.TrimWS(docs)) || present(effort) && !bytes.Equal(kw["reasoning_effort"], jsonscan.TrimWS(effort)) {
				t.Fatalf("kwargs lost documents or reasoning_effort: %s", got["chat_template_kwargs"])
			}
		}
	})
}

// firstIsString reports whether data is an array whose first element is a string.
func firstIsString(data []byte) bool {
	var elems []json.RawMessage
	return json.Unmarshal(data, &elems) == nil && len(elems) > 0 && elems[0][0] == '"'
}
