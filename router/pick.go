package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/upstream"
)

// The endpoint-picker API: the router's decision path (parse, hash, match, score, queue)
// and its bookkeeping (load, predictions, truth metrics, statistics) for a caller that
// forwards the request itself, such as the Gateway API Inference Extension endpoint
// picker (router/epp). A Pick is what the HTTP API's forward does between choosing a
// worker and settling its answer, with the forwarding left to the gateway.

// ErrBadPick wraps the errors of a request the picker cannot route (invalid JSON, no
// model): the client's fault, a 400.
var ErrBadPick = errors.New("bad request")

// PickRequest is one request to place.
type PickRequest struct {
	// Path is the request's :path (a query string is ignored): it says which API the
	// body is for (chat and completions are hashed; other paths are routed on load).
	Path string
	// Body is the whole request body; it must stay unchanged until the Pick is done.
	Body []byte
	// RequestID names the request in the decision log; "" means a new id.
	RequestID string
	// Session is the request's session key (session.header), "" for none.
	Session string
	// Priority is the request's x-kvroute-priority header, "" for the default class.
	Priority string
	// Subset, when non-nil, restricts the pick to these endpoints ("ip:port", or "ip"
	// for any port of that address): the data plane's subset hint. An empty non-nil
	// subset leaves nothing eligible.
	Subset []string
	// Fallbacks is how many further endpoints to return after the pick, cheapest first.
	Fallbacks int
}

// Pick is one placed request: its worker, fallbacks and load, until [Pick.Done]. A Pick
// is used by one goroutine at a time.
type Pick struct {
	s         *Server
	st        *routeState
	r         request
	w         *upstream.Worker // the worker the load is on (the pick, or the served one)
	overlap   int
	load      *upstream.Load
	endpoints []string
	start     time.Time

	responded bool // Responded was called
	status    int
	sse       bool
	usage     ReportedUsage
	usageOK   bool
	// body holds a non-streamed answer, up to maxUsageBody bytes, for its usage; tail
	// the unfinished last line of an SSE answer.
	body     []byte
	overflow bool
	tail     []byte
	done     bool
}

// maxUsageBody bounds the answer bytes a Pick keeps to find the usage of a
// non-streamed answer (it is at the end of the JSON object): a longer answer counts as
// unreported.
const maxUsageBody = 1 << 20

// maxSSELine bounds the unfinished SSE line a Pick keeps between two chunks.
const maxSSELine = 64 << 10

// Pick places one request with the router's decision path: the body is parsed as the
// HTTP API parses it, the prompt hashed and matched against the index, the candidates
// (restricted to req.Subset) scored by the policy, and the request queued when every
// candidate is full. The load is counted on the chosen worker at once. ctx bounds the
// wait in the queue. Errors: ErrBadPick (400), ErrUnknownModel, ErrNoHealthyWorker
// (nothing eligible: 503), the queue's refusals (429); [PickStatus] maps them. Safe for
// concurrent use.
func (s *Server) Pick(ctx context.Context, req *PickRequest) (*Pick, error) {
	start := time.Now()
	if s.draining.Load() {
		return nil, errShuttingDown
	}
	p := &Pick{s: s, start: start}
	path, _, _ := strings.Cut(req.Path, "?")
	ep, _ := inferenceEndpoint(path) // other paths: routed on load alone
	if err := parseRequest(req.Body, ep, &p.r); err != nil {
		s.count("", "", statusOf(err).code, time.Time{})
		return nil, fmt.Errorf("%w: %w", ErrBadPick, err)
	}
	if !s.pool.Known(p.r.Model) {
		err := fmt.Errorf("%w: %q", ErrUnknownModel, p.r.Model)
		s.count("", p.r.Model, statusOf(err).code, time.Time{})
		return nil, err
	}
	class, err := s.classOf(req.Priority)
	if err != nil {
		s.count("", p.r.Model, statusOf(err).code, time.Time{})
		return nil, fmt.Errorf("%w: %w", ErrBadPick, err)
	}
	reqID := req.RequestID
	if reqID == "" {
		reqID = newRequestID()
	}
	st := getRouteState()
	p.st = st
	st.req.Model, st.req.SessionKey = p.r.Model, req.Session
	if req.Session == "" && s.cfg.Session.User {
		st.req.SessionKey = p.r.User
	}
	if req.Subset != nil {
		st.only = newEndpointSet(req.Subset)
	}
	if ep == epChat || ep == epCompletions {
		s.hashPrompt(context.Background(), &p.r, st)
	}
	t0 := time.Now()
	w, overlap, load, err := s.routeWait(ctxClient{ctx}, st, reqID, class)
	if err == nil && w == nil {
		err = fmt.Errorf("%w: %q", ErrNoHealthyWorker, p.r.Model)
	}
	if err != nil {
		putRouteState(st)
		p.st = nil
		s.count("", p.r.Model, statusOf(err).code, start)
		return nil, err
	}
	s.traffic.decision(t0)
	p.w, p.overlap, p.load = w, overlap, load
	p.endpoints = append(p.endpoints, workerEndpoint(w))
	for _, f := range fallbackWorkers(st, w, req.Fallbacks) {
		p.endpoints = append(p.endpoints, workerEndpoint(f))
	}
	return p, nil
}

// routeWait is route for a caller without a fasthttp request: pick, or queue while
// every candidate is full.
func (s *Server) routeWait(client waiterGone, st *routeState, reqID string, class int) (*upstream.Worker, int, *upstream.Load, error) {
	if !s.queue.ahead(st.req.Model) {
		t0 := time.Now()
		w, overlap := s.pick(st, reqID, 0)
		s.metrics.decisions.Observe(time.Since(t0).Seconds())
		if w != nil {
			return w, overlap, s.beginLoad(w, st, overlap), nil
		}
		if st.guarded == 0 {
			return nil, 0, nil, nil
		}
	}
	return s.await(client, st, reqID, 0, class)
}

// ctxClient is a waiterGone whose client has gone when its context ends.
type ctxClient struct{ ctx context.Context }

func (c ctxClient) gone() bool { return c.ctx.Err() != nil }

// classOf returns the queue class named v (an x-kvroute-priority value), the default
// class for "".
func (s *Server) classOf(v string) (int, error) {
	q := s.queue
	if v == "" {
		return q.defClass, nil
	}
	if i := slices.Index(q.classes, v); i >= 0 {
		return i, nil
	}
	if len(v) > 64 {
		v = v[:64]
	}
	return 0, fmt.Errorf("%w: %q is not a priority class (%s)", errPriority, v, strings.Join(q.classes, ", "))
}

// fallbackWorkers returns up to n candidates of the last pick other than chosen,
// cheapest first when the policy explained its costs, else longest overlap first.
func fallbackWorkers(st *routeState, chosen *upstream.Worker, n int) []*upstream.Worker {
	if n <= 0 || len(st.workers) < 2 {
		return nil
	}
	idx := make([]int, 0, len(st.workers))
	for i, w := range st.workers {
		if w != chosen {
			idx = append(idx, i)
		}
	}
	costs := len(st.costs) == len(st.workers)
	slices.SortStableFunc(idx, func(a, b int) int {
		if costs {
			switch ca, cb := st.costs[a].Total, st.costs[b].Total; {
			case ca < cb:
				return -1
			case ca > cb:
				return 1
			}
		}
		return st.cands[b].OverlapBlocks - st.cands[a].OverlapBlocks
	})
	out := make([]*upstream.Worker, 0, min(n, len(idx)))
	for _, i := range idx[:min(n, len(idx))] {
		out = append(out, st.workers[i])
	}
	return out
}

// Endpoints returns the pick's endpoints, "host:port", the pick first and then the
// fallbacks. The slice is the Pick's.
func (p *Pick) Endpoints() []string { return p.endpoints }

// Model returns the request's model.
func (p *Pick) Model() string { return p.r.Model }

// Worker returns the id of the worker the request is counted on.
func (p *Pick) Worker() string { return p.w.ID }

// Stream reports whether the request asked for a streamed answer.
func (p *Pick) Stream() bool { return p.r.Stream }

// Responded records the answer's start: the endpoint that served it ("host:port" as
// the data plane reports it, "" when it did not say: the pick), its status and whether
// it is an SSE stream. When another worker of the pool served it (a fallback), the
// request's load moves there. A 2xx-4xx answer other than 429 commits the decision:
// the worker is reported healthy and the prompt's blocks are predicted on it, as the
// HTTP API does once a worker's answer is committed to the client.
func (p *Pick) Responded(served string, status int, sse bool) {
	if p.done || p.responded {
		return
	}
	if served != "" && served != p.endpoints[0] {
		if w := p.s.workerAt(served); w != nil && w != p.w {
			p.load.End()
			p.w, p.overlap = w, p.st.overlap(w.ID)
			p.load = p.s.beginLoad(w, p.st, p.overlap)
		}
	}
	p.responded, p.status, p.sse = true, status, sse
	if status >= 500 || status == fasthttp.StatusTooManyRequests {
		p.s.metrics.upErrors.WithLabelValues(p.w.ID, "status").Inc()
		return
	}
	p.s.pool.ReportSuccess(p.w)
	p.s.committed(p.w, p.st, p.overlap, p.r.Model)
	p.s.traffic.routed(p.w.ID, p.r.Model, p.st.req.PromptTokens, p.overlap*p.st.req.BlockSize, time.Now())
	if !p.r.Stream {
		p.load.EstimateFirstToken()
	}
}

// Chunk reads one chunk of the answer's body for its usage (and, in a stream, marks the
// first token). It keeps at most maxUsageBody bytes of a non-streamed answer and one
// unfinished SSE line.
func (p *Pick) Chunk(b []byte) {
	if p.done || len(b) == 0 {
		return
	}
	if !p.sse {
		if p.overflow || len(p.body)+len(b) > maxUsageBody {
			p.overflow, p.body = true, nil
			return
		}
		p.body = append(p.body, b...)
		return
	}
	p.load.FirstToken()
	// Scan the complete lines: the kept tail of the last chunk and this one's lines.
	last := bytes.LastIndexByte(b, '\n')
	if last < 0 {
		p.keepTail(b)
		return
	}
	if len(p.tail) > 0 {
		p.tail = append(p.tail, b[:last+1]...)
		p.scan(p.tail)
		p.tail = p.tail[:0]
	} else {
		p.scan(b[:last+1])
	}
	p.keepTail(b[last+1:])
}

func (p *Pick) keepTail(b []byte) {
	if len(p.tail)+len(b) > maxSSELine {
		p.tail = p.tail[:0] // not a line an engine writes: drop it
		return
	}
	p.tail = append(p.tail, b...)
}

func (p *Pick) scan(lines []byte) {
	if u, ok := sseUsage(lines); ok {
		p.usage, p.usageOK = u, true
	}
}

// Done ends the request: its load ends, the worker's usage report is checked against
// the prediction (truth metrics, decision log, statistics), and the request is counted
// with its status (499 when no answer came). Later calls do nothing; every Pick must be
// done.
func (p *Pick) Done() {
	if p.done {
		return
	}
	p.done = true
	p.load.End()
	status := p.status
	if !p.responded {
		status = statusClientClosed
	}
	if status == fasthttp.StatusOK {
		if !p.sse && !p.overflow {
			p.usage, p.usageOK = parseUsage(p.body)
		} else if p.sse && len(p.tail) > 0 {
			p.scan(p.tail)
		}
		p.s.observeUsage(p.w.ID, p.r.Model, p.st.dec, predictedTokens(&p.st.req, p.overlap), p.usage, p.usageOK, time.Now())
	}
	if p.responded && !p.r.Stream && status < 500 {
		now := time.Now()
		p.s.metrics.ttfb.WithLabelValues(p.r.Model).Observe(now.Sub(p.start).Seconds())
		p.s.traffic.ttft(p.w.ID, p.r.Model, now.Sub(p.start), now)
	}
	p.s.count(p.w.ID, p.r.Model, status, p.start)
	putRouteState(p.st)
	p.st, p.body, p.tail = nil, nil, nil
}

// PickStatus maps an error of [Server.Pick] to the HTTP status and OpenAI-shaped JSON
// body the client should get, with statusOf, the one map of errors to statuses.
func PickStatus(err error) (int, []byte) {
	st := statusOf(err) // ErrBadPick wraps errors it maps to 400
	return st.code, appendErrorJSON(nil, err.Error(), st)
}

// workerEndpoint returns w's "host:port", the port defaulted from the scheme.
func workerEndpoint(w *upstream.Worker) string {
	u := w.URL
	port := "80"
	if rest, ok := strings.CutPrefix(u, "https://"); ok {
		u, port = rest, "443"
	} else {
		u = strings.TrimPrefix(u, "http://")
	}
	if i := strings.IndexByte(u, '/'); i >= 0 {
		u = u[:i]
	}
	if _, _, err := net.SplitHostPort(u); err == nil {
		return u
	}
	return net.JoinHostPort(strings.Trim(u, "[]"), port)
}

// workerAt returns the pool's worker at endpoint "host:port", nil when none is.
func (s *Server) workerAt(endpoint string) *upstream.Worker {
	for _, w := range s.pool.Workers() {
		if workerEndpoint(w) == endpoint {
			return w
		}
	}
	return nil
}

// endpointSet is a subset hint: endpoints "ip:port", or addresses "ip" standing for
// any of their ports.
type endpointSet struct {
	endpoints map[string]struct{}
	hosts     map[string]struct{}
}

func newEndpointSet(list []string) *endpointSet {
	e := &endpointSet{endpoints: map[string]struct{}{}, hosts: map[string]struct{}{}}
	for _, v := range list {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		if h, port, err := net.SplitHostPort(v); err == nil {
			e.endpoints[net.JoinHostPort(h, port)] = struct{}{}
		} else {
			e.hosts[strings.Trim(v, "[]")] = struct{}{}
		}
	}
	return e
}

// has reports whether w is in the set.
func (e *endpointSet) has(w *upstream.Worker) bool {
	ep := workerEndpoint(w)
	if _, ok := e.endpoints[ep]; ok {
		return true
	}
	if len(e.hosts) == 0 {
		return false
	}
	h, _, _ := net.SplitHostPort(ep)
	_, ok := e.hosts[h]
	return ok
}

// Ready reports whether the router can place requests: it is not draining and some
// worker is available (what GET /ready answers).
func (s *Server) Ready() bool { return !s.draining.Load() && s.pool.AnyAvailable() }
