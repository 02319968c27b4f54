package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"
)

// stream answers one generation request, streamed or not, from the engine's progress.
type stream struct {
	w        *Worker
	rk       *Rank
	rw       http.ResponseWriter
	p        *genParams
	r        *request
	chat     bool
	dieAfter int

	created  int64
	idJS     []byte
	sent     int // tokens written
	chunks   int // SSE events written
	lastSent time.Time
	buf      []byte
}

// progress is a snapshot of a request taken under the engine lock.
type progress struct {
	out     int
	done    bool
	err     error
	finish  string
	cached  int
	held    bool    // the KV is held for a P/D transfer
	heldIDs []int64 // its block ids
}

func (s *stream) snapshot() progress {
	e := s.rk.eng
	e.mu.Lock()
	defer e.mu.Unlock()
	r := s.r
	return progress{out: r.out, done: r.done && !r.aborted, err: r.err, finish: r.finish, cached: r.cached,
		held: r.held, heldIDs: r.heldIDs}
}

// abortConn drops the client connection without finishing the response.
func abortConn() { panic(http.ErrAbortHandler) }

func (s *stream) run(ctx context.Context) {
	s.created = time.Now().Unix()
	s.idJS, _ = json.Marshal(s.r.id)
	var fl http.Flusher
	if s.p.stream {
		fl, _ = s.rw.(http.Flusher)
		h := s.rw.Header()
		h.Set("Content-Type", "text/event-stream; charset=utf-8")
		h.Set("Cache-Control", "no-cache")
		s.rw.WriteHeader(http.StatusOK)
		if fl != nil {
			fl.Flush()
		}
	}
	for {
		select {
		case <-s.r.notify:
		case <-ctx.Done():
			s.rk.eng.abort(s.r)
			return
		case <-s.w.ctx.Done():
			s.rk.eng.abort(s.r)
			abortConn()
		}
		pr := s.snapshot()
		if pr.err != nil {
			// The engine restarted under the request: a real client sees the
			// connection drop.
			abortConn()
		}
		if !s.p.stream {
			if pr.done {
				s.finishUnary(pr)
				return
			}
			continue
		}
		// Chunks are cut at fixed token counts whatever the handler's wake-up timing:
		// the first token alone, then StreamChunkTokens per chunk, the rest at the end.
		k := s.w.cfg.StreamChunkTokens
		limit := pr.out
		if !pr.done && limit > 0 {
			limit = 1 + (limit-1)/k*k
		}
		for limit > s.sent {
			now := time.Now()
			n := min(limit-s.sent, k)
			if s.sent == 0 {
				n = 1
				s.rk.m.ttft.Observe(now.Sub(s.r.arrival).Seconds())
				if s.chat {
					s.write(fl, s.roleChunk())
					if s.dying() {
						return
					}
				}
			} else {
				s.rk.m.itl.Observe(now.Sub(s.lastSent).Seconds() / float64(n))
			}
			s.lastSent = now
			finish := ""
			if pr.done && s.sent+n == limit {
				finish = pr.finish
			}
			s.write(fl, s.contentChunk(s.sent, s.sent+n, finish, pr))
			s.sent += n
			if s.dying() {
				return
			}
		}
		if pr.done {
			if s.p.includeUsage {
				s.write(fl, s.usageChunk(pr))
			}
			s.write(fl, []byte("data: [DONE]\n\n"))
			s.observeEnd(pr)
			return
		}
	}
}

// dying applies the die-mid-stream fault after the configured number of chunks.
func (s *stream) dying() bool {
	if s.dieAfter <= 0 || s.chunks < s.dieAfter {
		return false
	}
	s.w.died.Add(1)
	s.rk.eng.abort(s.r)
	abortConn()
	return true
}

func (s *stream) write(fl http.Flusher, b []byte) {
	_, _ = s.rw.Write(b)
	if fl != nil {
		fl.Flush()
	}
	s.chunks++
}

func (s *stream) observeEnd(pr progress) {
	s.rk.m.e2e.Observe(time.Since(s.r.arrival).Seconds())
	s.rk.m.finished.WithLabelValues(pr.finish).Inc()
}

// appendText appends the text of output tokens [from, to).
func (s *stream) appendText(dst []byte, from, to int) []byte {
	for i := from; i < to; i++ {
		dst = append(dst, outputWords[outputWordIndex(s.r.outSeed, i)]...)
	}
	return dst
}

func (s *stream) head(object string) []byte {
	b := append(s.buf[:0], `data: {"id":`...)
	b = append(b, s.idJS...)
	b = append(b, `,"object":"`...)
	b = append(b, object...)
	b = append(b, `","created":`...)
	b = strconv.AppendInt(b, s.created, 10)
	b = append(b, `,"model":`...)
	b = append(b, s.w.modelJSON(s.r.loraID)...)
	return b
}

func (s *stream) roleChunk() []byte {
	b := s.head("chat.completion.chunk")
	b = append(b, `,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}`+"\n\n"...)
	s.buf = b
	return b
}

func (s *stream) contentChunk(from, to int, finish string, pr progress) []byte {
	var b []byte
	if s.chat {
		b = s.head("chat.completion.chunk")
		b = append(b, `,"choices":[{"index":0,"delta":{"content":"`...)
		b = s.appendText(b, from, to)
		b = append(b, `"},"logprobs":null,"finish_reason":`...)
	} else {
		b = s.head("text_completion")
		b = append(b, `,"choices":[{"index":0,"text":"`...)
		b = s.appendText(b, from, to)
		b = append(b, `","logprobs":null,"finish_reason":`...)
	}
	if finish == "" {
		b = append(b, `null`...)
	} else {
		b = append(b, '"')
		b = append(b, finish...)
		b = append(b, '"')
	}
	b = append(b, `,"stop_reason":null}]`...)
	if s.p.contUsage {
		b = append(b, `,"usage":`...)
		b = s.appendUsage(b, to, pr.cached)
	}
	b = append(b, "}\n\n"...)
	s.buf = b
	return b
}

func (s *stream) usageChunk(pr progress) []byte {
	object := "text_completion"
	if s.chat {
		object = "chat.completion.chunk"
	}
	b := s.head(object)
	b = append(b, `,"choices":[],"usage":`...)
	b = s.appendUsage(b, pr.out, pr.cached)
	b = append(b, "}\n\n"...)
	s.buf = b
	return b
}

func (s *stream) appendUsage(b []byte, out, cached int) []byte {
	b = append(b, `{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(s.r.promptLen), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(s.r.promptLen+out), 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, int64(out), 10)
	b = append(b, `,"prompt_tokens_details":{"cached_tokens":`...)
	b = strconv.AppendInt(b, int64(cached), 10)
	b = append(b, "}}"...)
	return b
}

// Usage is the usage object of a response.
type Usage struct {
	PromptTokens        int `json:"prompt_tokens"`
	TotalTokens         int `json:"total_tokens"`
	CompletionTokens    int `json:"completion_tokens"`
	PromptTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
}

func (s *stream) finishUnary(pr progress) {
	if s.dieAfter > 0 {
		s.w.died.Add(1)
		abortConn()
	}
	now := time.Now()
	s.rk.m.ttft.Observe(now.Sub(s.r.arrival).Seconds())
	s.observeEnd(pr)
	text := string(s.appendText(nil, 0, pr.out))
	var u Usage
	u.PromptTokens, u.CompletionTokens, u.TotalTokens = s.r.promptLen, pr.out, s.r.promptLen+pr.out
	u.PromptTokensDetails.CachedTokens = pr.cached
	model := json.RawMessage(s.w.modelJSON(s.r.loraID))
	if s.chat {
		type msg struct {
			Role      string `json:"role"`
			Content   string `json:"content"`
			ToolCalls []any  `json:"tool_calls"`
		}
		type choice struct {
			Index        int     `json:"index"`
			Message      msg     `json:"message"`
			Logprobs     any     `json:"logprobs"`
			FinishReason string  `json:"finish_reason"`
			StopReason   *string `json:"stop_reason"`
		}
		writeJSON(s.rw, struct {
			ID      string          `json:"id"`
			Object  string          `json:"object"`
			Created int64           `json:"created"`
			Model   json.RawMessage `json:"model"`
			Choices []choice        `json:"choices"`
			Usage   Usage           `json:"usage"`
			KV      any             `json:"kv_transfer_params,omitempty"`
		}{s.r.id, "chat.completion", s.created, model,
			[]choice{{Message: msg{Role: "assistant", Content: text, ToolCalls: []any{}}, FinishReason: pr.finish}}, u, s.pdResponseParams(pr)})
		return
	}
	type choice struct {
		Index        int     `json:"index"`
		Text         string  `json:"text"`
		Logprobs     any     `json:"logprobs"`
		FinishReason string  `json:"finish_reason"`
		StopReason   *string `json:"stop_reason"`
	}
	writeJSON(s.rw, struct {
		ID      string          `json:"id"`
		Object  string          `json:"object"`
		Created int64           `json:"created"`
		Model   json.RawMessage `json:"model"`
		Choices []choice        `json:"choices"`
		Usage   Usage           `json:"usage"`
		KV      any             `json:"kv_transfer_params,omitempty"`
	}{s.r.id, "text_completion", s.created, model, []choice{{Text: text, FinishReason: pr.finish}}, u, s.pdResponseParams(pr)})
}

func readAllLimit(r io.Reader) ([]byte, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(r)
	return b.Bytes(), err
}

// strictJSON decodes one JSON value, rejecting unknown fields and trailing data.
func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}
