package router

import (
	"errors"
	"net"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/router/blockhash"
)

// The event-loop data plane (data_plane: event_loop; Linux, dataplane_linux.go).
//
// fasthttp serves each connection in a goroutine that blocks on its reads and on the
// worker's answer; every wait parks the goroutine in Go's netpoller and wakes it through
// the scheduler. On the project's 2-core machine that costs a bare fasthttp proxy about
// 1.6x the CPU nginx spends per proxied chat request, whatever the proxy does besides
// (bench/RESULTS.md, Hot path). The event loop does what nginx does: one loop per core,
// locked to its thread, waits for every socket it holds in one epoll set, and runs each
// request's work inline as its bytes arrive.
//
// A loop serves a request when it is the fast path: POST /v1/chat/completions,
// /v1/completions or /v1/embeddings over HTTP/1.1, with one Content-Length body within
// max_body_bytes and the in-flight budget, no Expect and no Transfer-Encoding, while no
// worker has a prefill or decode role and every worker is reached over plain HTTP (the
// fasthttp client speaks TLS), at an IP address or at a host name the loops' resolver
// has an answer for (dataplane_resolve.go). Any
// other request, malformed or too large ones included, is handed to the fasthttp server
// with the bytes already read, together with the rest of its connection: the answers to
// everything else, errors included, come from one place (framing.go, server.go).
//
// For a request it serves, the loop runs what server.go and forward.go run: the checks
// (admit), the request's parse, the routing decision (prepare, routeNow), the attempts
// with retries before the first byte (beginAttempt, settle, answerFailure), the worker's
// answer committed with the same headers (commit), a stream passed through as it arrives
// with its usage read, [DONE] checked and a cut or stalled stream ended with the error
// event (streamPipe's took, complete and cut), and the same accounting. Two steps may
// wait: hashing in engine mode (or a model's first request in auto mode) and the wait
// queue. They run in a goroutine, and the request continues in its loop when they are
// done. The connection limits are the guard listener's, at accept; the header, body,
// idle, write, connect, first-byte, idle-chunk and total timeouts are checked by each
// loop ten times a second.

// The reasons of kvroute_router_dataplane_handoffs_total.
const (
	handoffRequest = "request"
	handoffWorkers = "workers"
	handoffBudget  = "budget"
	handoffSocket  = "socket"
)

// dpMaxIdleUpstream bounds the idle keep-alive connections a loop keeps to one worker.
// Under load a loop holds one per request in flight on the worker; fewer would close
// and redial connections on every request past the bound.
const dpMaxIdleUpstream = 1024

// dpUpstreamIdle is how long an idle worker connection is kept, as the fasthttp client's
// MaxIdleConnDuration (upstream/worker.go).
const dpUpstreamIdle = 30 * time.Second

// dpMaxErrorBody bounds the body of a worker's 5xx or 429 kept for the client, as
// readLimited's limit in attempt.
const dpMaxErrorBody = 64 << 10

// dpMaxResponseHead bounds a worker's response head.
const dpMaxResponseHead = 64 << 10

// dpFastPath reports whether the loop may serve the request whose head is h: the rest of
// the connection goes to fasthttp otherwise. It does not allocate.
func (s *Server) dpFastPath(h *fasthttp.RequestHeader) bool {
	if !h.IsPost() || !h.IsHTTP11() || h.ContentLength() < 0 || h.ContentLength() > s.cfg.MaxBodyBytes {
		return false
	}
	if _, ok := inferenceEndpoint(string(h.RequestURI())); !ok {
		return false // a query string, another path: fasthttp's
	}
	if len(h.Peek(fasthttp.HeaderExpect)) > 0 || len(h.Peek(fasthttp.HeaderTransferEncoding)) > 0 {
		return false
	}
	return checkFraming(h) == nil
}

// hashMayBlock reports whether hashing r's prompt may wait on the network or on files.
func (s *Server) hashMayBlock(r *request) bool {
	if s.hasher == nil || !s.prefixes {
		return false
	}
	base, _ := s.pool.ResolveModel(r.Model)
	return blockhash.MayBlock(s.hasher, base)
}

// dpAppendResponse appends ctx's answer, head and body, as it goes to the client.
func (s *Server) dpAppendResponse(dst []byte, ctx *fasthttp.RequestCtx) []byte {
	resp := &ctx.Response
	if ctx.Request.Header.ConnectionClose() || s.draining.Load() {
		resp.SetConnectionClose()
	}
	resp.Header.SetContentLength(len(resp.Body()))
	dst = resp.Header.AppendBytes(dst)
	return append(dst, resp.Body()...)
}

// dpConn stands for a loop's client connection in its RequestCtx: the handlers ask it
// for the client's address only. Reads and writes fail: the loop owns the socket.
type dpConn struct {
	local, remote net.Addr
}

var errDPConn = errors.New("router: the event loop owns this connection")

func (c *dpConn) Read([]byte) (int, error)         { return 0, errDPConn }
func (c *dpConn) Write([]byte) (int, error)        { return 0, errDPConn }
func (c *dpConn) Close() error                     { return nil }
func (c *dpConn) LocalAddr() net.Addr              { return c.local }
func (c *dpConn) RemoteAddr() net.Addr             { return c.remote }
func (c *dpConn) SetDeadline(time.Time) error      { return nil }
func (c *dpConn) SetReadDeadline(time.Time) error  { return nil }
func (c *dpConn) SetWriteDeadline(time.Time) error { return nil }

// respBody finds the end of a worker's answer in the bytes that follow its head and
// takes out its payload: Content-Length, chunked (RFC 9112 section 7.1; extensions and
// trailers are read and dropped) or, without either, until the worker closes the
// connection (section 6.3 (8)). Sizes are bounded before they are used.
type respBody struct {
	mode  bodyMode
	left  int64 // Content-Length bytes left, or the current chunk's
	st    chunkState
	size  int64
	digit int // hex digits of the current size line
	line  int // bytes of the current extension or trailer line
	trail int // trailer bytes so far
	done  bool
}

type bodyMode uint8

const (
	bodyLength bodyMode = iota
	bodyChunked
	bodyClose
)

type chunkState uint8

const (
	chSize chunkState = iota
	chSizeLF
	chExt
	chData
	chDataCR
	chDataLF
	chTrailer
)

// Bounds of a chunked body's framing: size digits (16^15 is past any answer), one
// chunk extension, the trailer section.
const (
	maxChunkDigits = 15
	maxChunkExt    = 4 << 10
	maxTrailer     = 16 << 10
)

var errChunked = errors.New("malformed chunked body")

// init starts the body of an answer with head h to a request that was not HEAD.
func (b *respBody) init(h *fasthttp.ResponseHeader) {
	*b = respBody{}
	switch code, n := h.StatusCode(), h.ContentLength(); {
	case code == fasthttp.StatusNoContent || code == fasthttp.StatusNotModified || code < 200:
		b.done = true
	case n == -1:
		b.mode = bodyChunked
	case n >= 0:
		b.left = int64(n)
		b.done = n == 0
	default:
		b.mode = bodyClose
	}
}

// feed reads src, the next bytes from the worker: the payload is appended to dst, used
// is how much of src belongs to the answer (the rest would be bytes the worker sent
// past it). The answer is complete once b.done.
func (b *respBody) feed(dst, src []byte) (out []byte, used int, err error) {
	switch b.mode {
	case bodyClose:
		return append(dst, src...), len(src), nil
	case bodyLength:
		n := int(min(b.left, int64(len(src))))
		b.left -= int64(n)
		b.done = b.left == 0
		return append(dst, src[:n]...), n, nil
	}
	i := 0
	for ; i < len(src) && !b.done; i++ {
		ch := src[i]
		switch b.st {
		case chSize:
			if v, ok := unhex(ch); ok {
				if b.digit++; b.digit > maxChunkDigits {
					return dst, i, errChunked
				}
				b.size = b.size<<4 | int64(v)
				continue
			}
			if b.digit == 0 {
				return dst, i, errChunked
			}
			switch ch {
			case '\r':
				b.st = chSizeLF
			case '\n':
				b.endSizeLine()
			case ';', ' ', '\t':
				b.st, b.line = chExt, 0
			default:
				return dst, i, errChunked
			}
		case chSizeLF:
			if ch != '\n' {
				return dst, i, errChunked
			}
			b.endSizeLine()
		case chExt:
			if ch == '\n' {
				b.endSizeLine()
			} else if b.line++; b.line > maxChunkExt {
				return dst, i, errChunked
			}
		case chData:
			n := int(min(b.left, int64(len(src)-i)))
			dst = append(dst, src[i:i+n]...)
			b.left -= int64(n)
			i += n - 1
			if b.left == 0 {
				b.st = chDataCR
			}
		case chDataCR:
			switch ch {
			case '\r':
				b.st = chDataLF
			case '\n':
				b.st = chSize
			default:
				return dst, i, errChunked
			}
		case chDataLF:
			if ch != '\n' {
				return dst, i, errChunked
			}
			b.st = chSize
		case chTrailer:
			if b.trail++; b.trail > maxTrailer {
				return dst, i, errChunked
			}
			switch ch {
			case '\n':
				if b.line == 0 {
					b.done = true
				}
				b.line = 0
			case '\r':
			default:
				b.line++
			}
		}
	}
	return dst, i, nil
}

func (b *respBody) endSizeLine() {
	b.digit = 0
	if b.size == 0 {
		b.st, b.line = chTrailer, 0
		return
	}
	b.st, b.left, b.size = chData, b.size, 0
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// appendChunk appends p as one chunk of a chunked body.
func appendChunk(dst, p []byte) []byte {
	if len(p) == 0 {
		return dst
	}
	var hex [16]byte
	n := len(hex)
	for v := len(p); ; v >>= 4 {
		n--
		hex[n] = "0123456789abcdef"[v&15]
		if v < 16 {
			break
		}
	}
	dst = append(append(dst, hex[n:]...), "\r\n"...)
	return append(append(dst, p...), "\r\n"...)
}

// lastChunk ends a chunked body.
var lastChunk = []byte("0\r\n\r\n")
