package kvevents

import (
	"errors"
	"fmt"
	"net"
)

// DefaultMaxMessageBytes is the default of [Options].MaxMessageBytes: 4 MiB. vLLM emits
// one batch per scheduler step, so a batch holds the blocks of at most one step's tokens
// (max_num_batched_tokens, 8192 by default with chunked prefill); even a 128k-token
// prompt prefilled in one step encodes to well under 1 MiB of msgpack.
const DefaultMaxMessageBytes = 4 << 20

// maxFramesPerMessage bounds the frames of one ZMQ message. vLLM's messages have three
// ([topic, seq, payload] and ["", seq, payload] on replay); without a bound a stream of
// empty frames flagged MORE would grow zmq4's frame slice without limit at 2 wire bytes
// per frame.
const maxFramesPerMessage = 1024

// ErrMessageTooLarge is matched (errors.Is) by every [*OversizeError].
var ErrMessageTooLarge = errors.New("zmq message too large")

// OversizeError is the read error of an events or replay connection whose peer announced
// a frame, or a multipart message, larger than the limit (or a message of more than 1024
// frames). It is returned before zmq4 sees the frame's header, so nothing of the claimed
// size is ever allocated; the connection is then dead and the source reconnects.
type OversizeError struct {
	// Size is the announced size in bytes of the frame, or of the message so far when
	// Multipart is set.
	Size uint64
	// Limit is the configured maximum in bytes.
	Limit int64
	// Frames is the number of frames of the message including the offending one.
	Frames int
	// Multipart is set when the message's frames together exceed the limit (or are too
	// many) although each frame is within it.
	Multipart bool
}

func (e *OversizeError) Error() string {
	switch {
	case e.Frames > maxFramesPerMessage:
		return fmt.Sprintf("zmq message has more than %d frames", maxFramesPerMessage)
	case e.Multipart:
		return fmt.Sprintf("zmq message of %d frames totals %d bytes, over the limit of %d", e.Frames, e.Size, e.Limit)
	}
	return fmt.Sprintf("zmq frame announces %d bytes, over the limit of %d", e.Size, e.Limit)
}

// Unwrap makes errors.Is(err, ErrMessageTooLarge) hold.
func (e *OversizeError) Unwrap() error { return ErrMessageTooLarge }

// ZMTP 3.x framing (https://rfc.zeromq.org/spec/23/ and https://rfc.zeromq.org/spec/37/):
// a 64-byte greeting, then frames. A frame is a flags byte, a size (1 byte, or 8 bytes
// big-endian when the LONG bit is set) and that many body bytes. Commands (READY, and
// PING/PONG in 3.1) are frames with the COMMAND bit; they are bounded like messages.
const (
	zmtpGreetingLen = 64
	flagMore        = 0x01
	flagLong        = 0x02
)

type zmtpState uint8

const (
	stGreeting zmtpState = iota
	stFlags
	stSize
	stBody
)

// zmtpLimiter follows a ZMTP 3.x byte stream as it is read and refuses the byte that
// completes a frame size over the limit. It only parses framing: greeting contents and
// command bodies are zmq4's to validate. The zero value is not usable; see newZMTPLimiter.
type zmtpLimiter struct {
	limit int64

	st       zmtpState
	left     uint64 // greeting or body bytes still to skip
	flags    byte
	sizeBuf  [8]byte
	sizeHave int // size bytes seen
	sizeLen  int // 1 or 8
	msgBytes uint64
	frames   int
}

func newZMTPLimiter(limit int64) zmtpLimiter {
	return zmtpLimiter{limit: limit, st: stGreeting, left: zmtpGreetingLen}
}

// scan consumes p, the next bytes of the stream, and returns how many of them may be
// handed on: len(p), or, at an oversize frame, the bytes before the one completing its
// size, with the error. After an error the limiter must not be used again.
func (z *zmtpLimiter) scan(p []byte) (int, error) {
	i := 0
	for i < len(p) {
		switch z.st {
		case stGreeting, stBody:
			n := min(z.left, uint64(len(p)-i))
			z.left -= n
			i += int(n)
			if z.left == 0 {
				z.endFrame()
			}
		case stFlags:
			z.flags = p[i]
			i++
			z.sizeHave, z.sizeLen = 0, 1
			if z.flags&flagLong != 0 {
				z.sizeLen = 8
			}
			z.st = stSize
		case stSize:
			z.sizeBuf[z.sizeHave] = p[i]
			z.sizeHave++
			if z.sizeHave < z.sizeLen {
				i++
				continue
			}
			var size uint64
			for _, b := range z.sizeBuf[:z.sizeLen] {
				size = size<<8 | uint64(b)
			}
			if err := z.check(size); err != nil {
				return i, err // p[i] completes the size: zmq4 must not see it
			}
			i++
			z.left = size
			z.st = stBody
			if size == 0 {
				z.endFrame()
			}
		}
	}
	return i, nil
}

// check counts a frame of size bytes into the current message and reports whether the
// frame or the message is over the limit.
func (z *zmtpLimiter) check(size uint64) error {
	z.frames++
	lim := uint64(z.limit)
	if size > lim {
		return &OversizeError{Size: size, Limit: z.limit, Frames: z.frames}
	}
	z.msgBytes += size // no overflow: both are at most lim
	if z.msgBytes > lim || z.frames > maxFramesPerMessage {
		return &OversizeError{Size: z.msgBytes, Limit: z.limit, Frames: z.frames, Multipart: true}
	}
	return nil
}

// endFrame moves past a finished greeting or frame body.
func (z *zmtpLimiter) endFrame() {
	if z.st != stGreeting && z.flags&flagMore == 0 {
		z.msgBytes, z.frames = 0, 0
	}
	z.st = stFlags
}

// limitConn is a net.Conn whose reads go through a zmtpLimiter: an oversize frame fails
// the Read that would deliver the last byte of its size, so zmq4's Conn.read, which
// allocates whatever size it is told (zmq4 v0.17.0 conn.go), never sees it.
type limitConn struct {
	net.Conn
	lim     zmtpLimiter
	err     error       // sticky limiter error
	refused func(error) // called once with err; may be nil
}

func newLimitConn(c net.Conn, limit int64, refused func(error)) *limitConn {
	return &limitConn{Conn: c, lim: newZMTPLimiter(limit), refused: refused}
}

// Read reads from the connection and passes on what the limiter allows; once it refused
// a frame every later Read returns the same error.
func (c *limitConn) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.Conn.Read(p)
	ok, lerr := c.lim.scan(p[:n])
	if lerr != nil {
		c.err = lerr
		if c.refused != nil {
			c.refused(lerr)
		}
		if ok > 0 {
			return ok, nil
		}
		return 0, lerr
	}
	return n, err
}
