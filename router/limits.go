package router

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/configs"
)

// This file holds the connection limits (limits.max_connections and
// max_connections_per_ip, enforced at accept with an OpenAI-shaped answer) and the
// write-progress timeout (limits.write_timeout). The header, body and idle timeouts
// and the header size limit are fasthttp's own settings (see New).

// writeChunk is the most written under one write deadline: a client must take at least
// writeChunk bytes per write_timeout to stay connected.
const writeChunk = 64 << 10

// guardListener wraps the API listener: it refuses connections over the limits and
// wraps each accepted one in a guardConn. It sits below TLS, so the limits apply before
// any handshake work.
type guardListener struct {
	net.Listener
	lim   configs.Limits
	gate  *gate
	open  *atomic.Int64 // the Server's open-connection count
	tls   *tls.Config   // to answer refused connections on a TLS listener; nil: plain
	slots chan struct{} // bounds the goroutines answering refused connections

	// mu guards perIP (connections by client address; only with a per-IP limit).
	mu    sync.Mutex
	perIP map[netip.Addr]int
}

func newGuardListener(ln net.Listener, lim configs.Limits, g *gate, open *atomic.Int64, tc *tls.Config) *guardListener {
	l := &guardListener{Listener: ln, lim: lim, gate: g, open: open, tls: tc, slots: make(chan struct{}, 64)}
	if lim.MaxConnectionsPerIP > 0 {
		l.perIP = map[netip.Addr]int{}
	}
	return l
}

// Accept returns the next connection within the limits; those over them are answered
// and closed in the background.
func (l *guardListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		var ip netip.Addr
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			ip = ta.AddrPort().Addr().Unmap()
		}
		if l.open.Add(1) > int64(l.lim.MaxConnections) {
			l.open.Add(-1)
			l.refuse(c, reasonTooManyConns, errTooManyConns)
			continue
		}
		if l.perIP != nil {
			l.mu.Lock()
			n := l.perIP[ip]
			if n >= l.lim.MaxConnectionsPerIP {
				l.mu.Unlock()
				l.open.Add(-1)
				l.refuse(c, reasonTooManyConnsIP, errTooManyConnsIP)
				continue
			}
			l.perIP[ip] = n + 1
			l.mu.Unlock()
		}
		return &guardConn{Conn: c, l: l, ip: ip}, nil
	}
}

// release forgets a closed connection.
func (l *guardListener) release(ip netip.Addr) {
	l.open.Add(-1)
	if l.perIP == nil {
		return
	}
	l.mu.Lock()
	if n := l.perIP[ip]; n <= 1 {
		delete(l.perIP, ip)
	} else {
		l.perIP[ip] = n - 1
	}
	l.mu.Unlock()
}

// refuse answers a connection over a limit with an OpenAI-shaped error and closes it,
// in a goroutine bounded in number and time; when too many are being answered the
// connection is just closed.
func (l *guardListener) refuse(c net.Conn, r reason, err error) {
	l.gate.rejected[r].Inc()
	select {
	case l.slots <- struct{}{}:
	default:
		_ = c.Close()
		return
	}
	go func() {
		defer func() { <-l.slots }()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		raw := c
		if l.tls != nil {
			c = tls.Server(c, l.tls)
		}
		if _, werr := c.Write(refusal(err)); werr == nil {
			// Half-close and read what the client sent, so closing does not reset the
			// connection (and lose the answer) while its request is still unread.
			if tc, ok := raw.(*net.TCPConn); ok && l.tls == nil {
				_ = tc.CloseWrite()
			}
			_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
		}
		_ = c.Close()
	}()
}

// refusal is the HTTP answer to a refused connection.
func refusal(err error) []byte {
	st := statusOf(err)
	body := appendErrorJSON(nil, err.Error(), st)
	return fmt.Appendf(nil, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s",
		st.code, fasthttp.StatusMessage(st.code), len(body), body)
}

// guardConn is an accepted connection: it releases its slot when closed and bounds
// writes by the write timeout, 64 KiB at a time, so a client that stops reading is cut
// while one that keeps reading a stream, however long, is not. To keep the cost off
// each of a stream's many small writes, the deadline is only pushed forward when less
// than half of the timeout is left: a stalled write fails between half the timeout and
// the timeout after its last progress.
type guardConn struct {
	net.Conn
	l        *guardListener
	ip       netip.Addr
	closed   atomic.Bool
	slow     atomic.Bool // a write timed out (counted once)
	deadline time.Time   // the write deadline last set; writes come from one goroutine at a time
	end      streamEnd   // a stream's last writes, held to go out as one (coalesce.go)
	linger   atomic.Bool // the client may still be sending a refused body: drain it at Close
	// pre is what was read from the connection before it came to fasthttp (an event
	// loop's hand-off, dataplane_linux.go): the first reads return it.
	pre []byte
}

// Read reads what was read before (pre) first, then from the connection.
func (c *guardConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// Write writes p under the write timeout; a stream's last writes are held and sent as
// one (coalesce.go).
func (c *guardConn) Write(p []byte) (int, error) {
	if c.end.state != endIdle {
		return c.writeEnd(p)
	}
	return c.write(p)
}

// write writes p, pushing the write deadline forward as it goes.
func (c *guardConn) write(p []byte) (int, error) {
	n := 0
	timeout := c.l.lim.WriteTimeout
	for len(p) > 0 {
		chunk := p[:min(len(p), writeChunk)]
		if now := time.Now(); c.deadline.Sub(now) < timeout/2 {
			if err := c.SetWriteDeadline(now.Add(timeout)); err != nil {
				return n, err
			}
		}
		m, err := c.Conn.Write(chunk)
		n += m
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && c.slow.CompareAndSwap(false, true) {
				c.l.gate.rejected[reasonSlowReader].Inc()
			}
			return n, err
		}
		p = p[m:]
	}
	return n, nil
}

// SetWriteDeadline sets the connection's write deadline and remembers it.
func (c *guardConn) SetWriteDeadline(t time.Time) error {
	c.deadline = t
	return c.Conn.SetWriteDeadline(t)
}

// SetDeadline sets both deadlines and remembers the write one.
func (c *guardConn) SetDeadline(t time.Time) error {
	c.deadline = t
	return c.Conn.SetDeadline(t)
}

// Lingering close, for a connection closed while its client may still be sending a
// body the router refused (too large, over the in-flight budget, malformed): closing a
// TCP socket with unread input resets it, and the reset can reach the client before
// it reads the answer, which it then never sees. As nginx's lingering_close does, the
// connection is half-closed (the answer and a FIN go out) and what the client still
// sends is read and dropped, for at most lingerTime and lingerBytes.
const (
	lingerTime  = 2 * time.Second
	lingerBytes = 16 << 20
)

// lingerOnClose marks the request's connection for a lingering close.
func lingerOnClose(ctx *fasthttp.RequestCtx) {
	c := ctx.Conn()
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if gc, ok := c.(*guardConn); ok {
		gc.linger.Store(true)
	}
}

func (c *guardConn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return c.Conn.Close()
	}
	defer c.l.release(c.ip)
	if tc, ok := c.Conn.(*net.TCPConn); ok && c.linger.Load() {
		if tc.CloseWrite() == nil && tc.SetReadDeadline(time.Now().Add(lingerTime)) == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(tc, lingerBytes))
		}
	}
	return c.Conn.Close()
}
