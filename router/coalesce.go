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

// A stream's end. fasthttp's chunked writer flushes the answer's last piece as one
// write, then the last-chunk line "0\r\n" as another, and the server flushes the
// trailer's empty line as a third: three system calls and three packets where nginx,
// having read the worker's last chunk and its end together, sends one. The streamPipe
// knows when the worker's answer has ended and tells the client's connection
// (guardConn: every accepted plain TCP connection; not under TLS, where each write is a
// record anyway, nor for HTTP/1.0, which is not chunked):
//
//   - holdEnd, when its Read returns with nothing more to read from the worker: the
//     writes that follow (the answer's last piece) are held.
//   - lastChunkNext, when its Read returns io.EOF: the next write is fasthttp's
//     "0\r\n". It goes out with what is held and the trailer's "\r\n" in one write, and
//     the "\r\n" that begins the server's next write (its flush of the trailer, alone
//     or before a pipelined request's answer) is then dropped. A stream's answer has no
//     trailer fields (Trailer is hop-by-hop and stripped; the streamPipe is not given
//     the connection otherwise), so that trailer is always the empty line.
//
// Nothing waits: the held writes, the EOF Read and the "0\r\n" write are made one after
// the other on the connection's goroutine with no I/O in between. A write other than
// the one expected releases what is held, in order, and the hold ends.
// TestStreamEndOneWrite counts the writes, and fails on a fasthttp version that frames
// the end differently (the hold then releases at the unexpected write: more writes).

type endState uint8

const (
	endIdle      endState = iota
	endHolding            // writes are held
	endLastChunk          // the next write is fasthttp's last-chunk line
	endSwallow            // the trailer's line went out: drop it from the next write
)

// streamEnd is a guardConn's hold of a stream's last writes, used by the connection's
// goroutine only.
type streamEnd struct {
	state endState
	held  *[]byte
}

// maxHeld bounds what a hold keeps; a stream's last piece is one fasthttp copy buffer
// (4 KiB) and its framing.
const maxHeld = 32 << 10

var (
	lastChunkLine = []byte("0\r\n")
	crlf          = []byte("\r\n")
	heldPool      = sync.Pool{New: func() any { b := make([]byte, 0, 8<<10); return &b }}
)

// holdEnd holds the writes that follow until lastChunkNext's.
func (c *guardConn) holdEnd() {
	if c.end.state == endIdle {
		c.end.state = endHolding
	}
}

// lastChunkNext says the next write is the chunked body's last-chunk line.
func (c *guardConn) lastChunkNext() {
	if c.end.state == endIdle || c.end.state == endHolding {
		c.end.state = endLastChunk
	}
}

// writeEnd is Write while a stream's end is held or being sent.
func (c *guardConn) writeEnd(p []byte) (int, error) {
	e := &c.end
	switch e.state {
	case endHolding:
		if e.heldLen()+len(p) <= maxHeld {
			e.hold(p)
			return len(p), nil
		}
	case endLastChunk:
		if bytes.Equal(p, lastChunkLine) {
			e.hold(p)
			e.hold(crlf)
			_, err := c.releaseHeld()
			if err != nil {
				return 0, err
			}
			e.state = endSwallow
			return len(p), nil
		}
	case endSwallow:
		e.state = endIdle
		if bytes.HasPrefix(p, crlf) {
			if len(p) == len(crlf) {
				return len(p), nil
			}
			n, err := c.write(p[len(crlf):])
			return n + len(crlf), err
		}
		return c.write(p)
	}
	// Not the write expected: what is held goes out first, then p.
	e.state = endIdle
	if _, err := c.releaseHeld(); err != nil {
		return 0, err
	}
	return c.write(p)
}

// hold appends p to what is held.
func (e *streamEnd) hold(p []byte) {
	if e.held == nil {
		e.held = heldPool.Get().(*[]byte) //nolint:forcetypeassert // the pool's only type
	}
	*e.held = append(*e.held, p...)
}

func (e *streamEnd) heldLen() int {
	if e.held == nil {
		return 0
	}
	return len(*e.held)
}

// releaseHeld writes what is held, in one write, and returns the buffer to the pool.
func (c *guardConn) releaseHeld() (int, error) {
	e := &c.end
	if e.held == nil {
		return 0, nil
	}
	n, err := c.write(*e.held)
	*e.held = (*e.held)[:0]
	heldPool.Put(e.held)
	e.held = nil
	if err != nil {
		e.state = endIdle
	}
	return n, err
}
