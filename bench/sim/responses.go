package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"mime"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// This file is kvsim's Responses API (POST /v1/responses, streamed or not; GET and
// DELETE /v1/responses/{id}; POST /v1/responses/{id}/cancel) and its other engine
// endpoints (/detokenize, rerank, score, pooling, classify, audio), faithful enough for
// routing tests. As vLLM with VLLM_ENABLE_RESPONSES_API_STORE=1, a worker keeps the
// responses it answered with store true (the default) in its own memory, and a request
// naming previous_response_id is prompted with that response's conversation (its
// input, then its output as an assistant message) before its own input: a worker that
// does not hold the id answers 404. A Responses request is generated as the equivalent
// chat: instructions as a system message, then the conversation.

// maxStoredResponses bounds a worker's stored responses; the oldest is dropped first.
const maxStoredResponses = 10000

// respStore is a worker's stored responses. Safe for concurrent use.
type respStore struct {
	// mu guards the fields below.
	mu    sync.Mutex
	byID  map[string]*storedResponse
	order []string // ids, oldest first
}

// storedResponse is one stored response: its object as answered and its conversation.
type storedResponse struct {
	object []byte
	convo  []Message // input and output, without the instructions
}

func newRespStore() *respStore { return &respStore{byID: map[string]*storedResponse{}} }

func (s *respStore) get(id string) *storedResponse {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byID[id]
}

func (s *respStore) put(id string, r *storedResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.order) >= maxStoredResponses {
		delete(s.byID, s.order[0])
		s.order = s.order[1:]
	}
	s.byID[id] = r
	s.order = append(s.order, id)
}

func (s *respStore) remove(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.byID[id]; !ok {
		return false
	}
	delete(s.byID, id)
	return true
}

// responsesRequest is the part of a POST /v1/responses body kvsim reads.
type responsesRequest struct {
	Model              string          `json:"model"`
	Input              json.RawMessage `json:"input"`
	Instructions       *string         `json:"instructions"`
	PreviousResponseID *string         `json:"previous_response_id"`
	Store              *bool           `json:"store"`
	Stream             bool            `json:"stream"`
	MaxOutputTokens    *int64          `json:"max_output_tokens"`
	CacheSalt          string          `json:"cache_salt"`
}

type responseItem struct {
	Type    string          `json:"type"`
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// responsesInput decodes input: a string (one user message) or a list of message
// items whose content is a string or text parts.
func responsesInput(raw json.RawMessage) ([]Message, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, badRequest("input is required")
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, badRequest("input: %v", err)
		}
		return []Message{{Role: "user", Content: s}}, nil
	}
	var items []responseItem
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, badRequest("input must be a string or an array of items")
	}
	msgs := make([]Message, 0, len(items))
	for i, it := range items {
		if it.Type != "" && it.Type != "message" {
			return nil, badRequest("input[%d]: item type %q is not supported by kvsim", i, it.Type)
		}
		if it.Role == "" {
			return nil, badRequest("input[%d].role is required", i)
		}
		c, err := messageText(it.Content)
		if err != nil {
			return nil, badRequest("input[%d].content: %v", i, err)
		}
		msgs = append(msgs, Message{Role: it.Role, Content: c})
	}
	return msgs, nil
}

func notFound(format string, args ...any) *apiError {
	return &apiError{status: http.StatusNotFound, typ: "invalid_request_error", msg: fmt.Sprintf(format, args...)}
}

// serveResponses answers POST /v1/responses.
func (w *Worker) serveResponses(rw http.ResponseWriter, hr *http.Request) {
	if w.down() {
		writeError(rw, &apiError{status: http.StatusServiceUnavailable, typ: "ServiceUnavailableError", msg: "engine is restarting"})
		return
	}
	body, err := readBody(hr)
	if err != nil {
		writeError(rw, err)
		return
	}
	var rq responsesRequest
	if err := json.Unmarshal(body, &rq); err != nil {
		writeError(rw, badRequest("invalid JSON body: %v", err))
		return
	}
	loraID, ok := w.loraID(rq.Model)
	if !ok {
		writeError(rw, &apiError{status: http.StatusNotFound, typ: "NotFoundError", msg: fmt.Sprintf("The model `%s` does not exist.", rq.Model)})
		return
	}
	input, err := responsesInput(rq.Input)
	if err != nil {
		writeError(rw, err)
		return
	}
	var convo []Message
	if rq.PreviousResponseID != nil && *rq.PreviousResponseID != "" {
		prev := w.resp.get(*rq.PreviousResponseID)
		if prev == nil {
			writeError(rw, notFound("Response with id '%s' not found.", *rq.PreviousResponseID))
			return
		}
		convo = append(convo, prev.convo...)
	}
	convo = append(convo, input...)
	msgs := convo
	if rq.Instructions != nil && *rq.Instructions != "" {
		msgs = append([]Message{{Role: "system", Content: *rq.Instructions}}, convo...)
	}
	chatBody, err := json.Marshal(map[string]any{"model": rq.Model, "messages": chatMessages(msgs)})
	if err != nil {
		writeError(rw, err)
		return
	}
	toks, err := w.tz.chat(chatBody, msgs, true)
	if err != nil {
		writeError(rw, badRequest("%v", err))
		return
	}
	p := &genParams{chat: true, model: rq.Model, tokens: toks, stream: rq.Stream, salt: rq.CacheSalt}
	if rq.MaxOutputTokens != nil {
		if *rq.MaxOutputTokens < 1 || *rq.MaxOutputTokens > math.MaxInt32 {
			writeError(rw, badRequest("max_output_tokens must be at least 1, got %d", *rq.MaxOutputTokens))
			return
		}
		p.maxTokens = int(*rq.MaxOutputTokens)
	}
	n := len(toks)
	if n == 0 || n >= w.maxLen || (p.maxTokens > 0 && n+p.maxTokens > w.maxLen) {
		writeError(rw, badRequest("This model's maximum context length is %d tokens; the input has %d.", w.maxLen, n))
		return
	}
	if w.roll(w.Faults().ErrorRate) {
		w.failed.Add(1)
		writeError(rw, &apiError{status: http.StatusInternalServerError, typ: "InternalServerError", msg: "kvsim: injected fault"})
		return
	}
	rk, err := w.pickRank(hr)
	if err != nil {
		writeError(rw, err)
		return
	}
	req := w.newRequest(p, loraID)
	req.id = "resp_" + strings.TrimPrefix(req.id, "chatcmpl-")
	rk.eng.submit(req)
	rs := &respStream{s: stream{w: w, rk: rk, rw: rw, p: p, r: req, chat: true}, rq: &rq, convo: convo,
		store: rq.Store == nil || *rq.Store, created: time.Now().Unix(), msgID: "msg_" + req.id[len("resp_"):]}
	rs.run(hr)
}

// chatMessages turns msgs into the JSON shape of chat messages.
func chatMessages(msgs []Message) []map[string]string {
	out := make([]map[string]string, len(msgs))
	for i, m := range msgs {
		out[i] = map[string]string{"role": m.Role, "content": m.Content}
	}
	return out
}

// respStream answers one Responses request from the engine's progress.
type respStream struct {
	s       stream
	rq      *responsesRequest
	convo   []Message
	store   bool
	created int64
	msgID   string
	seq     int
	fl      http.Flusher
}

func (r *respStream) run(hr *http.Request) {
	s := &r.s
	if s.p.stream {
		r.fl, _ = s.rw.(http.Flusher)
		h := s.rw.Header()
		h.Set("Content-Type", "text/event-stream; charset=utf-8")
		h.Set("Cache-Control", "no-cache")
		s.rw.WriteHeader(http.StatusOK)
		r.event("response.created", map[string]any{"response": r.object("in_progress", "", progress{})})
		r.event("response.in_progress", map[string]any{"response": r.object("in_progress", "", progress{})})
		r.event("response.output_item.added", map[string]any{"output_index": 0, "item": map[string]any{
			"id": r.msgID, "type": "message", "status": "in_progress", "role": "assistant", "content": []any{}}})
		r.event("response.content_part.added", map[string]any{"item_id": r.msgID, "output_index": 0, "content_index": 0,
			"part": map[string]any{"type": "output_text", "text": "", "annotations": []any{}}})
	}
	for {
		select {
		case <-s.r.notify:
		case <-hr.Context().Done():
			s.rk.eng.abort(s.r)
			return
		case <-s.w.ctx.Done():
			s.rk.eng.abort(s.r)
			abortConn()
		}
		pr := s.snapshot()
		if pr.err != nil {
			abortConn()
		}
		if s.p.stream && pr.out > s.sent {
			if s.sent == 0 {
				s.rk.m.ttft.Observe(time.Since(s.r.arrival).Seconds())
			}
			delta := string(s.appendText(nil, s.sent, pr.out))
			s.sent = pr.out
			r.event("response.output_text.delta", map[string]any{"item_id": r.msgID, "output_index": 0, "content_index": 0, "delta": delta})
		}
		if !pr.done {
			continue
		}
		text := string(s.appendText(nil, 0, pr.out))
		obj := r.object("completed", text, pr)
		if r.store {
			convo := append(append([]Message(nil), r.convo...), Message{Role: "assistant", Content: text})
			js, _ := json.Marshal(obj)
			s.w.resp.put(s.r.id, &storedResponse{object: js, convo: convo})
		}
		s.observeEnd(pr)
		if !s.p.stream {
			s.rk.m.ttft.Observe(time.Since(s.r.arrival).Seconds())
			writeJSON(s.rw, obj)
			return
		}
		part := map[string]any{"type": "output_text", "text": text, "annotations": []any{}}
		r.event("response.output_text.done", map[string]any{"item_id": r.msgID, "output_index": 0, "content_index": 0, "text": text})
		r.event("response.content_part.done", map[string]any{"item_id": r.msgID, "output_index": 0, "content_index": 0, "part": part})
		r.event("response.output_item.done", map[string]any{"output_index": 0, "item": r.message(text, "completed")})
		r.event("response.completed", map[string]any{"response": obj})
		return
	}
}

// event writes one Responses stream event.
func (r *respStream) event(typ string, fields map[string]any) {
	fields["type"] = typ
	fields["sequence_number"] = r.seq
	r.seq++
	js, _ := json.Marshal(fields)
	b := make([]byte, 0, len(js)+len(typ)+16)
	b = append(b, "event: "...)
	b = append(b, typ...)
	b = append(b, "\ndata: "...)
	b = append(b, js...)
	b = append(b, "\n\n"...)
	r.s.write(r.fl, b)
}

func (r *respStream) message(text, status string) map[string]any {
	return map[string]any{"id": r.msgID, "type": "message", "status": status, "role": "assistant",
		"content": []any{map[string]any{"type": "output_text", "text": text, "annotations": []any{}}}}
}

// object is the response object in its state: in progress (no output, no usage) or
// completed.
func (r *respStream) object(status, text string, pr progress) map[string]any {
	o := map[string]any{
		"id": r.s.r.id, "object": "response", "created_at": r.created, "status": status,
		"model": json.RawMessage(r.s.w.modelJSON(r.s.r.loraID)), "output": []any{},
		"previous_response_id": r.rq.PreviousResponseID, "instructions": r.rq.Instructions,
		"store": r.store, "parallel_tool_calls": true, "tool_choice": "auto", "tools": []any{},
		"text": map[string]any{"format": map[string]any{"type": "text"}}, "usage": nil,
		"error": nil, "incomplete_details": nil, "metadata": map[string]any{},
	}
	if status == "completed" {
		o["output"] = []any{r.message(text, "completed")}
		o["usage"] = map[string]any{
			"input_tokens": r.s.r.promptLen, "input_tokens_details": map[string]any{"cached_tokens": pr.cached},
			"output_tokens": pr.out, "output_tokens_details": map[string]any{"reasoning_tokens": 0},
			"total_tokens": r.s.r.promptLen + pr.out,
		}
	}
	return o
}

// serveResponseByID answers GET and DELETE /v1/responses/{id} and POST
// /v1/responses/{id}/cancel.
func (w *Worker) serveResponseByID(rw http.ResponseWriter, hr *http.Request) {
	id := hr.PathValue("id")
	sr := w.resp.get(id)
	if sr == nil {
		writeError(rw, notFound("Response with id '%s' not found.", id))
		return
	}
	switch hr.Method {
	case http.MethodDelete:
		w.resp.remove(id)
		writeJSON(rw, map[string]any{"id": id, "object": "response", "deleted": true})
	default: // GET, or cancel of a response that has completed: answered as it is
		rw.Header().Set("Content-Type", "application/json")
		_, _ = rw.Write(sr.object)
	}
}

// serveAux answers the engine endpoints kvsim only needs to answer plausibly: each
// checks the model and echoes the worker's id, so routing tests see where they landed.
func (w *Worker) serveAux(kind string) http.HandlerFunc {
	return func(rw http.ResponseWriter, hr *http.Request) {
		body, err := readBody(hr)
		if err != nil {
			writeError(rw, err)
			return
		}
		var model string
		var fields map[string]json.RawMessage
		if strings.HasPrefix(kind, "audio") {
			model, err = audioModel(hr.Header.Get("Content-Type"), body)
		} else if err = json.Unmarshal(body, &fields); err != nil {
			err = badRequest("invalid JSON body: %v", err)
		} else if m, ok := fields["model"]; ok {
			err = json.Unmarshal(m, &model)
		}
		if err != nil {
			writeError(rw, err)
			return
		}
		if _, ok := w.loraID(model); !ok {
			writeError(rw, &apiError{status: http.StatusNotFound, typ: "NotFoundError", msg: fmt.Sprintf("The model `%s` does not exist.", model)})
			return
		}
		id := kind + "-" + w.id + "-" + strconv.FormatUint(w.reqSeq.Add(1), 10)
		switch kind {
		case "detokenize":
			var ids []uint32
			if err := json.Unmarshal(fields["tokens"], &ids); err != nil {
				writeError(rw, badRequest("tokens must be an array of token ids"))
				return
			}
			words := make([]string, len(ids))
			for i, t := range ids {
				words[i] = "<" + strconv.FormatUint(uint64(t), 10) + ">"
			}
			writeJSON(rw, map[string]any{"prompt": strings.Join(words, "")})
		case "rerank":
			var docs []json.RawMessage
			_ = json.Unmarshal(fields["documents"], &docs)
			res := make([]map[string]any, len(docs))
			for i, d := range docs {
				res[i] = map[string]any{"index": i, "document": map[string]any{"text": json.RawMessage(d)}, "relevance_score": 1 / float64(i+1)}
			}
			writeJSON(rw, map[string]any{"id": id, "model": model, "results": res, "usage": map[string]any{"total_tokens": len(body) / 4}})
		case "score":
			writeJSON(rw, map[string]any{"id": id, "object": "list", "model": model,
				"data": []any{map[string]any{"index": 0, "object": "score", "score": 0.5}}, "usage": map[string]any{"prompt_tokens": len(body) / 4}})
		case "pooling":
			writeJSON(rw, map[string]any{"id": id, "object": "list", "model": model,
				"data": []any{map[string]any{"index": 0, "object": "pooling", "data": []float64{0.1, 0.2, 0.3}}}})
		case "classify":
			writeJSON(rw, map[string]any{"id": id, "object": "list", "model": model,
				"data": []any{map[string]any{"index": 0, "label": "positive", "probs": []float64{0.2, 0.8}, "num_classes": 2}}})
		default: // audio transcription and translation
			writeJSON(rw, map[string]any{"text": "transcribed by " + w.id})
		}
	}
}

// audioModel reads the model field of a multipart audio upload, which must carry a
// file part.
func audioModel(contentType string, body []byte) (string, error) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/form-data" {
		return "", badRequest("audio endpoints take multipart/form-data, got %q", contentType)
	}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	model, file := "", false
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", badRequest("multipart body: %v", err)
		}
		switch {
		case p.FileName() != "" && p.FormName() == "file":
			file = true
		case p.FormName() == "model":
			v, _ := io.ReadAll(io.LimitReader(p, 1024))
			model = string(v)
		}
	}
	if !file {
		return "", badRequest("the file field is required")
	}
	return model, nil
}
