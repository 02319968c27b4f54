package upstream

import (
	"net"
	"time"
)

// headerTimeoutConn bounds the wait for the first byte of each response on a pooled
// connection, without shortening the reads after it.
//
// fasthttp sets one read deadline per request (the request's total deadline) before it
// reads the response and never moves it, so a plain HostClient cannot say "the headers
// within 60 s, then the body within 10 min". This wrapper does: after each
// SetReadDeadline (fasthttp's "a response is about to be read"), the first Read is bounded
// by firstByte as well; once a byte has arrived, the caller's deadline is restored.
// fasthttp uses a connection for one request at a time, so the fields need no lock.
type headerTimeoutConn struct {
	net.Conn
	firstByte time.Duration
	deadline  time.Time // the caller's read deadline
	waiting   bool      // no byte read since the last SetReadDeadline
}

func (c *headerTimeoutConn) SetReadDeadline(t time.Time) error {
	c.deadline, c.waiting = t, true
	return c.Conn.SetReadDeadline(t)
}

func (c *headerTimeoutConn) SetDeadline(t time.Time) error {
	c.deadline, c.waiting = t, true
	return c.Conn.SetDeadline(t)
}

func (c *headerTimeoutConn) Read(p []byte) (int, error) {
	if !c.waiting {
		return c.Conn.Read(p)
	}
	d := time.Now().Add(c.firstByte)
	if !c.deadline.IsZero() && c.deadline.Before(d) {
		d = c.deadline
	}
	if err := c.Conn.SetReadDeadline(d); err != nil {
		return 0, err
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.waiting = false
		if derr := c.Conn.SetReadDeadline(c.deadline); err == nil && derr != nil {
			err = derr
		}
	}
	return n, err
}
