package router

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync/atomic"

	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fasthttp"
)

// This file is where a request's body is read. The fasthttp server streams request
// bodies (StreamRequestBody): the handler runs once the headers are in, so the framing
// is checked, and the body's memory reserved from the in-flight budget, before any of
// the body is read (fasthttp pre-reads at most 8 KiB). Every refusal here closes the
// connection: the rest of the body is unread and must never be taken for a request.

// errMalformed is a request whose HTTP framing cannot be trusted. Its message is fixed:
// an error body never carries request bytes, which behind a load balancer that shares
// connections may be another client's.
var errMalformed = errors.New("malformed request")

// checkFraming rejects the framing two HTTP parsers could read differently (request
// smuggling). fasthttp reads a request with both Content-Length and Transfer-Encoding:
// chunked as chunked, and accepts Transfer-Encoding: identity; the raw header block
// shows what it folded away. It does not allocate.
//
//   - Transfer-Encoding with Content-Length: RFC 9112 section 6.3 (3) calls it a likely
//     smuggling attempt; the server must close the connection after answering.
//   - Transfer-Encoding other than exactly one "chunked": RFC 9112 section 6.3 (4), the
//     length cannot be determined reliably (400, then close); chunked is the only
//     transfer coding kvroute decodes (section 6.1; "identity" is no longer one).
//   - Content-Length fields that differ, or a list: RFC 9112 section 6.3 (5). fasthttp
//     refuses any second Content-Length already; this is the same rule, kept here so
//     it does not depend on that.
func checkFraming(h *fasthttp.RequestHeader) error {
	var te, cl int
	var clValue []byte
	raw := h.RawHeaders()
	for len(raw) > 0 {
		line := raw
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			line, raw = raw[:i], raw[i+1:]
		} else {
			raw = nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon < 0 {
			continue
		}
		name, value := line[:colon], trimSpace(bytes.TrimSuffix(line[colon+1:], []byte("\r")))
		switch {
		case equalFold(name, "transfer-encoding"):
			te++
			if te > 1 || !equalFold(value, "chunked") {
				return fmt.Errorf("%w: Transfer-Encoding must be exactly chunked", errMalformed)
			}
		case equalFold(name, "content-length"):
			cl++
			if cl > 1 && !bytes.Equal(value, clValue) {
				return fmt.Errorf("%w: differing Content-Length fields", errMalformed)
			}
			clValue = value
		}
	}
	if te > 0 && cl > 0 {
		return fmt.Errorf("%w: Content-Length with Transfer-Encoding", errMalformed)
	}
	return nil
}

// bodyBudget bounds the request bodies held in memory at once, across all
// connections (limits.max_inflight_body_bytes). It must not be copied.
type bodyBudget struct {
	max  int64
	used atomic.Int64
}

// reserve takes n bytes from the budget; false (and nothing taken) when they do not fit.
func (b *bodyBudget) reserve(n int64) bool {
	if b.used.Add(n) > b.max {
		b.used.Add(-n)
		return false
	}
	return true
}

// release gives n reserved bytes back.
func (b *bodyBudget) release(n int64) { b.used.Add(-n) }

// bodyStep is how much more of the budget a chunked body reserves each time it
// outgrows its reservation.
const bodyStep = 64 << 10

// inboundBody is a request body read into memory: its buffer and the budget it holds.
type inboundBody struct {
	buf      *bytebufferpool.ByteBuffer
	reserved int64
}

// readBody checks the framing of the request and reads its body into memory within
// max_body_bytes and the in-flight budget. The body is then ctx.PostBody() as usual;
// the caller must call releaseBody when the handler ends. On error nothing usable was
// read, the error has been counted, and the connection is marked to close.
func (s *Server) readBody(ctx *fasthttp.RequestCtx, in *inboundBody) error {
	err := checkFraming(&ctx.Request.Header)
	if err == nil {
		err = s.readBodyStream(ctx, in)
	}
	if err == nil {
		return nil
	}
	ctx.SetConnectionClose()
	var ne net.Error
	slow := errors.As(err, &ne) && ne.Timeout()
	if !slow {
		lingerOnClose(ctx) // the client may still be sending: let it read the answer
	}
	switch {
	case errors.Is(err, errBodyTooLarge):
		s.gate.rejected[reasonBodyTooLarge].Inc()
	case errors.Is(err, errBodyBudget):
		s.gate.rejected[reasonBodyBudget].Inc()
	case slow:
		s.gate.rejected[reasonSlowClient].Inc()
		err = s.errTimeout()
	default:
		s.gate.rejected[reasonMalformed].Inc()
		if !errors.Is(err, errMalformed) {
			err = errMalformed // a body read error may quote the body
		}
	}
	return err
}

func (s *Server) readBodyStream(ctx *fasthttp.RequestCtx, in *inboundBody) error {
	rs := ctx.RequestBodyStream()
	if rs == nil {
		return nil // no body
	}
	limit := s.cfg.MaxBodyBytes
	n := ctx.Request.Header.ContentLength()
	if n > limit {
		return s.errBodyTooLarge()
	}
	if n == 0 {
		return nil // nothing to hold: PostBody reads the empty stream
	}
	in.buf = bytebufferpool.Get()
	if n >= 0 {
		if !s.budget.reserve(int64(n)) {
			return errBodyBudget
		}
		in.reserved = int64(n)
		in.buf.B = slices.Grow(in.buf.B[:0], n)[:n]
		if _, err := io.ReadFull(rs, in.buf.B); err != nil {
			return fmt.Errorf("read body: %w", err)
		}
	} else {
		// Chunked: the size is known at the end only, so the reservation grows with it.
		b := in.buf.B[:0]
		for {
			if int64(len(b)) == in.reserved {
				if len(b) > limit {
					return s.errBodyTooLarge()
				}
				if !s.budget.reserve(bodyStep) {
					return errBodyBudget
				}
				in.reserved += bodyStep
				b = slices.Grow(b, bodyStep)
			}
			m, err := rs.Read(b[len(b):in.reserved])
			b = b[:len(b)+m]
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				in.buf.B = b
				return fmt.Errorf("read chunked body: %w", err)
			}
		}
		in.buf.B = b
		if len(b) > limit {
			return s.errBodyTooLarge()
		}
		s.budget.release(in.reserved - int64(len(b)))
		in.reserved = int64(len(b))
	}
	ctx.Request.SetBodyRaw(in.buf.B)
	return nil
}

// releaseBody ends the request's hold on its body: its memory and its budget.
func (s *Server) releaseBody(ctx *fasthttp.RequestCtx, in *inboundBody) {
	if in.buf == nil {
		return
	}
	ctx.Request.ResetBody()
	bytebufferpool.Put(in.buf)
	s.budget.release(in.reserved)
	*in = inboundBody{}
}

func (s *Server) errBodyTooLarge() error {
	return fmt.Errorf("%w: the limit is %d bytes", errBodyTooLarge, s.cfg.MaxBodyBytes)
}

func (s *Server) errTimeout() error {
	return fmt.Errorf("%w: headers within %s, body within %s", errRequestTimeout, s.cfg.Limits.HeaderTimeout, s.cfg.Limits.BodyTimeout)
}
