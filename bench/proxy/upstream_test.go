package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// startUpstream serves a fake upstream on a loopback port for the test's lifetime.
func startUpstream(t *testing.T, o UpstreamOptions) (*Upstream, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := NewUpstream(o)
	done := make(chan error, 1)
	go func() { done <- u.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := u.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return u, "http://" + ln.Addr().String()
}

func post(t *testing.T, url string, body []byte) (int, []byte, string) {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(url)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.SetBody(body)
	if err := fasthttp.DoTimeout(req, resp, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode(), append([]byte(nil), resp.Body()...), string(resp.Header.ContentType())
}

func TestUpstreamCompletion(t *testing.T) {
	u, base := startUpstream(t, UpstreamOptions{})
	code, body, ct := post(t, base+"/v1/chat/completions", ChatRequestBody(DefaultModel, 2048, false))
	if code != 200 || ct != "application/json" {
		t.Fatalf("status %d, content type %q", code, ct)
	}
	if !bytes.Equal(body, u.CompletionBody()) {
		t.Fatal("body differs from CompletionBody")
	}
	if n := len(body); n < 1900 || n > 2200 {
		t.Errorf("completion is %d bytes, want about 2048", n)
	}
	var c struct {
		Object  string `json:"object"`
		Choices []struct {
			Message      struct{ Role, Content string } `json:"message"`
			FinishReason string                         `json:"finish_reason"`
		} `json:"choices"`
	}
	if err := json.Unmarshal(body, &c); err != nil {
		t.Fatal(err)
	}
	if c.Object != "chat.completion" || len(c.Choices) != 1 || c.Choices[0].Message.Role != "assistant" || c.Choices[0].FinishReason != "stop" {
		t.Errorf("unexpected completion %s", body)
	}
}

func TestUpstreamStream(t *testing.T) {
	u, base := startUpstream(t, UpstreamOptions{Chunks: 200})
	code, body, ct := post(t, base+"/v1/chat/completions", ChatRequestBody(DefaultModel, 2048, true))
	if code != 200 || ct != "text/event-stream" {
		t.Fatalf("status %d, content type %q", code, ct)
	}
	if !bytes.Equal(body, u.StreamBody()) {
		t.Fatal("body differs from StreamBody")
	}
	events := strings.Split(strings.TrimSuffix(string(body), "\n\n"), "\n\n")
	if len(events) != 201 || events[200] != "data: [DONE]" {
		t.Fatalf("%d events, last %q; want 200 chunks and [DONE]", len(events), events[len(events)-1])
	}
	for i, e := range events[:200] {
		var c struct {
			Object  string `json:"object"`
			Choices []struct {
				Delta        struct{ Role, Content string } `json:"delta"`
				FinishReason *string                        `json:"finish_reason"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(strings.TrimPrefix(e, "data: ")), &c); err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		if c.Object != "chat.completion.chunk" || len(c.Choices) != 1 {
			t.Fatalf("chunk %d: %s", i, e)
		}
		last := c.Choices[0].FinishReason != nil
		if last != (i == 199) || (i == 0) != (c.Choices[0].Delta.Role == "assistant") {
			t.Errorf("chunk %d: role/finish in the wrong place: %s", i, e)
		}
	}
}

func TestUpstreamErrors(t *testing.T) {
	_, base := startUpstream(t, UpstreamOptions{})
	for _, tc := range []struct {
		name string
		body string
		want int
	}{
		{"malformed", `{"model":`, 400},
		{"no model", `{"messages":[]}`, 400},
		{"not an object", `[1,2]`, 400},
		{"unknown model", `{"model":"other","messages":[]}`, 404},
	} {
		code, body, _ := post(t, base+"/v1/chat/completions", []byte(tc.body))
		var e struct {
			Error struct{ Message string } `json:"error"`
		}
		if code != tc.want || json.Unmarshal(body, &e) != nil || e.Error.Message == "" {
			t.Errorf("%s: status %d body %s; want %d with an OpenAI error", tc.name, code, body, tc.want)
		}
	}
}

func TestChatRequestBody(t *testing.T) {
	for _, stream := range []bool{false, true} {
		b := ChatRequestBody(DefaultModel, 2048, stream)
		r, err := parseChatRequest(b)
		if err != nil || r.Model != DefaultModel || r.Stream != stream {
			t.Errorf("stream=%v: parsed %+v, %v", stream, r, err)
		}
		if n := len(b); n < 2000 || n > 2100 {
			t.Errorf("stream=%v: body is %d bytes, want about 2048", stream, n)
		}
	}
}

// FuzzParseChatRequest checks that no request body makes the fake upstream's decoder
// panic, and that what it accepts has a model.
func FuzzParseChatRequest(f *testing.F) {
	f.Add(ChatRequestBody(DefaultModel, 300, false))
	f.Add(ChatRequestBody(DefaultModel, 300, true))
	f.Add([]byte(`{"model":"m","stream":"yes"}`))
	f.Add([]byte(`{"model":null}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseChatRequest(b)
		if err == nil && r.Model == "" {
			t.Fatalf("accepted %q without a model", b)
		}
	})
}

func TestUpstreamTokenize(t *testing.T) {
	_, base := startUpstream(t, UpstreamOptions{})
	req := []byte(`{"model":"bench-model","messages":[{"role":"user","content":"hello world, hello"}],"add_generation_prompt":true}`)
	code, body, ct := post(t, base+"/tokenize", req)
	if code != 200 || ct != "application/json" {
		t.Fatalf("status %d, content type %q: %s", code, ct, body)
	}
	var a struct {
		Count  int      `json:"count"`
		Tokens []uint32 `json:"tokens"`
	}
	if err := json.Unmarshal(body, &a); err != nil {
		t.Fatal(err)
	}
	// "user" is one piece, "hello world, hello" five.
	if a.Count != 6 || len(a.Tokens) != 6 {
		t.Fatalf("answer %s: want 6 tokens", body)
	}
	_, rep, _ := post(t, base+"/tokenize", []byte(`{"model":"bench-model","prompt":"abcdabcdxyz"}`))
	if err := json.Unmarshal(rep, &a); err != nil || len(a.Tokens) != 3 || a.Tokens[0] != a.Tokens[1] || a.Tokens[1] == a.Tokens[2] {
		t.Errorf("abcd abcd xyz gave %s: want two equal ids then another", rep)
	}
	_, again, _ := post(t, base+"/tokenize", req)
	if !bytes.Equal(body, again) {
		t.Error("the same text gave different ids")
	}
	if code, _, _ := post(t, base+"/tokenize", []byte(`{"prompt":"x"}`)); code != 400 {
		t.Errorf("no model: status %d, want 400", code)
	}

	_, off := startUpstream(t, UpstreamOptions{NoTokenize: true})
	if code, _, _ := post(t, off+"/tokenize", req); code != 404 {
		t.Errorf("NoTokenize: status %d, want 404", code)
	}
}

// FuzzParseTokenizeRequest checks that no body makes the /tokenize decoder panic and
// that an accepted request gets a well-formed answer.
func FuzzParseTokenizeRequest(f *testing.F) {
	f.Add([]byte(`{"model":"bench-model","messages":[{"role":"user","content":"hello"}],"add_generation_prompt":true}`))
	f.Add([]byte(`{"model":"bench-model","prompt":"The quick brown fox"}`))
	f.Add([]byte(`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseTokenizeRequest(b)
		if err != nil {
			return
		}
		var a struct {
			Count  int      `json:"count"`
			Tokens []uint32 `json:"tokens"`
		}
		if err := json.Unmarshal(tokenizeAnswer(r), &a); err != nil || a.Count != len(a.Tokens) {
			t.Fatalf("bad answer for %q: %v", b, err)
		}
	})
}
