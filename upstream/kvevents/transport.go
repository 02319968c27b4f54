package kvevents

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/transport"
)

// guardedScheme is the zmq4 transport kvroute dials engines through: plain TCP, plus a
// deadline on the ZMTP handshake, short TCP keepalives and a bound on frame sizes. zmq4
// performs the handshake inside Dial without any deadline, so a peer that accepts TCP
// and then stays silent would block Dial (and the goroutine, whatever its context)
// forever; a peer that vanishes without a FIN would block Recv until the kernel's
// keepalive gives up; and zmq4 allocates whatever size a frame header announces, so one
// header claiming 2^40 bytes would kill the process (see limitConn).
const guardedScheme = "kvroute-tcp"

// keepAlive detects a vanished publisher in about Idle + Interval*Count = 20s.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 5 * time.Second, Interval: 5 * time.Second, Count: 3}

func init() {
	if err := zmq4.RegisterTransport(guardedScheme, guardedTCP{}); err != nil {
		panic(fmt.Sprintf("kvevents: register zmq transport: %v", err))
	}
}

// dialGuard travels in the socket's context to guardedTCP.Dial, which sets the handshake
// deadline and hands the connection back so the caller can lift the deadline once
// zmq4's Dial (and with it the handshake) has returned, and which bounds the messages
// read from the connection to maxMessage bytes (0: unbounded).
type dialGuard struct {
	handshake  time.Duration
	maxMessage int64
	// onTooLarge, when set, is called once per connection that refused a frame.
	onTooLarge func()

	// mu guards conns and tooLarge.
	mu       sync.Mutex
	conns    []net.Conn
	tooLarge error // the first refusal's error
}

type dialGuardKey struct{}

// withDialGuard returns ctx carrying a fresh guard; onTooLarge may be nil.
func withDialGuard(ctx context.Context, handshake time.Duration, maxMessage int64, onTooLarge func()) (context.Context, *dialGuard) {
	g := &dialGuard{handshake: handshake, maxMessage: maxMessage, onTooLarge: onTooLarge}
	return context.WithValue(ctx, dialGuardKey{}, g), g
}

// established lifts the handshake deadline of every connection dialed so far.
func (g *dialGuard) established() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range g.conns {
		_ = c.SetDeadline(time.Time{})
	}
	g.conns = nil
}

// refused records that a connection refused an oversize frame with err. The refusal is
// recorded here, where it happens, because zmq4 may surface the dead connection as
// another error (a failed subscription write, a closed connection) or not at all.
func (g *dialGuard) refused(err error) {
	g.mu.Lock()
	if g.tooLarge == nil {
		g.tooLarge = err
	}
	g.mu.Unlock()
	if g.onTooLarge != nil {
		g.onTooLarge()
	}
}

// explain returns err, replaced by the refusal's error when a connection refused a
// frame: that is why the socket failed, whatever zmq4 made of it. A nil err stays nil.
func (g *dialGuard) explain(err error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err == nil || g.tooLarge == nil || errors.Is(err, ErrMessageTooLarge) {
		return err
	}
	return fmt.Errorf("%w (zmq4: %w)", g.tooLarge, err)
}

// guardedEndpoint rewrites "tcp://h:p" to the guarded transport.
func guardedEndpoint(ep string) string {
	if rest, ok := strings.CutPrefix(ep, "tcp://"); ok {
		return guardedScheme + "://" + rest
	}
	return ep
}

type guardedTCP struct{}

// Dial connects over TCP, enables keepalives, bounds message sizes and arms the
// handshake deadline.
func (guardedTCP) Dial(ctx context.Context, dialer transport.Dialer, addr string) (net.Conn, error) {
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetKeepAliveConfig(keepAlive)
	}
	g, ok := ctx.Value(dialGuardKey{}).(*dialGuard)
	if ok && g.maxMessage > 0 {
		c = newLimitConn(c, g.maxMessage, g.refused)
	}
	if ok && g.handshake > 0 {
		_ = c.SetDeadline(time.Now().Add(g.handshake))
		g.mu.Lock()
		g.conns = append(g.conns, c)
		g.mu.Unlock()
	}
	return c, nil
}

// Listen listens on TCP (tests bind publishers with it).
func (guardedTCP) Listen(_ context.Context, addr string) (net.Listener, error) {
	return net.Listen("tcp", addr)
}

// Addr validates host:port.
func (guardedTCP) Addr(ep string) (string, error) {
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, port), nil
}
