package kvevents

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
)

// ZMTP 3.0 wire pieces, written by hand from https://rfc.zeromq.org/spec/23/ so tests
// can play a misbehaving peer that zmq4 would never produce.

// zmtpGreeting is a ZMTP 3.0 greeting for the NULL mechanism, not as server.
func zmtpGreeting() []byte {
	g := make([]byte, zmtpGreetingLen)
	g[0], g[9], g[10], g[11] = 0xFF, 0x7F, 3, 0
	copy(g[12:32], "NULL")
	return g
}

// zmtpFrame encodes one frame; flags holds MORE and COMMAND, LONG is set by size.
func zmtpFrame(flags byte, body []byte) []byte {
	if len(body) > 255 {
		h := make([]byte, 9, 9+len(body))
		h[0] = flags | flagLong
		binary.BigEndian.PutUint64(h[1:], uint64(len(body)))
		return append(h, body...)
	}
	return append([]byte{flags, byte(len(body))}, body...)
}

// zmtpReady is a READY command announcing socketType.
func zmtpReady(socketType string) []byte {
	body := []byte("\x05READY\x0bSocket-Type")
	body = binary.BigEndian.AppendUint32(body, uint32(len(socketType)))
	body = append(body, socketType...)
	return zmtpFrame(0x04, body)
}

// zmtpMessage encodes a multipart message.
func zmtpMessage(frames ...[]byte) []byte {
	var out []byte
	for i, f := range frames {
		var fl byte
		if i < len(frames)-1 {
			fl = flagMore
		}
		out = append(out, zmtpFrame(fl, f)...)
	}
	return out
}

// zmtpLongHeader is the header of a frame announcing size bytes.
func zmtpLongHeader(flags byte, size uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte{flags | flagLong}, size)
}

// zmtpHandshake plays the accepting side of a NULL-mechanism handshake on c as
// socketType: greeting and READY both ways. It returns after reading the peer's READY.
func zmtpHandshake(c net.Conn, socketType string) error {
	if _, err := c.Write(append(zmtpGreeting(), zmtpReady(socketType)...)); err != nil {
		return err
	}
	var g [zmtpGreetingLen]byte
	if _, err := io.ReadFull(c, g[:]); err != nil {
		return err
	}
	_, err := zmtpReadFrame(c)
	return err
}

// zmtpReadFrame reads one frame (a test peer's trusted input) and returns its body.
func zmtpReadFrame(r io.Reader) ([]byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	size := uint64(h[1])
	if h[0]&flagLong != 0 {
		var l [8]byte
		l[0] = h[1]
		if _, err := io.ReadFull(r, l[1:]); err != nil {
			return nil, err
		}
		size = binary.BigEndian.Uint64(l[:])
	}
	if size > 1<<20 {
		return nil, errors.New("test peer: frame too large")
	}
	b := make([]byte, size)
	_, err := io.ReadFull(r, b)
	return b, err
}

// refFirstViolation parses stream as a whole (an oracle independent of zmtpLimiter's
// incremental state machine) and returns the index of the byte completing the first
// size over limit (per frame or per message, or the 1025th frame of a message), or -1.
func refFirstViolation(stream []byte, limit int64) int {
	i := zmtpGreetingLen
	var total uint64
	frames := 0
	for i < len(stream) {
		flags := stream[i]
		n := 1
		if flags&flagLong != 0 {
			n = 8
		}
		if i+1+n > len(stream) {
			return -1
		}
		var size uint64
		for _, b := range stream[i+1 : i+1+n] {
			size = size<<8 | uint64(b)
		}
		frames++
		if size > uint64(limit) {
			return i + n
		}
		total += size
		if total > uint64(limit) || frames > maxFramesPerMessage {
			return i + n
		}
		if flags&flagMore == 0 {
			total, frames = 0, 0
		}
		if uint64(len(stream)-(i+1+n)) < size {
			return -1
		}
		i += 1 + n + int(size)
	}
	return -1
}

// feed runs stream through a limiter in chunks of chunk bytes (0: whole) and returns
// how many bytes it let through and its error.
func feed(stream []byte, limit int64, chunk int) (int, error) {
	z := newZMTPLimiter(limit)
	passed := 0
	for off := 0; off < len(stream); {
		end := len(stream)
		if chunk > 0 {
			end = min(off+chunk, len(stream))
		}
		n, err := z.scan(stream[off:end])
		passed += n
		if err != nil {
			return passed, err
		}
		off = end
	}
	return passed, nil
}

func TestZMTPLimiter(t *testing.T) {
	const limit = 1000
	head := append(zmtpGreeting(), zmtpReady("PUB")...)
	ok := zmtpMessage([]byte("topic"), make([]byte, 8), make([]byte, 900))
	for _, c := range []struct {
		name   string
		stream []byte
		multi  bool
		fail   bool
	}{
		{name: "well-formed", stream: cat(head, ok, ok, zmtpMessage(make([]byte, limit)))},
		{name: "2^40 long frame", stream: cat(head, ok, zmtpLongHeader(0, 1<<40)), fail: true},
		{name: "limit+1 with payload", stream: cat(head, zmtpFrame(0, make([]byte, limit+1))), fail: true},
		{name: "max uint64", stream: cat(head, zmtpLongHeader(flagMore, ^uint64(0))), fail: true},
		{name: "oversize command", stream: cat(head, zmtpLongHeader(0x04, limit+1)), fail: true},
		{name: "multipart total", stream: cat(head, zmtpMessage(make([]byte, 600), make([]byte, 600))), fail: true, multi: true},
		{name: "empty frames forever", stream: cat(head, bytes.Repeat([]byte{flagMore, 0}, maxFramesPerMessage+1)), fail: true, multi: true},
		{name: "many small messages", stream: cat(head, bytes.Repeat(zmtpMessage(nil), 3*maxFramesPerMessage))},
	} {
		want := refFirstViolation(c.stream, limit)
		if (want >= 0) != c.fail {
			t.Fatalf("%s: oracle violation at %d, want fail %v", c.name, want, c.fail)
		}
		for _, chunk := range []int{0, 1, 7, 64} {
			passed, err := feed(c.stream, limit, chunk)
			var oe *OversizeError
			switch {
			case !c.fail && (err != nil || passed != len(c.stream)):
				t.Errorf("%s/chunk %d: passed %d of %d, %v", c.name, chunk, passed, len(c.stream), err)
			case c.fail && (!errors.As(err, &oe) || !errors.Is(err, ErrMessageTooLarge) || passed != want || oe.Multipart != c.multi):
				t.Errorf("%s/chunk %d: passed %d (want %d), err %v", c.name, chunk, passed, want, err)
			}
		}
	}
}

// captureZMTP returns the bytes a real zmq4 PUB sends to a subscriber on loopback: its
// greeting, READY, and a short and a long (LONG-flagged) message.
func captureZMTP(tb testing.TB) []byte {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pub := zmq4.NewPub(ctx, zmq4.WithLogger(zmqLogger))
	defer func() { _ = pub.Close() }()
	if err := pub.Listen("tcp://127.0.0.1:0"); err != nil {
		tb.Fatal(err)
	}
	c, err := net.Dial("tcp", pub.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	// Greeting and READY as a SUB, then a subscription to everything (a message whose
	// body is 0x01 and the prefix, ZMTP 3.0's form).
	if _, err := c.Write(cat(zmtpGreeting(), zmtpReady("SUB"), zmtpMessage([]byte{1}))); err != nil {
		tb.Fatal(err)
	}
	var got bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(&got, c)
	}()
	long := bytes.Repeat([]byte{0xab}, 300)
	for i := 0; i < 50; i++ { // until the subscription has reached the PUB
		_ = pub.Send(zmq4.NewMsgFrom([]byte("kv"), binary.BigEndian.AppendUint64(nil, uint64(i)), []byte{0x93, 1, 2, 3}))
		_ = pub.Send(zmq4.NewMsgFrom([]byte("kv"), binary.BigEndian.AppendUint64(nil, uint64(i)), long))
		time.Sleep(10 * time.Millisecond)
	}
	_ = c.SetReadDeadline(time.Now())
	<-done
	if got.Len() <= zmtpGreetingLen+300 {
		tb.Fatalf("captured only %d bytes from a zmq4 PUB", got.Len())
	}
	return got.Bytes()
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestCapturedStreamPasses(t *testing.T) {
	s := captureZMTP(t)
	if passed, err := feed(s, 4096, 3); err != nil || passed != len(s) {
		t.Fatalf("real zmq4 stream: passed %d of %d, %v", passed, len(s), err)
	}
	if passed, err := feed(s, 299, 0); !errors.Is(err, ErrMessageTooLarge) || passed != refFirstViolation(s, 299) {
		t.Fatalf("300-byte frame under a 299 limit: passed %d, %v", passed, err)
	}
}

// FuzzZMTPFrames feeds arbitrary bytes, in arbitrary chunks, through a limitConn and
// checks that it never panics, lets through exactly the bytes before the first
// violation an independent whole-stream parser finds, and stays failed afterwards.
// Input: the chunk size, the limit in units of 64 bytes, and the stream after a valid
// greeting. Seeds: testdata/fuzz/FuzzZMTPFrames/zmq4-pub-capture-* hold what a real
// zmq4 v0.17.0 PUB sent a subscriber on loopback (captureZMTP: READY and two pairs of
// short and LONG-framed messages), plus the hand-made streams below.
func FuzzZMTPFrames(f *testing.F) {
	f.Add(byte(5), byte(2), cat(zmtpReady("PUB"), zmtpLongHeader(0, 1<<40)))
	f.Add(byte(3), byte(4), cat(zmtpReady("ROUTER"), zmtpMessage(nil, make([]byte, 8), make([]byte, 300))))
	f.Add(byte(2), byte(1), bytes.Repeat([]byte{flagMore, 0}, maxFramesPerMessage+2))
	f.Fuzz(func(t *testing.T, chunkB, limitB byte, rest []byte) {
		limit := int64(limitB) * 64
		if limit == 0 {
			limit = 1
		}
		chunk := int(chunkB%32) + 1
		stream := cat(zmtpGreeting(), rest)
		want := refFirstViolation(stream, limit)
		lc := newLimitConn(&bytesConn{r: bytes.NewReader(stream)}, limit, nil)
		var passed bytes.Buffer
		buf := make([]byte, chunk)
		var err error
		for {
			var n int
			n, err = lc.Read(buf)
			passed.Write(buf[:n])
			if err != nil {
				break
			}
		}
		if want < 0 {
			if !errors.Is(err, io.EOF) || passed.Len() != len(stream) {
				t.Fatalf("valid stream: passed %d of %d, %v", passed.Len(), len(stream), err)
			}
			return
		}
		if !errors.Is(err, ErrMessageTooLarge) || passed.Len() != want {
			t.Fatalf("violation at %d: passed %d, %v", want, passed.Len(), err)
		}
		if refFirstViolation(passed.Bytes(), limit) >= 0 {
			t.Fatal("a size over the limit got through")
		}
		if n, err2 := lc.Read(buf); n != 0 || !errors.Is(err2, ErrMessageTooLarge) {
			t.Fatalf("read after the error: %d, %v", n, err2)
		}
	})
}

// bytesConn is a net.Conn reading from r; writes and deadlines are no-ops.
type bytesConn struct {
	net.Conn
	r io.Reader
}

func (c *bytesConn) Read(p []byte) (int, error) { return c.r.Read(p) }
