package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
)

// DefaultModel is the model the fake upstream serves and the load generator asks for.
const DefaultModel = "bench-model"

// UpstreamOptions configure a fake upstream. The zero value is valid: every field has a
// default.
type UpstreamOptions struct {
	// Model is the only model served; other models get 404. Default DefaultModel.
	Model string
	// Chunks is the number of SSE chunks of a streaming answer, [DONE] not counted.
	// Default 200.
	Chunks int
	// ChunkGap is the pause before each chunk after the first. Default 0 (no pause: the
	// stream is produced as fast as the connection takes it, which is what an overhead
	// measurement wants).
	ChunkGap time.Duration
	// CompletionBytes is the approximate size of a non-streaming answer. Default 2048.
	CompletionBytes int
	// NoTokenize leaves out vLLM's POST /tokenize (it answers 404), as a worker without
	// it would. Default false: /tokenize is served.
	NoTokenize bool
}

func (o *UpstreamOptions) defaults() {
	if o.Model == "" {
		o.Model = DefaultModel
	}
	if o.Chunks <= 0 {
		o.Chunks = 200
	}
	if o.CompletionBytes <= 0 {
		o.CompletionBytes = 2048
	}
}

// Upstream is a fake OpenAI-compatible inference worker that answers at once, so that a
// proxy benchmark measures the proxy and not the worker. Every answer is built once, at
// construction: a request costs a small JSON decode and a copy.
//
// It serves POST /v1/chat/completions (a vLLM-shaped chat completion, or with
// "stream": true a vLLM-shaped SSE stream of [UpstreamOptions.Chunks] chunks and
// "data: [DONE]"), POST /tokenize (vLLM's answer shape, with fake token ids: one per 4
// bytes of text, a hash of those bytes, so equal texts give equal ids), GET /v1/models
// and GET /health. It is safe for concurrent use.
type Upstream struct {
	opts       UpstreamOptions
	completion []byte   // the non-streaming body
	chunks     [][]byte // the SSE events, [DONE] last
	stream     []byte   // the chunks concatenated: the whole streaming body
	models     []byte
	srv        *fasthttp.Server
}

// NewUpstream builds a fake upstream; it does not listen until [Upstream.Serve].
func NewUpstream(o UpstreamOptions) *Upstream {
	o.defaults()
	u := &Upstream{opts: o}
	u.completion = buildCompletion(o.Model, o.CompletionBytes)
	u.chunks = buildChunks(o.Model, o.Chunks)
	for _, c := range u.chunks {
		u.stream = append(u.stream, c...)
	}
	u.models = fmt.Appendf(nil, `{"object":"list","data":[{"id":%q,"object":"model","created":1763780000,"owned_by":"vllm","root":%q,"max_model_len":32768}]}`, o.Model, o.Model)
	u.srv = &fasthttp.Server{
		Handler:                       u.handle,
		Name:                          "fake-vllm",
		DisableHeaderNamesNormalizing: true,
		NoDefaultDate:                 true,
		IdleTimeout:                   2 * time.Minute,
		MaxRequestBodySize:            32 << 20,
	}
	return u
}

// Serve answers requests on ln until [Upstream.Shutdown]; it returns nil after a
// shutdown.
func (u *Upstream) Serve(ln net.Listener) error {
	if err := u.srv.Serve(ln); err != nil {
		return fmt.Errorf("fake upstream: %w", err)
	}
	return nil
}

// Shutdown stops accepting and waits for open requests until ctx ends.
func (u *Upstream) Shutdown(ctx context.Context) error {
	if err := u.srv.ShutdownWithContext(ctx); err != nil {
		return fmt.Errorf("fake upstream shutdown: %w", err)
	}
	return nil
}

// CompletionBody returns the exact body of a non-streaming answer. The caller must not
// modify it.
func (u *Upstream) CompletionBody() []byte { return u.completion }

// StreamBody returns the exact body of a streaming answer: every SSE event, [DONE]
// included. The caller must not modify it.
func (u *Upstream) StreamBody() []byte { return u.stream }

// chatRequest holds the request fields the fake upstream looks at.
type chatRequest struct {
	Model  string `json:"model"`
	Stream bool   `json:"stream"`
}

// parseChatRequest decodes the fields of a chat request the fake upstream needs. It
// rejects bodies that are not a JSON object.
func parseChatRequest(body []byte) (chatRequest, error) {
	var r chatRequest
	if err := json.Unmarshal(body, &r); err != nil {
		return r, fmt.Errorf("decode chat request: %w", err)
	}
	if r.Model == "" {
		return r, errors.New("decode chat request: no model")
	}
	return r, nil
}

// tokenizeRequest is vLLM's /tokenize request: a prompt or chat messages.
type tokenizeRequest struct {
	Model    string `json:"model"`
	Prompt   string `json:"prompt"`
	Messages []struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	} `json:"messages"`
}

// parseTokenizeRequest decodes a /tokenize request. It rejects bodies that are not a
// JSON object with a model.
func parseTokenizeRequest(body []byte) (tokenizeRequest, error) {
	var r tokenizeRequest
	if err := json.Unmarshal(body, &r); err != nil {
		return r, fmt.Errorf("decode tokenize request: %w", err)
	}
	if r.Model == "" {
		return r, errors.New("decode tokenize request: no model")
	}
	return r, nil
}

// tokenizeAnswer returns vLLM's /tokenize answer for r with fake ids: the chat's roles
// and contents (or the prompt) cut into 4-byte pieces, each hashed (FNV-1a) into a
// 32000-token vocabulary.
func tokenizeAnswer(r tokenizeRequest) []byte {
	var ids []uint32
	add := func(s string) {
		for i := 0; i < len(s); i += 4 {
			h := uint32(2166136261)
			for _, c := range []byte(s[i:min(i+4, len(s))]) {
				h = (h ^ uint32(c)) * 16777619
			}
			ids = append(ids, h%32000)
		}
	}
	add(r.Prompt)
	for _, m := range r.Messages {
		add(m.Role)
		add(m.Content)
	}
	b := []byte(`{"count":`)
	b = strconv.AppendInt(b, int64(len(ids)), 10)
	b = append(b, `,"max_model_len":32768,"tokens":[`...)
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(id), 10)
	}
	return append(b, `],"token_strs":null}`...)
}

func (u *Upstream) handle(ctx *fasthttp.RequestCtx) {
	switch string(ctx.Path()) {
	case "/v1/chat/completions":
		if !ctx.IsPost() {
			errorJSON(ctx, fasthttp.StatusMethodNotAllowed, "method not allowed")
			return
		}
		r, err := parseChatRequest(ctx.PostBody())
		if err != nil {
			errorJSON(ctx, fasthttp.StatusBadRequest, err.Error())
			return
		}
		if r.Model != u.opts.Model {
			errorJSON(ctx, fasthttp.StatusNotFound, "the model "+strconv.Quote(r.Model)+" does not exist")
			return
		}
		if !r.Stream {
			ctx.SetContentType("application/json")
			ctx.SetBody(u.completion)
			return
		}
		ctx.SetContentType("text/event-stream")
		ctx.Response.Header.Set("Cache-Control", "no-cache")
		ctx.SetBodyStreamWriter(u.writeStream)
	case "/tokenize":
		if u.opts.NoTokenize {
			errorJSON(ctx, fasthttp.StatusNotFound, "not found")
			return
		}
		if !ctx.IsPost() {
			errorJSON(ctx, fasthttp.StatusMethodNotAllowed, "method not allowed")
			return
		}
		r, err := parseTokenizeRequest(ctx.PostBody())
		if err != nil {
			errorJSON(ctx, fasthttp.StatusBadRequest, err.Error())
			return
		}
		if r.Model != u.opts.Model {
			errorJSON(ctx, fasthttp.StatusNotFound, "the model "+strconv.Quote(r.Model)+" does not exist")
			return
		}
		ctx.SetContentType("application/json")
		ctx.SetBody(tokenizeAnswer(r))
	case "/v1/models":
		ctx.SetContentType("application/json")
		ctx.SetBody(u.models)
	case "/health":
		ctx.SetStatusCode(fasthttp.StatusOK)
	default:
		errorJSON(ctx, fasthttp.StatusNotFound, "not found")
	}
}

// writeStream sends every event with a flush after each, as vLLM does per token.
func (u *Upstream) writeStream(w *bufio.Writer) {
	for i, c := range u.chunks {
		if i > 0 && u.opts.ChunkGap > 0 {
			time.Sleep(u.opts.ChunkGap)
		}
		if _, err := w.Write(c); err != nil {
			return
		}
		if err := w.Flush(); err != nil {
			return
		}
	}
}

func errorJSON(ctx *fasthttp.RequestCtx, code int, msg string) {
	ctx.SetStatusCode(code)
	ctx.SetContentType("application/json")
	b, _ := json.Marshal(map[string]any{"error": map[string]any{
		"message": msg, "type": "BadRequestError", "param": nil, "code": code,
	}})
	ctx.SetBody(b)
}

// filler is the text the fake answers and prompts are made of.
const filler = "The quick brown fox jumps over the lazy dog while the router forwards tokens. "

func fill(n int) string {
	if n <= 0 {
		return ""
	}
	return strings.Repeat(filler, n/len(filler)+1)[:n]
}

// buildCompletion returns a vLLM-shaped chat completion of about size bytes.
func buildCompletion(model string, size int) []byte {
	build := func(content string) []byte {
		b, err := json.Marshal(map[string]any{
			"id": "chatcmpl-bench0000000000000000", "object": "chat.completion",
			"created": 1763780000, "model": model,
			"choices": []any{map[string]any{
				"index": 0, "message": map[string]any{"role": "assistant", "content": content, "tool_calls": []any{}},
				"logprobs": nil, "finish_reason": "stop", "stop_reason": nil,
			}},
			"usage": map[string]any{
				"prompt_tokens": 412, "total_tokens": 812, "completion_tokens": 400,
				"prompt_tokens_details": map[string]any{"cached_tokens": 0},
			},
			"prompt_logprobs": nil,
		})
		if err != nil {
			panic(err) // static shapes: cannot fail
		}
		return b
	}
	base := len(build(""))
	return build(fill(size - base))
}

// buildChunks returns n vLLM-shaped chat.completion.chunk SSE events (the first with
// the assistant role, the last with finish_reason "stop") and the [DONE] event.
func buildChunks(model string, n int) [][]byte {
	head := fmt.Sprintf(`data: {"id":"chatcmpl-bench0000000000000000","object":"chat.completion.chunk","created":1763780000,"model":%q,"choices":[{"index":0,"delta":`, model)
	out := make([][]byte, 0, n+1)
	for i := 0; i < n; i++ {
		var delta, finish string
		switch i {
		case 0:
			delta, finish = `{"role":"assistant","content":""}`, "null"
		case n - 1:
			delta, finish = `{"content":" end."}`, `"stop"`
		default:
			delta, finish = fmt.Sprintf(`{"content":" tok%d"}`, i), "null"
		}
		out = append(out, []byte(head+delta+`,"logprobs":null,"finish_reason":`+finish+"}]}\n\n"))
	}
	return append(out, []byte("data: [DONE]\n\n"))
}

// ChatRequestBody returns a chat completion request for model of about size
// bytes (a system and a user message), streaming or not.
func ChatRequestBody(model string, size int, stream bool) []byte {
	build := func(content string) []byte {
		b, err := json.Marshal(map[string]any{
			"model": model,
			"messages": []any{
				map[string]any{"role": "system", "content": "You are a helpful assistant. Answer briefly."},
				map[string]any{"role": "user", "content": content},
			},
			"max_tokens": 200, "temperature": 0, "stream": stream,
		})
		if err != nil {
			panic(err) // static shapes: cannot fail
		}
		return b
	}
	base := len(build(""))
	return build(fill(size - base))
}
