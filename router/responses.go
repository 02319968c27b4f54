package router

import (
	"bytes"
	"container/list"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/router/jsonscan"
	"github.com/kvroute/kvroute/upstream"
)

// This file is the Responses API (issue #22): POST /v1/responses routed cache-aware as
// a chat, and the engines' stored responses, which live in the memory of the worker
// that answered (vLLM with VLLM_ENABLE_RESPONSES_API_STORE=1, requests with store
// true). The router remembers the worker of every response id it sees answered
// (responseMap, bounded, with a TTL); a request naming previous_response_id, and GET,
// DELETE and POST .../cancel of /v1/responses/{id}, go to that worker and nowhere
// else. An id the router does not know, or whose worker has left the fleet, is a 404
// response_not_found; a worker that holds it but is unavailable (failing its checks,
// ejected) is a 503: re-routing would lose the conversation silently.

// Errors of the stored-response routing (statusOf maps them).
var (
	// errResponseNotFound is a response id the router cannot place.
	errResponseNotFound = errors.New("response not found")
	// errResponseWorkerDown is a response id whose worker is unavailable.
	errResponseWorkerDown = errors.New("the worker holding the response is unavailable")
)

// respTrack says what a forwarded answer teaches the response map.
type respTrack uint8

const (
	trackNone   respTrack = iota // not the Responses API
	trackEvents                  // a Responses answer: its stream ends with a terminal event
	trackCreate                  // POST /v1/responses with store: remember the answer's id too
	trackDelete                  // DELETE /v1/responses/{id}: forget the id once deleted
)

// handleResponses serves POST /v1/responses: a request naming previous_response_id goes
// to the worker holding that response, any other is routed as a chat is.
func (s *Server) handleResponses(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	if !s.acceptPost(ctx, "/v1/responses") {
		return
	}
	var r request
	var rf responsesFields
	if err := parseResponsesRequest(ctx.PostBody(), &r, &rf); err != nil {
		s.fail(ctx, "", err)
		return
	}
	c := &call{ep: epResponses, path: "/v1/responses", r: &r, start: start, track: trackEvents}
	if rf.store {
		c.track = trackCreate
	}
	if rf.previous != "" {
		w, err := s.responseWorker(rf.previous)
		if err != nil {
			s.fail(ctx, r.Model, err)
			return
		}
		c.pin = w
	}
	s.forward(ctx, c)
}

// handleResponseByID serves /v1/responses/{id} (GET, DELETE) and its sub-resources
// (POST /v1/responses/{id}/cancel, GET /v1/responses/{id}/input_items): on the worker
// holding the response.
func (s *Server) handleResponseByID(ctx *fasthttp.RequestCtx) {
	start := time.Now()
	rest := string(ctx.Path()[len("/v1/responses/"):])
	id, sub, _ := strings.Cut(rest, "/")
	switch {
	case id == "":
		s.fail(ctx, "", fmt.Errorf("%w: %s", errNotFound, ctx.Path()))
		return
	case sub == "" && (ctx.IsGet() || ctx.IsDelete()),
		sub == "cancel" && ctx.IsPost(),
		sub == "input_items" && ctx.IsGet():
	case sub != "" && sub != "cancel" && sub != "input_items":
		s.fail(ctx, "", fmt.Errorf("%w: %s", errNotFound, ctx.Path()))
		return
	default:
		allow := "GET, DELETE"
		switch sub {
		case "cancel":
			allow = "POST"
		case "input_items":
			allow = "GET"
		}
		ctx.Response.Header.Set("Allow", allow)
		s.fail(ctx, "", fmt.Errorf("%w: %s %s", errMethod, ctx.Method(), ctx.Path()))
		return
	}
	if s.draining.Load() {
		s.fail(ctx, "", errShuttingDown)
		return
	}
	w, err := s.responseWorker(id)
	if err != nil {
		s.fail(ctx, "", err)
		return
	}
	path := string(ctx.Path())
	if q := ctx.URI().QueryString(); len(q) > 0 {
		path += "?" + string(q)
	}
	// GET ...?stream=true streams a background response's events.
	r := request{Model: s.responses.model(id), Stream: ctx.IsGet() && ctx.QueryArgs().GetBool("stream")}
	c := &call{ep: epResponses, path: path, r: &r, start: start, pin: w, respID: id, track: trackEvents}
	if ctx.IsDelete() {
		c.track = trackDelete
	}
	s.forward(ctx, c)
}

// peerGrace is how long a request naming a response id this replica does not know
// waits for its peers to tell of it (replica sync): a client that sends a follow-up
// through another replica right after the answer may beat the peer's message, which
// takes replica.flush_interval (default 5 ms) plus a NATS hop.
const peerGrace = 100 * time.Millisecond

// responseWorker returns the worker holding response id, or why the request cannot go
// there.
func (s *Server) responseWorker(id string) (*upstream.Worker, error) {
	wid, ok := s.responses.get(id, time.Now())
	if !ok && s.replica != nil && len(s.replica.Peers()) > 0 {
		for deadline := time.Now().Add(peerGrace); !ok && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
			wid, ok = s.responses.get(id, time.Now())
		}
	}
	if !ok {
		return nil, fmt.Errorf("%w: no worker is known to hold response %q (never stored through this router, deleted, or forgotten after responses.ttl)", errResponseNotFound, id)
	}
	w := s.pool.Worker(wid)
	if w == nil {
		return nil, fmt.Errorf("%w: response %q was stored on worker %s, which has left the fleet", errResponseNotFound, id, wid)
	}
	if !w.Available() {
		return nil, fmt.Errorf("%w: response %q is stored on worker %s, which is unavailable (failing health checks or ejected); it is not re-routed, as no other worker holds it", errResponseWorkerDown, id, wid)
	}
	return w, nil
}

// noteResponse applies a committed non-streamed answer to the response map: a created
// response's id is remembered, a deleted one forgotten.
func (s *Server) noteResponse(c *call, w *upstream.Worker, code int, body []byte) {
	if code != fasthttp.StatusOK {
		return
	}
	switch c.track {
	case trackCreate:
		if id := topLevelID(body); id != "" {
			s.rememberResponse(id, w.ID, c.r.Model)
		}
	case trackDelete:
		if isDeleted(body) {
			s.responses.forget(c.respID)
		}
	}
}

// rememberResponse records that worker holds response id, here and on the other
// replicas.
func (s *Server) rememberResponse(id, worker, model string) {
	s.responses.put(id, worker, model, time.Now())
	if s.replica != nil {
		s.replica.StoredResponse(id, worker, model)
	}
}

// scanResponseEvents reads a chunk of a Responses API stream: the first event naming
// the response (response.created, or any later one carrying "response":{"id":...})
// records its id, and a terminal event (response.completed, response.failed,
// response.incomplete) marks the stream complete. An event split across two reads is
// seen in neither for its id (the next event that names the response records it) and
// its type is still found in its "event:" line or its data's "type".
func (s *Server) scanResponseEvents(p *streamPipe, chunk []byte) {
	if !p.respSeen && p.track == trackCreate {
		if id := sseResponseID(chunk); id != "" {
			p.respSeen = true
			s.rememberResponse(id, p.w.ID, p.model)
		}
	}
	if !p.respDone {
		for _, t := range terminalEvents {
			if bytes.Contains(chunk, t) {
				p.respDone = true
				break
			}
		}
	}
}

var terminalEvents = [][]byte{[]byte("response.completed"), []byte("response.failed"), []byte("response.incomplete")}

// sseResponseID returns the id of the response object in the first data event of
// chunk that carries one ("response":{"id":...}), "" when none does.
func sseResponseID(chunk []byte) string {
	for line := range bytes.SplitSeq(chunk, []byte{'\n'}) {
		line = bytes.TrimRight(line, "\r")
		data, ok := bytes.CutPrefix(line, []byte("data:"))
		if !ok || !bytes.Contains(data, []byte(`"response"`)) {
			continue
		}
		data = jsonscan.TrimWS(data)
		if len(data) == 0 || data[0] != '{' {
			continue
		}
		it, err := jsonscan.NewIter(data, 0)
		if err != nil {
			continue
		}
		for {
			key, vs, ve, more, err := it.Next()
			if err != nil || !more {
				break
			}
			if jsonscan.KeyIs(key, "response") {
				if id := topLevelID(data[vs:ve]); id != "" {
					return id
				}
			}
		}
	}
	return ""
}

// maxResponseID bounds a response id the router keeps: engines' ids are tens of bytes.
const maxResponseID = 256

// topLevelID returns the string member "id" of the JSON object b, "" when it has none
// (or b is not an object, or the id is longer than maxResponseID).
func topLevelID(b []byte) string {
	i := jsonscan.SkipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return ""
	}
	it, err := jsonscan.NewIter(b, i)
	if err != nil {
		return ""
	}
	for {
		key, vs, ve, more, err := it.Next()
		if err != nil || !more {
			return ""
		}
		if jsonscan.KeyIs(key, "id") {
			v := b[vs:ve]
			if v[0] != '"' || len(v) > maxResponseID+2 {
				return ""
			}
			id, err := stringValue(v, "id")
			if err != nil {
				return ""
			}
			return id
		}
	}
}

// isDeleted reports whether a DELETE answer confirms the deletion: OpenAI answers
// {"id","object":"response","deleted":true}; an engine answering anything else
// with 200 (vLLM answers the response) is taken as deleted too.
func isDeleted(body []byte) bool {
	return !bytes.Contains(body, []byte(`"deleted":false`))
}

// responsesFields are the members of a Responses API request that only it has.
type responsesFields struct {
	previous string // previous_response_id
	store    bool   // store (default true)
}

// Limits of the Responses input mapping: beyond them the rest of the input is not
// hashed (it is still forwarded as it is).
const (
	maxResponseItems = 4096
)

// parseResponsesRequest decodes the routing fields of a POST /v1/responses body into r
// and rf: model, stream, user, cache_salt, previous_response_id, store, and the prompt
// as chat messages for the hasher (r.Msgs): instructions as a system message, then the
// input (a string is one user message; an item list gives its message items in order,
// their content kept as it is, a string or parts, where input_text and output_text
// parts are text). An item of another type (function_call, reasoning, ...) ends the
// hashed messages as a non-text part does (see hashPrompt): the engine renders it in a
// way the router does not reproduce, so nothing after it may match. Errors wrap
// errInvalidJSON or errInvalidField.
func parseResponsesRequest(body []byte, r *request, rf *responsesFields) error {
	*r = request{}
	*rf = responsesFields{store: true}
	var input, instructions []byte
	err := jsonscan.Object(body, func(key []byte, escaped bool, val []byte) error {
		name := key[1 : len(key)-1]
		if escaped {
			var s string
			if err := json.Unmarshal(key, &s); err != nil {
				return fmt.Errorf("%w: member name: %w", errInvalidJSON, err)
			}
			name = []byte(s)
		}
		var err error
		switch string(name) {
		case "input":
			input = val
		case "instructions":
			instructions = val
		case "previous_response_id":
			rf.previous, err = stringValue(val, "previous_response_id")
		case "store":
			switch string(val) {
			case "false":
				rf.store = false
			case "true", "null":
			default:
				err = fmt.Errorf("%w: %q must be a boolean", errInvalidJSON, "store")
			}
		case "model", "stream", "user", "cache_salt":
			err = r.member(key, escaped, val)
		}
		return err
	})
	if err != nil {
		if errors.Is(err, jsonscan.ErrSyntax) {
			return fmt.Errorf("%w: %w", errInvalidJSON, err)
		}
		return err
	}
	if r.Model == "" {
		return fmt.Errorf("%w: \"model\" is required", errInvalidField)
	}
	if len(input) == 0 || string(input) == "null" {
		return fmt.Errorf("%w: \"input\" is required", errInvalidField)
	}
	if instructions != nil && instructions[0] != '"' && string(instructions) != "null" {
		return fmt.Errorf("%w: \"instructions\" must be a string", errInvalidField)
	}
	if len(rf.previous) > maxResponseID {
		return fmt.Errorf("%w: \"previous_response_id\" is longer than %d bytes", errInvalidField, maxResponseID)
	}
	msgs, err := responsesMessages(instructions, input)
	if err != nil {
		return err
	}
	r.Msgs = msgs
	return nil
}

// responseItem is one element of an input item list, as far as hashing reads it.
type responseItem struct {
	Type    string          `json:"type"`
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// responsesMessages maps instructions and input (raw, valid JSON) to a chat messages
// array (see parseResponsesRequest).
func responsesMessages(instructions, input []byte) ([]byte, error) {
	b := make([]byte, 0, len(input)+len(instructions)+64)
	b = append(b, '[')
	n := 0
	add := func(role string, content []byte) {
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = append(b, `{"role":`...)
		b = appendJSONString(b, role)
		b = append(b, `,"content":`...)
		b = append(b, content...)
		b = append(b, '}')
	}
	if len(instructions) > 0 && instructions[0] == '"' {
		add("system", instructions)
	}
	switch input[0] {
	case '"':
		add("user", input)
	case '[':
		var items []json.RawMessage
		if err := json.Unmarshal(input, &items); err != nil {
			return nil, fmt.Errorf("%w: \"input\": %w", errInvalidJSON, err)
		}
		for i, raw := range items {
			var it responseItem
			if i >= maxResponseItems || raw[0] != '{' || json.Unmarshal(raw, &it) != nil ||
				(it.Type != "" && it.Type != "message") || it.Role == "" || !textContent(it.Content) {
				// Not a message the router renders: what follows is not hashed.
				add("user", []byte(`[{"type":"input_item"}]`))
				break
			}
			add(it.Role, it.Content)
		}
	default:
		return nil, fmt.Errorf("%w: \"input\" must be a string or an array of items", errInvalidField)
	}
	return append(b, ']'), nil
}

// textContent reports whether a message's content is a string or an array (whose
// parts the hasher reads: text parts as text, others end the hashed prompt).
func textContent(c json.RawMessage) bool {
	return len(c) > 0 && (c[0] == '"' || c[0] == '[')
}

// responseMap remembers which worker holds each stored response: at most max ids, the
// least recently used forgotten first, each for ttl after its last use. Safe for
// concurrent use.
type responseMap struct {
	max int
	ttl time.Duration
	// mu guards the fields below.
	mu   sync.Mutex
	byID map[string]*list.Element // of *respEntry
	lru  list.List                // most recently used first
}

type respEntry struct {
	id, worker, model string
	expires           time.Time
}

func newResponseMap(max int, ttl time.Duration) *responseMap {
	m := &responseMap{max: max, ttl: ttl, byID: map[string]*list.Element{}}
	m.lru.Init()
	return m
}

// put records that worker holds response id (of model).
func (m *responseMap) put(id, worker, model string, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.byID[id]; ok {
		e := el.Value.(*respEntry)
		e.worker, e.model, e.expires = worker, model, now.Add(m.ttl)
		m.lru.MoveToFront(el)
		return
	}
	for m.lru.Len() >= m.max {
		m.removeLocked(m.lru.Back())
	}
	m.byID[id] = m.lru.PushFront(&respEntry{id: id, worker: worker, model: model, expires: now.Add(m.ttl)})
}

// get returns the worker holding response id and refreshes its TTL; ok is false when
// the id is unknown or expired.
func (m *responseMap) get(id string, now time.Time) (worker string, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	el, ok := m.byID[id]
	if !ok {
		return "", false
	}
	e := el.Value.(*respEntry)
	if now.After(e.expires) {
		m.removeLocked(el)
		return "", false
	}
	e.expires = now.Add(m.ttl)
	m.lru.MoveToFront(el)
	return e.worker, true
}

// model returns the model response id was created with, "" when unknown.
func (m *responseMap) model(id string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.byID[id]; ok {
		return el.Value.(*respEntry).model
	}
	return ""
}

// forget drops response id.
func (m *responseMap) forget(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if el, ok := m.byID[id]; ok {
		m.removeLocked(el)
	}
}

// len returns the ids remembered.
func (m *responseMap) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lru.Len()
}

// registerResponseMetrics registers the size of m with reg.
func registerResponseMetrics(reg prometheus.Registerer, m *responseMap) error {
	if err := reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "kvroute_router_stored_responses",
		Help: "Responses API response ids the router knows the worker of (at most responses.max_entries).",
	}, func() float64 { return float64(m.len()) })); err != nil {
		return fmt.Errorf("register stored responses metric: %w", err)
	}
	return nil
}

// removeLocked drops el; mu must be held.
func (m *responseMap) removeLocked(el *list.Element) {
	delete(m.byID, el.Value.(*respEntry).id)
	m.lru.Remove(el)
}
