package router

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/upstream"
)

// statusError is a worker's answer that is worth retrying elsewhere (5xx, 429). When
// every attempt fails this way the last one is passed to the client as it was.
type statusError struct {
	worker      string
	code        int
	contentType string
	body        []byte
}

func (e *statusError) Error() string {
	return fmt.Sprintf("worker %s answered %d", e.worker, e.code)
}

func (e *statusError) Is(target error) bool {
	return (target == errStatus5xx && e.code >= 500) || (target == errStatus429 && e.code == 429)
}

// handleInference routes and forwards one inference request.
func (s *Server) handleInference(ctx *fasthttp.RequestCtx, ep endpoint) {
	start := time.Now()
	if !s.acceptPost(ctx, ep.path()) {
		return
	}
	var r request
	if err := parseRequest(ctx.PostBody(), ep, &r); err != nil {
		s.fail(ctx, "", err)
		return
	}
	s.forward(ctx, &call{ep: ep, path: ep.path(), r: &r, start: start})
}

// acceptPost answers a request that is not a POST, or that comes while the router
// drains, and reports whether the request may go on.
func (s *Server) acceptPost(ctx *fasthttp.RequestCtx, path string) bool {
	if !ctx.IsPost() {
		ctx.Response.Header.Set("Allow", "POST")
		s.fail(ctx, "", fmt.Errorf("%w: %s %s", errMethod, ctx.Method(), path))
		return false
	}
	if s.draining.Load() {
		s.fail(ctx, "", errShuttingDown)
		return false
	}
	return true
}

// forward routes and forwards the request c describes (ep, path, r, start and, for a
// request bound to one worker, pin set): the policy's choice with retries before the
// first byte, or the pinned worker alone.
func (s *Server) forward(ctx *fasthttp.RequestCtx, c *call) {
	class, ok := s.prepare(ctx, c, true)
	if !ok {
		return
	}
	defer putRouteState(c.st)
	if c.pin == nil && (c.ep == epChat || c.ep == epCompletions) && s.forwardPD(ctx, c, class) {
		return // answered by the disaggregated flow (pd.go); otherwise it set up the loop below
	}
	defer s.pdEnd(c)
	var lastErr error
	for attempt := 0; attempt < s.cfg.MaxAttempts; attempt++ {
		t0 := time.Now()
		// route counts the request on w at once, before anything else: concurrent
		// decisions see only the load begun before them, so every step between the
		// choice and this one is a window in which a burst piles onto one worker. When
		// every worker is full it waits in the queue (queue.go).
		w, overlap, load, err := s.routeCall(ctx, c, attempt, class)
		if err != nil {
			s.failRoute(ctx, c.r.Model, c.start, err)
			return
		}
		if w == nil {
			break
		}
		if !s.beginAttempt(ctx, c, w, load, attempt, t0, attempt > 0 && clientGone(ctx.Conn())) {
			return
		}
		o := s.attempt(ctx, c, w, overlap, load)
		s.settle(ctx, c, &o)
		if o.err == nil {
			return
		}
		lastErr = o.err
		s.log.Debug("attempt failed", "request_id", c.reqID, "worker", w.ID, "err", o.err)
	}
	s.answerFailure(ctx, c, lastErr)
}

// beginAttempt follows route's choice of w for c's attempt (decided at t0): a retry
// whose client has gone (gone) is not made, its load ended and the request counted;
// false then. Otherwise w joins the workers tried.
func (s *Server) beginAttempt(ctx *fasthttp.RequestCtx, c *call, w *upstream.Worker, load *upstream.Load, attempt int, t0 time.Time, gone bool) bool {
	s.traffic.decision(t0)
	if attempt > 0 {
		if gone { // nobody to answer: do not load another worker
			load.End()
			s.metrics.retriesSkipped.WithLabelValues(c.r.Model).Inc()
			ctx.SetConnectionClose()
			s.count("", c.r.Model, statusClientClosed, c.start)
			return false
		}
		s.metrics.retries.WithLabelValues(c.r.Model).Inc()
	}
	c.st.tried = append(c.st.tried, w)
	return true
}

// prepare does what precedes c's first attempt: the model and priority checks, the
// request id (echoed to the client) and the routing state c.st with the prompt's block
// hashes (when hash is false the caller hashes with hashCall). It reports false, with
// the answer written, when the request ends here; otherwise the caller owns c.st and
// puts it back with putRouteState.
func (s *Server) prepare(ctx *fasthttp.RequestCtx, c *call, hash bool) (class int, ok bool) {
	r := c.r
	if c.pin == nil && !s.pool.Known(r.Model) {
		s.fail(ctx, "", fmt.Errorf("%w: %q", ErrUnknownModel, r.Model))
		return 0, false
	}
	class, err := s.priority(ctx)
	if err != nil {
		s.fail(ctx, r.Model, err)
		return 0, false
	}
	reqID := string(ctx.Request.Header.Peek("X-Request-Id"))
	if reqID == "" {
		reqID = newRequestID()
	}
	ctx.Response.Header.Set("X-Request-Id", reqID)
	st := getRouteState()
	st.req.Model, st.req.SessionKey = r.Model, s.sessionKey(ctx, r)
	c.st, c.reqID = st, reqID
	if hash {
		s.hashCall(c)
	}
	return class, true
}

// hashCall hashes c's prompt into c.st, unless the request has no prompt the router
// may match.
func (s *Server) hashCall(c *call) {
	// Not ctx: the hasher's HTTP client may read its context after this handler has
	// returned (net/http's dial goroutine outlives a timed-out /tokenize call), when
	// fasthttp has recycled the RequestCtx. Nothing is lost: a RequestCtx is only done at
	// server shutdown, and the tokenize call has its own timeout.
	if c.pin == nil && c.ep != epPassthrough {
		// A pinned request continues a stored conversation the router does not see:
		// its hashes would not describe the engine's prompt. A pass-through request
		// has no prompt the router reads.
		s.hashPrompt(context.Background(), c.r, c.st)
	}
}

// answerFailure answers a request none of whose attempts succeeded: lastErr is the
// last attempt's error, nil when no worker could be tried.
func (s *Server) answerFailure(ctx *fasthttp.RequestCtx, c *call, lastErr error) {
	r, start := c.r, c.start
	var se *statusError
	switch {
	case lastErr == nil:
		s.fail(ctx, r.Model, fmt.Errorf("%w: %q", ErrNoHealthyWorker, r.Model))
	case errors.As(lastErr, &se):
		// Every worker refused; the last refusal is the most useful answer.
		ctx.SetStatusCode(se.code)
		ctx.SetContentType(se.contentType)
		ctx.SetBody(se.body)
		s.setWorkerHeader(ctx, se.worker)
		s.setPrefillHeader(ctx, c)
		s.count(se.worker, r.Model, se.code, start)
	default:
		s.fail(ctx, r.Model, lastErr)
	}
}

// call is one client request being forwarded: what every attempt and its settlement
// share.
type call struct {
	ep endpoint
	// path is the worker's path (and query) the request is sent to.
	path  string
	r     *request
	st    *routeState
	reqID string
	start time.Time
	// body replaces the client's body in what is sent to the worker (a disaggregated
	// request's decode body, pd.go); nil sends the client's as it is. prefill is the
	// disaggregated request's prefill worker ("" for aggregated serving), and pdSent
	// set when its decode request is sent, for kvroute_pd_decode_ttft_seconds.
	body    []byte
	prefill string
	pd      *pdCall
	// pin is the one worker the request may go to (a stored response's), nil when the
	// policy chooses; track says what its answer teaches the stored-response map
	// (responses.go), and respID names the response of a /v1/responses/{id} request.
	pin    *upstream.Worker
	track  respTrack
	respID string
}

// outcome is what one attempt on one worker came to. attempt (forwarding) produces it
// and settle consumes it; a stream's end is a second outcome of the same attempt, made
// by its streamPipe. Load accounting, health reports, predictions, replica notices and
// statistics happen in settle and nowhere else on the request path.
type outcome struct {
	w       *upstream.Worker
	overlap int            // leading prompt blocks the worker was believed to hold
	load    *upstream.Load // the request's load on w: ended by settle when the exchange ends
	// err says why the attempt failed with nothing written to the client (a transport
	// error, or a *statusError for 5xx and 429): the caller may try another worker.
	// nil when the worker's answer was committed to the client.
	err  error
	code int // the worker's status; 0 when it did not answer
	// stream is set when a committed answer is streamed: the exchange goes on after the
	// handler, and its end is settled by the streamPipe (settleStreamEnd).
	stream bool
	// usage is the worker's report of the prompt's cached tokens in a non-streamed
	// answer; usageOK false when it had none.
	usage   ReportedUsage
	usageOK bool
}

// attempt forwards the request to w, whose load (begun by the caller) it carries in the
// outcome, and returns the outcome. Unless o.err is set, the
// worker's answer has been committed to the client (a streamed one may still fail later,
// mid-stream).
func (s *Server) attempt(ctx *fasthttp.RequestCtx, c *call, w *upstream.Worker, overlap int, load *upstream.Load) (o outcome) {
	o = outcome{w: w, overlap: overlap, load: load}
	req := fasthttp.AcquireRequest()
	s.outbound(ctx, c, w, req)
	if c.pd != nil {
		s.pdSend(ctx, c) // the decode's clock; SGLang's prefill half goes out with it
	}

	resp := fasthttp.AcquireResponse()
	if !c.r.Stream {
		o.load.EstimateFirstToken() // its first token will not be seen
	}
	err := w.Client(c.r.Stream).DoDeadline(req, resp, c.start.Add(s.cfg.Timeouts.Total))
	fasthttp.ReleaseRequest(req)
	if err != nil {
		fasthttp.ReleaseResponse(resp)
		o.err = fmt.Errorf("worker %s: %w", w.ID, err)
		return o
	}

	o.code = resp.StatusCode()
	if o.code >= 500 || o.code == fasthttp.StatusTooManyRequests {
		se := &statusError{worker: w.ID, code: o.code, contentType: string(resp.Header.ContentType())}
		se.body = readLimited(resp, 64<<10)
		_ = resp.CloseBodyStream()
		fasthttp.ReleaseResponse(resp)
		o.err = se
		return o
	}

	s.commit(ctx, c, w, overlap, &resp.Header)
	if !c.r.Stream {
		if o.code == fasthttp.StatusOK {
			o.usage, o.usageOK = parseUsage(resp.Body())
		}
		if c.track != trackNone {
			s.noteResponse(c, w, o.code, resp.Body())
		}
		// The worker's body becomes the client's without a copy: the two buffers are
		// swapped, and the client's old one goes back to the pool with resp.
		resp.SwapBody(ctx.Response.SwapBody(resp.SwapBody(nil)))
		fasthttp.ReleaseResponse(resp)
		return o
	}
	o.stream = true
	ctx.Response.Header.SetContentLength(-1)
	sp := s.newStream(c, &o, &resp.Header)
	sp.resp = resp
	if !ctx.Request.Header.IsHTTP11() {
		streamToHTTP10(ctx, sp) // never chunked to HTTP/1.0 (RFC 9112 section 6.1)
		return o
	}
	ctx.Response.ImmediateHeaderFlush = true // the headers go out now, as the worker sent them
	if gc, ok := ctx.Conn().(*guardConn); ok && len(ctx.Response.Header.Peek(fasthttp.HeaderTrailer)) == 0 {
		sp.conn = gc // its last writes go out as one (coalesce.go)
	}
	ctx.Response.SetBodyStream(sp, -1)
	return o
}

// outbound fills req with what c sends to w: the client's request with its hop-by-hop
// fields and credentials stripped, w's own credentials, X-Request-Id and
// X-Forwarded-For, and the body.
func (s *Server) outbound(ctx *fasthttp.RequestCtx, c *call, w *upstream.Worker, req *fasthttp.Request) {
	ctx.Request.Header.CopyTo(&req.Header)
	stripHopByHop(&req.Header, &c.st.hop)
	s.stripCredentials(&req.Header, w.HasAPIKey())
	w.Authorize(&req.Header)
	var uri [256]byte // copied by fasthttp: no string concatenation per request
	req.SetRequestURIBytes(append(append(uri[:0], w.URL...), c.path...))
	req.Header.Set("X-Request-Id", c.reqID)
	var xff [64]byte
	req.Header.SetBytesV("X-Forwarded-For", appendForwardedFor(xff[:0], ctx))
	if c.body != nil {
		req.SetBodyRaw(c.body)
	} else {
		req.SetBodyRaw(ctx.PostBody())
	}
}

// commit makes h, the header of w's answer, the client's: from here on the client gets
// this worker's answer. Hop-by-hop fields are dropped and kvroute's own set.
func (s *Server) commit(ctx *fasthttp.RequestCtx, c *call, w *upstream.Worker, overlap int, h *fasthttp.ResponseHeader) {
	h.CopyTo(&ctx.Response.Header) // first: it replaces every header
	stripHopByHop(&ctx.Response.Header, &c.st.hop)
	ctx.Response.Header.Set("X-Request-Id", c.reqID)
	s.setWorkerHeader(ctx, w.ID)
	s.setPrefillHeader(ctx, c)
	s.setCachedBlocksHeader(ctx, c.st, overlap)
}

// newStream returns the state of the stream o's worker answers c with, its header h.
func (s *Server) newStream(c *call, o *outcome, h *fasthttp.ResponseHeader) *streamPipe {
	return &streamPipe{s: s, w: o.w, load: o.load, model: c.r.Model, start: c.start, status: o.code,
		sse:       bytes.HasPrefix(h.ContentType(), []byte("text/event-stream")),
		predicted: predictedTokens(&c.st.req, o.overlap), dec: c.st.dec, track: c.track, pd: c.pd}
}

// settle applies an attempt's outcome: the one place where a forwarded request's load,
// the worker's health, the index's predictions, the replicas and the statistics learn
// what happened. A failed attempt ends its load and counts against the worker (a 429
// only in the error metric: the worker is busy, not broken); a committed one counts for
// it, records the routing decision's predictions and, when not streamed, ends the
// request. A stream's end is settled by settleStreamEnd.
func (s *Server) settle(ctx *fasthttp.RequestCtx, c *call, o *outcome) {
	if o.err != nil {
		o.load.End()
		if o.code != fasthttp.StatusTooManyRequests {
			s.pool.ReportFailure(o.w, o.err)
		}
		s.metrics.upErrors.WithLabelValues(o.w.ID, errorKind(o.err)).Inc()
		return
	}
	s.pool.ReportSuccess(o.w)
	now := time.Now()
	if c.prefill == "" {
		s.committed(o.w, c.st, o.overlap, c.r.Model)
		s.traffic.routed(o.w.ID, c.r.Model, c.st.req.PromptTokens, o.overlap*c.st.req.BlockSize, now)
	} else { // a decode: the prompt and its hit were the prefill worker's (pd.go)
		s.traffic.routed(o.w.ID, c.r.Model, 0, 0, now)
	}
	if o.stream {
		return // the streamPipe settles the rest when the stream ends
	}
	o.load.End()
	s.observeUsage(o.w.ID, c.r.Model, c.st.dec, predictedTokens(&c.st.req, o.overlap), o.usage, o.usageOK && o.code == fasthttp.StatusOK, now)
	s.series(o.w.ID, c.r.Model).ttfbObserver().Observe(now.Sub(c.start).Seconds())
	s.traffic.ttft(o.w.ID, c.r.Model, now.Sub(c.start), now)
	s.count(o.w.ID, c.r.Model, o.code, c.start)
}

// settleStreamFailure applies a stream that failed after its answer was committed (cut,
// stalled past a timeout): it counts against the worker.
func (s *Server) settleStreamFailure(w *upstream.Worker, err error) {
	s.pool.ReportFailure(w, err)
	s.metrics.upErrors.WithLabelValues(w.ID, errorKind(err)).Inc()
}

// settleStreamEnd applies the end of a streamed answer, however it ended: the request's
// load ends, the worker's usage report (if the stream carried one) is checked against
// the prediction, and the request is counted with its final status.
func (s *Server) settleStreamEnd(p *streamPipe) {
	p.load.End()
	if p.status == fasthttp.StatusOK {
		s.observeUsage(p.w.ID, p.model, p.dec, p.predicted, p.usage, p.usageOK, time.Now())
	}
	s.count(p.w.ID, p.model, p.status, p.start)
}

// observeUsage records a successful answer's reported usage beside its prediction.
func (s *Server) observeUsage(worker, model string, dec decisionRef, predicted int, u ReportedUsage, ok bool, now time.Time) {
	s.truth.observe(worker, model, predicted, u, ok, now)
	if ok {
		s.decisions.report(dec, u)
		s.traffic.reported(worker, model, predicted, u, now)
	}
}

// streamPipe copies one streaming response from a worker to the client, chunk by chunk.
// It is the response's body stream: fasthttp calls Read in the connection's goroutine
// after the handler has returned and writes and flushes each result as one HTTP chunk at
// once, so every SSE event reaches the client as soon as the worker sends it, with no
// pipe or extra goroutine in between. It holds copies of everything it needs: the
// RequestCtx must no longer be used by then. fasthttp ends it with CloseWithError (a
// non-nil error: the client went away), which closes the worker's stream too, aborting
// the request there.
type streamPipe struct {
	s     *Server
	w     *upstream.Worker
	load  *upstream.Load
	resp  *fasthttp.Response
	model string
	start time.Time
	// sse is true when the worker answered text/event-stream: such a stream is complete
	// only once its data: [DONE] event has been read.
	sse bool
	// predicted is the decision's predicted cached tokens and dec the decision; usage
	// the last usage the stream carried (usageOK).
	predicted int
	dec       decisionRef
	usage     ReportedUsage
	usageOK   bool
	// track is set for a Responses API stream (responses.go): its response id is
	// remembered once an event names it, and it is complete once its terminal event
	// (respDone) has been read, as it has no data: [DONE].
	track respTrack
	// pd is the disaggregated request's phase clock (pd.go); nil for aggregated serving.
	pd       *pdCall
	respSeen bool
	respDone bool

	body     io.Reader
	br       *bufio.Reader // body's read buffer, nil if unknown (coalesce.go)
	guard    streamGuard   // br is not looked at once the watchdog may have closed body
	closer   streamCloser
	watchdog *time.Timer
	timedOut atomic.Bool
	tail     sseTail
	first    bool   // the first chunk has been read
	pending  []byte // the error event still to send
	done     bool   // no more reads from the worker: EOF once pending is sent
	ended    bool   // the stream reached its end (complete, or closed by an error event)
	closed   bool
	status   int
	// conn is the client's connection when its last writes can be held and sent as one
	// (coalesce.go), else nil.
	conn *guardConn
}

// streamCloser is the part of fasthttp's response body stream that can be closed from
// another goroutine: it interrupts a blocked Read by closing the connection.
type streamCloser interface {
	CloseWithError(err error) error
}

// Read implements io.Reader for fasthttp's chunked body writer. A watchdog closes the
// worker's stream when the first chunk takes longer than the first-byte timeout or a
// later one longer than the idle timeout; a stream that fails or stops early ends with
// an SSE error event the client can recognise rather than a silent truncation.
func (p *streamPipe) Read(b []byte) (int, error) {
	n, err := p.read(b)
	if p.conn != nil && p.done {
		if err == nil {
			p.conn.holdEnd() // nothing more from the worker: the end's writes go as one
		} else {
			p.conn.lastChunkNext()
		}
	}
	return n, err
}

func (p *streamPipe) read(b []byte) (int, error) {
	if len(p.pending) > 0 {
		n := copy(b, p.pending)
		p.pending = p.pending[n:]
		return n, nil
	}
	if p.done {
		p.ended = true
		return 0, io.EOF
	}
	if p.body == nil {
		if p.body = p.resp.BodyStream(); p.body == nil {
			p.done = true
			return 0, nil
		}
		p.closer, _ = p.body.(streamCloser)
		p.br = bodyStreamReader(p.body)
		p.watchdog = time.AfterFunc(p.s.cfg.Timeouts.FirstByte, p.timeout)
	}
	n, err := p.body.Read(b)
	if n > 0 && err == nil && p.br != nil {
		n, err = readMore(p.body, p.br, &p.guard, b, n) // the chunks already received (coalesce.go)
	}
	if n > 0 {
		p.took(b[:n])
		p.watchdog.Reset(p.s.cfg.Timeouts.Idle)
	}
	if errors.Is(err, io.EOF) {
		if p.complete() {
			p.done = true
			return n, nil // fasthttp writes n, then reads the EOF
		}
		// fasthttp reports a worker that closed its connection between two chunks as a
		// clean end of the chunked body, so a killed engine would look like a finished
		// stream: only data: [DONE] proves the stream is complete.
		err = errStreamCut
	}
	if err != nil {
		if p.timedOut.Load() {
			err = fmt.Errorf("%w: no chunk within the timeout", errStreamTimeout)
		}
		p.pending = p.cut(err)
		p.done = true
	}
	return n, nil
}

// took reads b, the worker's next bytes, for what the stream says: its tail (for data:
// [DONE]), a Responses stream's events, the usage; the first bytes are the first token.
func (p *streamPipe) took(b []byte) {
	p.tail.add(b)
	if p.track != trackNone {
		p.s.scanResponseEvents(p, b)
	}
	if p.sse {
		if u, ok := sseUsage(b); ok {
			p.usage, p.usageOK = u, true
		}
	}
	if !p.first {
		p.first = true
		p.load.FirstToken()
		now := time.Now()
		p.s.series(p.w.ID, p.model).ttfbObserver().Observe(now.Sub(p.start).Seconds())
		p.s.traffic.ttft(p.w.ID, p.model, now.Sub(p.start), now)
		if p.pd != nil {
			p.s.pdFirstChunk(p.pd)
		}
	}
}

// complete reports whether the stream read so far is a whole answer, as the worker's
// end of it must be: an event stream only once its data: [DONE] (or, for the
// Responses API, its terminal event) has been read.
func (p *streamPipe) complete() bool { return !p.sse || p.tail.done() || p.respDone }

// cut records that the worker failed the stream mid-way with err, against the worker
// and in the request's status, and returns the SSE error event that ends the client's
// stream.
func (p *streamPipe) cut(err error) []byte {
	err = fmt.Errorf("worker %s failed mid-stream: %w", p.w.ID, err)
	p.s.settleStreamFailure(p.w, err)
	p.status = statusOf(err).code
	ev := append([]byte("data: "), appendErrorJSON(nil, err.Error(), statusOf(err))...)
	return append(ev, "\n\n"...)
}

// timeout is the watchdog: it interrupts the blocked read from the worker.
func (p *streamPipe) timeout() {
	p.timedOut.Store(true)
	p.guard.close()
	if p.closer != nil {
		_ = p.closer.CloseWithError(errStreamTimeout)
	}
}

// CloseWithError ends the stream: fasthttp calls it once, after the last Read or when
// writing to the client failed (err != nil). It frees the worker's connection and the
// request's load, and counts the request.
func (p *streamPipe) CloseWithError(err error) error {
	if p.closed {
		return nil
	}
	p.closed = true
	if p.watchdog != nil {
		p.watchdog.Stop()
	}
	if err != nil || !p.ended {
		// The client went away (or the response was dropped) before the end.
		p.status = statusClientClosed
		if p.closer != nil {
			_ = p.closer.CloseWithError(errClientGone)
		}
	}
	_ = p.resp.CloseBodyStream()
	fasthttp.ReleaseResponse(p.resp)
	p.s.settleStreamEnd(p)
	return nil
}

// errStreamCut is an event stream that ended without its data: [DONE] event.
var errStreamCut = fmt.Errorf("event stream ended before data: [DONE]: %w", io.ErrUnexpectedEOF)

// sseTail keeps the last bytes of a stream, to tell whether it ended with data: [DONE].
type sseTail struct {
	b [32]byte
	n int
}

// add appends p, keeping the last len(t.b) bytes.
func (t *sseTail) add(p []byte) {
	if len(p) >= len(t.b) {
		t.n = copy(t.b[:], p[len(p)-len(t.b):])
		return
	}
	if drop := t.n + len(p) - len(t.b); drop > 0 {
		copy(t.b[:], t.b[drop:t.n])
		t.n -= drop
	}
	t.n += copy(t.b[t.n:], p)
}

// done reports whether the stream so far ends with the data: [DONE] event (SSE allows
// no space after the colon and CRLF line ends).
func (t *sseTail) done() bool {
	b := bytes.TrimRight(t.b[:t.n], "\r\n")
	return bytes.HasSuffix(b, []byte("data: [DONE]")) || bytes.HasSuffix(b, []byte("data:[DONE]"))
}

// statusClientClosed is the status recorded when the client went away before the end of
// the response (nginx's convention; never sent).
const statusClientClosed = 499

// readLimited returns up to limit bytes of resp's body, streamed or not.
func readLimited(resp *fasthttp.Response, limit int64) []byte {
	if bs := resp.BodyStream(); bs != nil {
		b, _ := io.ReadAll(io.LimitReader(bs, limit))
		return b
	}
	b := resp.Body()
	if int64(len(b)) > limit {
		b = b[:limit]
	}
	return append([]byte(nil), b...)
}

func (s *Server) setWorkerHeader(ctx *fasthttp.RequestCtx, id string) {
	if s.cfg.Headers.Worker {
		ctx.Response.Header.Set("x-kvroute-worker", id)
	}
}

// fail writes err to the client and counts the request.
func (s *Server) fail(ctx *fasthttp.RequestCtx, model string, err error) {
	writeError(ctx, err)
	s.count("", model, statusOf(err).code, time.Time{})
}

// appendForwardedFor appends the X-Forwarded-For value sent to a worker: the client's
// own X-Forwarded-For, if any, then the client's address.
func appendForwardedFor(dst []byte, ctx *fasthttp.RequestCtx) []byte {
	if prior := ctx.Request.Header.Peek("X-Forwarded-For"); len(prior) > 0 {
		dst = append(append(dst, prior...), ", "...)
	}
	// netip appends without allocating; net.IP.String allocated on every request.
	ip, ok := netip.AddrFromSlice(ctx.RemoteIP())
	if !ok {
		return append(dst, ctx.RemoteIP().String()...)
	}
	return ip.Unmap().AppendTo(dst)
}

// newRequestID returns 16 random hex digits.
func newRequestID() string {
	var b [16]byte
	return string(strconv.AppendUint(b[:0], rand.Uint64()|1<<63, 16))
}

var statusLabels sync.Map // int -> string

func statusLabel(code int) string {
	if v, ok := statusLabels.Load(code); ok {
		return v.(string)
	}
	s := strconv.Itoa(code)
	statusLabels.Store(code, s)
	return s
}

// loadGrace is how long past the total timeout a load entry may stay open before it is
// expired as lost.
const loadGrace = time.Minute

// sessionKey returns the request's session id: the configured header, else the "user"
// field when enabled, else "".
func (s *Server) sessionKey(ctx *fasthttp.RequestCtx, r *request) string {
	if h := s.cfg.Session.Header; h != "" {
		if v := ctx.Request.Header.Peek(h); len(v) > 0 {
			return string(v)
		}
	}
	if s.cfg.Session.User {
		return r.User
	}
	return ""
}

// hopByHop are the fields that describe one connection and are never forwarded, in
// lower case (RFC 9110 section 7.6.1; Keep-Alive, Proxy-Connection and Upgrade per
// its list of the fields such a sender removes).
var hopByHop = []string{
	"connection", "proxy-connection", "keep-alive", "proxy-authenticate",
	"proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
}

// fieldSet is the part of fasthttp's request and response headers stripHopByHop uses.
type fieldSet interface {
	All() iter.Seq2[[]byte, []byte]
	DelBytes(key []byte)
}

// maxHopFields bounds the fields stripHopByHop removes from one header, and so its
// work: more hop-by-hop fields than this are not a real client's.
const maxHopFields = 64

// stripHopByHop removes from h, a header about to be forwarded, the hop-by-hop fields
// and every field the Connection field names ("Connection: keep-alive, X-Hop" makes
// X-Hop hop-by-hop: RFC 9110 section 7.6.1), whatever the case of their names (the
// server keeps names as sent). sc is scratch space (nil: its own): with sc given it
// costs two small allocations per call (fasthttp's iterator and the loop body that
// escapes into it), where restarting the scan after each removal with buffers on the
// stack cost about eight (BenchmarkRequestPath, bench/RESULTS.md "Hot path"). It scans
// h once, and once more only when a Connection field names fields, as a named field may
// come before the Connection field.
func stripHopByHop(h fieldSet, sc *hopScratch) {
	if sc == nil {
		sc = new(hopScratch)
	}
	sc.named, sc.found = sc.namedBuf[:0], sc.foundBuf[:0]
	for k, v := range h.All() {
		if equalFold(k, "connection") {
			for tok := range bytes.SplitSeq(v, []byte{','}) {
				if tok = trimSpace(tok); len(tok) > 0 {
					sc.named = append(append(sc.named, tok...), ',')
				}
			}
		}
		if isHopByHop(k, nil) {
			sc.found = append(append(sc.found, k...), ',')
		}
	}
	if len(sc.named) > 0 {
		sc.found = sc.found[:0]
		for k := range h.All() {
			if isHopByHop(k, sc.named) {
				sc.found = append(append(sc.found, k...), ',')
			}
		}
	}
	for n, f := 0, sc.found; len(f) > 0 && n < maxHopFields; n++ {
		i := bytes.IndexByte(f, ',')
		h.DelBytes(f[:i])
		f = f[i+1:]
	}
}

// hopScratch is stripHopByHop's scratch space, kept in the pooled routeState.
type hopScratch struct {
	named, found       []byte // comma-terminated field names
	namedBuf, foundBuf [256]byte
}

// isHopByHop reports whether the field named k is hop-by-hop: one of hopByHop or of
// named, a comma-terminated list of names, in any case.
func isHopByHop(k, named []byte) bool {
	for _, h := range hopByHop {
		if equalFold(k, h) {
			return true
		}
	}
	for len(named) > 0 {
		i := bytes.IndexByte(named, ',')
		if bytes.EqualFold(k, named[:i]) {
			return true
		}
		named = named[i+1:]
	}
	return false
}

// streamToHTTP10 sends a streaming response to an HTTP/1.0 client. fasthttp writes
// every body stream of unknown length chunked, which RFC 9112 section 6.1 forbids
// towards HTTP/1.0 (it cannot parse it); such a body is instead delimited by closing
// the connection (section 6.3 (8)): no Content-Length, Connection: close, and the
// stream's bytes as they are. The connection is taken over (hijacked) after the
// handler returns, and each chunk is written as soon as it is read, as fasthttp does
// for chunked streams. The writes still go through the guard connection, bounded by
// limits.write_timeout. A hijacked connection is not the server's any more: a graceful
// shutdown does not wait for it (the stream still ends with the worker's, or with the
// timeouts).
func streamToHTTP10(ctx *fasthttp.RequestCtx, sp *streamPipe) {
	h := &ctx.Response.Header
	h.SetContentLength(-2) // identity: Connection: close
	h.Del(fasthttp.HeaderTransferEncoding)
	head := append([]byte(nil), h.Header()...) // a copy: the RequestCtx dies with the handler
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		_, err := c.Write(head)
		buf := make([]byte, 16<<10)
		for err == nil {
			n, rerr := sp.Read(buf)
			if n > 0 {
				_, err = c.Write(buf[:n])
			}
			if errors.Is(rerr, io.EOF) {
				break
			}
			if rerr != nil {
				err = rerr
			}
		}
		_ = sp.CloseWithError(err)
	})
}

// routeCall chooses the worker of c's next attempt: the policy's (route), or for a
// pinned request its worker, on the first attempt only: a stored response lives there
// and nowhere else, so the request is never re-routed.
func (s *Server) routeCall(ctx *fasthttp.RequestCtx, c *call, attempt, class int) (*upstream.Worker, int, *upstream.Load, error) {
	if c.pin == nil {
		return s.route(ctx, c.st, c.reqID, attempt, class)
	}
	if attempt > 0 {
		return nil, 0, nil, nil
	}
	overlap := c.st.held(c.pin.ID)
	return c.pin, overlap, s.beginLoad(c.pin, c.st, overlap), nil
}
