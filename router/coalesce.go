package router

import (
	"bufio"
	"bytes"
	"io"
	"reflect"
	"sync"
)

// A stream's answer is read through fasthttp's body stream, which returns at most one
// HTTP chunk of the worker's answer (or the part of it received so far) per Read, and
// fasthttp's chunked writer sends each Read to the client as one chunk with a flush:
// one write system call per piece. A worker that flushes every token therefore cost
// the router one write per token where nginx writes whatever one read brought in (4x
// as many writes in the proxy benchmark's streams). coalesceReader lets streamPipe.Read
// take, after its first Read, the further chunks already received: bytes in the
// stream's read buffer, never a wait for more (streams stay unbuffered).
//
// fasthttp does not expose the stream's read buffer; bodyStreamReader finds it by
// reflection, following the fields named reader (or an embedded Reader) from the body
// stream down to a *bufio.Reader (fasthttp 1.74: clientStreamBody.reader ->
// requestStream.reader), once per stream, and gives up (no coalescing: the plain one
// Read) when the path is not there. TestStreamCoalesceAvailable fails on a fasthttp
// version where it is not, so an upgrade cannot quietly lose it.
//
// The buffer goes back to fasthttp's pool when the stream is closed, which the
// streamPipe's watchdog may do from another goroutine: streamGuard keeps readMore from
// looking at the buffer once that may have happened.

var bufioReaderType = reflect.TypeFor[*bufio.Reader]()

// bodyStreamReader returns the read buffer under a fasthttp body stream, or nil.
func bodyStreamReader(body io.Reader) *bufio.Reader {
	v := reflect.ValueOf(body)
	for range 4 {
		if v.Kind() == reflect.Interface {
			v = v.Elem()
		}
		if v.Kind() != reflect.Pointer || v.IsNil() {
			return nil
		}
		if v.Type() == bufioReaderType {
			return (*bufio.Reader)(v.UnsafePointer())
		}
		s := v.Elem()
		if s.Kind() != reflect.Struct {
			return nil
		}
		f := s.FieldByName("reader")
		if !f.IsValid() {
			f = s.FieldByName("Reader")
		}
		if !f.IsValid() {
			return nil
		}
		v = f
	}
	return nil
}

// streamGuard orders readMore's looks at a stream's read buffer before the stream's
// close from another goroutine.
type streamGuard struct {
	mu     sync.Mutex
	closed bool
}

// close marks the stream closed; readMore no longer looks at its buffer.
func (g *streamGuard) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// ready reports whether body can return more without waiting: its read buffer br holds
// bytes and, in case the next Read parses a chunk's size line, a whole line (a Read
// mid-chunk returns buffered bytes whatever they are, and a size line that is there is
// followed, in every sane worker's write, by its data).
func (g *streamGuard) ready(br *bufio.Reader) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed || br.Buffered() == 0 {
		return false
	}
	buf, _ := br.Peek(br.Buffered())
	return bytes.IndexByte(buf, '\n') >= 0
}

// readMore appends to b[:n] (n > 0, from the first Read of body) what body can return
// without waiting (see streamGuard.ready). It returns the new length and the error of
// the last Read.
func readMore(body io.Reader, br *bufio.Reader, g *streamGuard, b []byte, n int) (int, error) {
	for n < len(b) && g.ready(br) {
		m, err := body.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
		if m == 0 {
			break
		}
	}
	return n, nil
}
