//go:build linux

package router

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/upstream"
)

// dataPlane is the event-loop data plane: its loops, one per GOMAXPROCS (dataplane.go
// says what they serve).
type dataPlane struct {
	s     *Server
	res   *dpResolver
	loops []*evLoop
	next  atomic.Uint32
	// busy counts the requests the loops are serving, for Shutdown.
	busy atomic.Int64
}

func newDataPlane(s *Server) (*dataPlane, error) {
	p := &dataPlane{s: s, res: newDPResolver(s.log)}
	if s.dpResolverHook != nil {
		s.dpResolverHook(p.res)
	}
	// Each loop keeps its P (it waits in epoll_wait without giving it up: epollWait),
	// so the Go code besides the loops gets as many Ps as it had.
	n := s.cfg.DataPlaneLoops
	if n == 0 {
		n = dpProcs()
	}
	runtime.GOMAXPROCS(dpProcs() + n)
	s.log.Info("event-loop data plane", "loops", n, "gomaxprocs", dpProcs()+n)
	for range n {
		l, err := newEvLoop(p)
		if err != nil {
			p.stop()
			return nil, err
		}
		p.loops = append(p.loops, l)
	}
	var names []string
	for _, w := range s.pool.Workers() {
		if t := parseTarget(w.URL); t.ok && t.sa == nil {
			names = append(names, t.host)
		}
	}
	p.res.warm(names, dpResolveWarm)
	for _, l := range p.loops {
		go l.run()
	}
	return p, nil
}

// serve accepts connections on ln (the guard listener) and gives each to a loop, until
// ln is closed.
func (p *dataPlane) serve(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.s.draining.Load() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		gc, ok := c.(*guardConn)
		if !ok {
			_ = c.Close()
			continue
		}
		fd, err := takeFD(gc.Conn)
		if err != nil {
			// Not a socket the loop can hold (a wrapped listener's): fasthttp serves it.
			p.s.metrics.handoffs.WithLabelValues(handoffSocket).Inc()
			go func() { _ = p.s.srv.ServeConn(gc) }()
			continue
		}
		l := p.loops[p.next.Add(1)%uint32(len(p.loops))]
		l.post(func() { l.addClient(fd, gc) })
	}
}

// dpProcs is GOMAXPROCS as it was before the first data plane started.
var dpProcs = sync.OnceValue(func() int { return runtime.GOMAXPROCS(0) })

// takeFD returns a descriptor of c's socket that is the caller's, non-blocking, and
// closes c: Go's poller no longer watches the socket.
func takeFD(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%T has no descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	_ = c.Close()
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// shutdown waits until the loops serve no request, or ctx ends, closing idle client
// connections as it goes; then it stops the loops.
func (p *dataPlane) shutdown(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	var err error
	for {
		for _, l := range p.loops {
			l.post(l.closeIdle)
		}
		if p.busy.Load() == 0 {
			break
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-t.C:
			continue
		}
		break
	}
	p.stop()
	return err
}

// threads returns the loops' thread ids (0 for a loop not yet running): their CPU time is
// the data plane's own (BenchmarkDataPlaneChat reads it from /proc).
func (p *dataPlane) threads() []int {
	ids := make([]int, len(p.loops))
	for i, l := range p.loops {
		ids[i] = int(l.tid.Load())
	}
	return ids
}

func (p *dataPlane) stop() {
	for _, l := range p.loops {
		l.post(l.halt)
	}
}

// evLoop is one event loop: an epoll set on one locked thread, with the client and
// worker connections it holds.
type evLoop struct {
	p  *dataPlane
	s  *Server
	ep int
	ev int // eventfd: post's wake-up
	// mu guards posted, the functions other goroutines give the loop to run.
	mu      sync.Mutex
	posted  []func()
	running []func()

	conns   map[int]*lconn
	buf     []byte // the read buffer
	out     []byte // scratch for what is written
	rest    []byte // scratch: the body bytes read with a response head
	rd      bytes.Reader
	br      *bufio.Reader
	bw      *bufio.Writer // writes a request to a worker into its exchange's sent
	req     fasthttp.Request
	idle    map[*upstream.Worker][]*lconn
	targets map[*upstream.Worker]dpTarget
	resGen  uint64             // the resolver's gen when workersOK last looked at the fleet
	fleet   []*upstream.Worker // the pool's list dpWorkersOK last looked at
	fleetOK bool
	fleetAt time.Time // when workersOK last looked at the fleet
	now     time.Time
	scanned time.Time
	gen     int32 // the last registration's number
	halted  bool
	// broken holds the clients a write to failed, for reap: a failed write never ends
	// the request it was part of there and then, as the code that wrote goes on with it.
	broken []*lconn
	tid    atomic.Int32 // the loop's thread, once it runs
}

func newEvLoop(p *dataPlane) (*evLoop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("event loop: %w", err)
	}
	ev, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		_ = unix.Close(ep)
		return nil, fmt.Errorf("event loop: %w", err)
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, ev, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(ev)}); err != nil {
		_ = unix.Close(ep)
		_ = unix.Close(ev)
		return nil, fmt.Errorf("event loop: %w", err)
	}
	hb := p.s.cfg.Limits.MaxHeaderBytes
	l := &evLoop{p: p, s: p.s, ep: ep, ev: ev, conns: map[int]*lconn{}, buf: make([]byte, 64<<10),
		idle: map[*upstream.Worker][]*lconn{}, targets: map[*upstream.Worker]dpTarget{}}
	l.br = bufio.NewReaderSize(&l.rd, max(hb, dpMaxResponseHead)+16)
	l.bw = bufio.NewWriterSize(nil, 4<<10)
	l.req.Header.DisableNormalizing()
	return l, nil
}

// post has the loop run f; safe from any goroutine.
func (l *evLoop) post(f func()) {
	l.mu.Lock()
	l.posted = append(l.posted, f)
	n := len(l.posted)
	l.mu.Unlock()
	if n == 1 {
		var one = [8]byte{1}
		_, _ = unix.Write(l.ev, one[:])
	}
}

func (l *evLoop) runPosted() {
	var b [8]byte
	_, _ = unix.Read(l.ev, b[:])
	l.mu.Lock()
	l.running, l.posted = l.posted, l.running[:0]
	l.mu.Unlock()
	for i, f := range l.running {
		f()
		l.running[i] = nil
	}
}

// scanEvery is how often a loop checks its deadlines.
const scanEvery = 100 * time.Millisecond

func (l *evLoop) run() {
	runtime.LockOSThread()
	l.tid.Store(int32(unix.Gettid()))
	events := make([]unix.EpollEvent, 256)
	for !l.halted {
		n, err := epollWait(l.ep, events, int(scanEvery/time.Millisecond))
		if err != nil && !errors.Is(err, unix.EINTR) {
			l.s.log.Error("event loop stopped", "err", err)
			return
		}
		l.now = time.Now()
		for _, ev := range events[:max(n, 0)] {
			fd := int(ev.Fd)
			if fd == l.ev {
				l.runPosted()
				continue
			}
			c := l.conns[fd]
			if c == nil || c.gen != ev.Pad {
				continue // closed, and its descriptor maybe reused, since epoll_wait
			}
			if ev.Events&unix.EPOLLOUT != 0 {
				l.flush(c)
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 && l.conns[fd] == c {
				if c.up {
					l.upstreamReadable(c)
				} else {
					l.clientReadable(c, ev.Events)
				}
			}
		}
		if l.now.Sub(l.scanned) >= scanEvery {
			l.scanned = l.now
			l.scan()
		}
		l.reap()
	}
	for _, c := range l.conns {
		l.closeConn(c)
	}
	_ = unix.Close(l.ep)
	_ = unix.Close(l.ev)
}

// halt stops the loop, closing what it holds.
func (l *evLoop) halt() { l.halted = true }

// appendWriter is an io.Writer appending to a byte slice.
type appendWriter []byte

func (w *appendWriter) Write(p []byte) (int, error) {
	*w = append(*w, p...)
	return len(p), nil
}

// lconn is a connection a loop holds: a client's, or a worker's (up).
type lconn struct {
	fd      int
	gen     int32 // its registration's number, in its epoll events (a closed descriptor's number is reused)
	up      bool
	in, out []byte
	events  uint32
	closed  bool
	stall   time.Time // when out last became non-empty or made progress
	// A client's connection:
	gc       *guardConn
	ctx      *fasthttp.RequestCtx
	x        *exchange // the request being served
	headLen  int       // the head of the request in in, once found
	bodyLen  int
	reserved int64     // the body's budget
	since    time.Time // the request's first byte; zero between requests
	headAt   time.Time // its head's end
	idleAt   time.Time // the end of the last answer
	closing  bool      // close once out is written
	paused   bool      // reading stopped: too much read ahead of the request served
	wfailed  bool      // a write to the client failed: nothing more is written, reap ends it
	spare    *exchange // the last request's, reused with its buffers
	gone     atomic.Bool
	// A worker's connection:
	w        *upstream.Worker
	connects bool       // connecting: the request waits in out
	ip       netip.Addr // the address of a worker reached by host name
	reused   bool       // it served an answer before this request
	idleFrom time.Time  // in the idle list since
}

// lconnWaiter is a queued request's waiterGone.
type lconnWaiter struct{ c *lconn }

func (w lconnWaiter) gone() bool { return w.c.gone.Load() }

// exchange is one request a loop serves, from its parse to its answer's end.
type exchange struct {
	c       *lconn
	u       *lconn // the worker's connection of the current attempt
	call    call
	r       request
	class   int
	attempt int
	lastErr error
	t0      time.Time
	o       outcome
	// away is set while a goroutine works for the exchange (hashing, the queue): the
	// loop leaves it alone until that goroutine posts its result.
	away     bool
	sent     []byte // the request as sent to the worker, for a resend on a fresh connection
	resent   bool
	got      bool // bytes came from the worker in this attempt
	deadline time.Time
	resp     fasthttp.ResponseHeader
	headDone bool
	body     respBody
	payload  []byte
	sp       *streamPipe // the stream, once committed
}

// reset makes x a new request of c, keeping its buffers.
func (x *exchange) reset(c *lconn) {
	sent, payload := x.sent[:0], x.payload[:0]
	x.resp.Reset()
	x.resp.DisableNormalizing()
	x.call, x.r, x.o = call{}, request{}, outcome{}
	x.c, x.u, x.class, x.attempt, x.lastErr, x.t0 = c, nil, 0, 0, nil, time.Time{}
	x.away, x.resent, x.got, x.deadline, x.headDone = false, false, false, time.Time{}, false
	x.body, x.sp = respBody{}, nil
	x.sent, x.payload = sent, payload
}

func (l *evLoop) addClient(fd int, gc *guardConn) {
	if l.halted || l.s.draining.Load() {
		_ = unix.Close(fd)
		gc.l.release(gc.ip)
		return
	}
	c := &lconn{fd: fd, gc: gc, idleAt: time.Now(), ctx: new(fasthttp.RequestCtx)}
	c.ctx.Init2(&dpConn{local: gc.LocalAddr(), remote: gc.RemoteAddr()}, fasthttpLogger{l.s.log}, false)
	c.ctx.Request.Header.DisableNormalizing()
	c.ctx.Response.Header.DisableNormalizing()
	if !l.register(c, unix.EPOLLIN|unix.EPOLLRDHUP) {
		_ = unix.Close(fd)
		gc.l.release(gc.ip)
		return
	}
	l.clientReadable(c, unix.EPOLLIN)
}

func (l *evLoop) register(c *lconn, events uint32) bool {
	l.gen++
	c.events, c.gen = events, l.gen
	if err := unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, c.fd, &unix.EpollEvent{Events: events, Fd: int32(c.fd), Pad: c.gen}); err != nil {
		return false
	}
	l.conns[c.fd] = c
	return true
}

func (l *evLoop) setEvents(c *lconn, events uint32) {
	if c.closed || c.events == events {
		return
	}
	c.events = events
	_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_MOD, c.fd, &unix.EpollEvent{Events: events, Fd: int32(c.fd), Pad: c.gen})
}

// clientReadable reads what the client sent and serves its next request.
func (l *evLoop) clientReadable(c *lconn, events uint32) {
	limit := l.s.cfg.Limits.MaxHeaderBytes + l.s.cfg.MaxBodyBytes
	for !c.paused {
		if len(c.in) >= limit && c.x != nil {
			c.paused = true // a pipelined request waits for this one's answer
			l.setEvents(c, c.events&^unix.EPOLLIN)
			break
		}
		n, err := rawRead(c.fd, l.buf)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			// A client that closed its side is gone, as nginx takes it: a request it
			// sent is not served, one being served is aborted.
			l.clientGone(c)
			return
		}
		c.in = append(c.in, l.buf[:n]...)
		if n < len(l.buf) {
			break
		}
	}
	if events&unix.EPOLLRDHUP != 0 && c.x != nil {
		// The client closed its side while its request is served: it is gone, as
		// clientGone sees it on the fasthttp path.
		l.clientGone(c)
		return
	}
	if c.x == nil {
		l.serve(c)
	}
}

// serve starts the client's next request if it is complete, and hands the connection
// to fasthttp if it is not the loop's.
func (l *evLoop) serve(c *lconn) {
	if c.closed || c.x != nil {
		return
	}
	if len(c.in) == 0 {
		if l.s.draining.Load() {
			l.closeConn(c)
		}
		return
	}
	if c.since.IsZero() {
		c.since = l.now
	}
	if c.headLen == 0 {
		maxHead := l.s.cfg.Limits.MaxHeaderBytes
		end := bytes.Index(c.in[:min(len(c.in), maxHead)], []byte("\r\n\r\n"))
		if end < 0 {
			if len(c.in) >= maxHead {
				l.handOff(c, handoffRequest)
			}
			return
		}
		c.ctx.Request.Reset()
		h := &c.ctx.Request.Header
		h.DisableNormalizing()
		l.rd.Reset(c.in[:end+4])
		l.br.Reset(&l.rd)
		if h.Read(l.br) != nil || !l.s.dpFastPath(h) {
			l.handOff(c, handoffRequest)
			return
		}
		if !l.workersOK() {
			l.handOff(c, handoffWorkers)
			return
		}
		n := h.ContentLength()
		if !l.s.budget.reserve(int64(n)) {
			l.handOff(c, handoffBudget) // fasthttp answers: the in-flight budget is spent
			return
		}
		c.headLen, c.bodyLen, c.reserved, c.headAt = end+4, n, int64(n), l.now
	}
	if len(c.in) < c.headLen+c.bodyLen {
		return
	}
	l.begin(c)
}

// workersOK reports whether every worker of the pool can be served from a loop: none
// has a prefill or decode role and each is reached over plain HTTP, at an IP address or
// at a host name the resolver has an answer for (dataplane_resolve.go).
func (l *evLoop) workersOK() bool {
	ws := l.s.pool.Workers()
	gen := l.p.res.gen.Load()
	if gen == l.resGen && len(ws) == len(l.fleet) && (len(ws) == 0 || unsafe.SliceData(ws) == unsafe.SliceData(l.fleet)) &&
		(l.fleetOK || l.now.Sub(l.fleetAt) < l.p.res.retry) {
		return l.fleetOK
	}
	// A fleet the loop could not serve is looked at again every retry: a host name's
	// failed lookup is tried again by addrOf then.
	l.fleet, l.fleetOK, l.resGen, l.fleetAt = ws, true, gen, l.now
	for _, w := range ws {
		if w.Config.Role == configs.RolePrefill || w.Config.Role == configs.RoleDecode {
			l.fleetOK = false
		} else if sa, _ := l.addrOf(w); sa == nil {
			l.fleetOK = false
		}
	}
	for w, idle := range l.idle { // workers gone from the pool
		if l.s.pool.Worker(w.ID) != w {
			for _, u := range idle {
				l.closeConn(u)
			}
			delete(l.idle, w)
		}
	}
	for w := range l.targets {
		if l.s.pool.Worker(w.ID) != w {
			delete(l.targets, w)
		}
	}
	names := map[string]bool{}
	for _, w := range ws {
		if t := l.target(w); t.host != "" {
			names[t.host] = true
		}
	}
	l.p.res.retain(names)
	return l.fleetOK
}

// dpTarget is where a worker is reached: an IP address (sa), or a host name (host) and
// port the resolver answers for; ok is false when the loop cannot reach the worker
// (TLS, or a URL it does not read).
type dpTarget struct {
	sa   unix.Sockaddr
	host string
	port int
	ok   bool
}

// target returns w's dpTarget, read from its URL once.
func (l *evLoop) target(w *upstream.Worker) dpTarget {
	if t, ok := l.targets[w]; ok {
		return t
	}
	t := parseTarget(w.URL)
	l.targets[w] = t
	return t
}

// parseTarget reads a worker URL's host and port: http:// only, port 80 by default.
func parseTarget(url string) dpTarget {
	hp, ok := strings.CutPrefix(url, "http://")
	if !ok {
		return dpTarget{}
	}
	if i := strings.IndexByte(hp, '/'); i >= 0 {
		hp = hp[:i]
	}
	host, port, err := net.SplitHostPort(hp)
	if err != nil { // no port
		host, port = strings.Trim(hp, "[]"), "80"
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 || host == "" {
		return dpTarget{}
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return dpTarget{sa: sockaddr(a, int(p)), ok: true}
	}
	return dpTarget{host: host, port: int(p), ok: true}
}

func sockaddr(a netip.Addr, port int) unix.Sockaddr {
	if a = a.Unmap(); a.Is4() {
		return &unix.SockaddrInet4{Port: port, Addr: a.As4()}
	}
	return &unix.SockaddrInet6{Port: port, Addr: a.As16()}
}

// addrOf returns the socket address to connect to for w, nil when the loop cannot reach
// w (TLS, or a host name with no answer yet); for a host name, also the address chosen.
func (l *evLoop) addrOf(w *upstream.Worker) (unix.Sockaddr, netip.Addr) {
	t := l.target(w)
	if !t.ok || t.sa != nil {
		return t.sa, netip.Addr{}
	}
	a, ok := l.p.res.addr(t.host, l.now)
	if !ok {
		return nil, netip.Addr{}
	}
	return sockaddr(a, t.port), a
}

// handOff gives the connection, with what was read of it, to the fasthttp server.
func (l *evLoop) handOff(c *lconn, reason string) {
	l.s.metrics.handoffs.WithLabelValues(reason).Inc()
	if c.reserved > 0 {
		l.s.budget.release(c.reserved)
		c.reserved = 0
	}
	delete(l.conns, c.fd)
	c.closed = true
	_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, c.fd, nil)
	f := os.NewFile(uintptr(c.fd), "")
	nc, err := net.FileConn(f) // its own descriptor, in Go's poller
	_ = f.Close()
	if err != nil {
		c.gc.l.release(c.gc.ip)
		return
	}
	gc := &guardConn{Conn: nc, l: c.gc.l, ip: c.gc.ip, pre: c.in}
	c.in = nil
	go func() { _ = l.s.srv.ServeConn(gc) }()
}

// begin serves the request at the start of c.in: the checks and the parse, then the
// routing.
func (l *evLoop) begin(c *lconn) {
	s := l.s
	ctx := c.ctx
	ctx.Response.Reset()
	ctx.Response.Header.DisableNormalizing()
	ctx.Response.Header.SetNoDefaultContentType(true)
	ctx.Request.SetBodyRaw(c.in[c.headLen : c.headLen+c.bodyLen])
	x := c.spare
	if x == nil {
		x = new(exchange)
	}
	c.spare = nil
	x.reset(c)
	c.x = x
	l.p.busy.Add(1)
	if !s.admit(ctx) {
		l.respond(x)
		return
	}
	if s.draining.Load() {
		s.fail(ctx, "", errShuttingDown)
		l.respond(x)
		return
	}
	ep, _ := inferenceEndpoint(string(ctx.Path())) // dpFastPath admitted only these
	x.call = call{ep: ep, path: ep.path(), r: &x.r, start: l.now}
	if err := parseRequest(ctx.PostBody(), ep, &x.r); err != nil {
		s.fail(ctx, "", err)
		l.respond(x)
		return
	}
	class, ok := s.prepare(ctx, &x.call, false)
	if !ok {
		l.respond(x)
		return
	}
	x.class = class
	if !s.hashMayBlock(&x.r) {
		s.hashCall(&x.call)
		l.route(x)
		return
	}
	x.away = true
	go func() {
		s.hashCall(&x.call)
		l.post(func() {
			x.away = false
			if l.abandoned(x) {
				return
			}
			l.route(x)
		})
	}()
}

// abandoned reports whether x's client went away while a goroutine worked for it, and
// then ends x.
func (l *evLoop) abandoned(x *exchange) bool {
	if !x.c.closed {
		return false
	}
	l.s.count("", x.r.Model, statusClientClosed, x.call.start)
	l.end(x)
	return true
}

// route chooses the worker of x's next attempt, waiting in the queue (in a goroutine)
// when every worker is full.
func (l *evLoop) route(x *exchange) {
	s := l.s
	if x.attempt >= s.cfg.MaxAttempts {
		s.answerFailure(x.c.ctx, &x.call, x.lastErr)
		l.respond(x)
		return
	}
	x.t0 = time.Now()
	w, overlap, load, wait := s.routeNow(x.call.st, x.call.reqID, x.attempt)
	if !wait {
		l.routed(x, w, overlap, load, nil)
		return
	}
	x.away = true
	go func() {
		w, overlap, load, err := s.await(lconnWaiter{x.c}, x.call.st, x.call.reqID, x.attempt, x.class)
		l.post(func() {
			x.away = false
			if x.c.closed && load != nil {
				load.End()
			}
			if l.abandoned(x) {
				return
			}
			l.routed(x, w, overlap, load, err)
		})
	}()
}

// routed starts the attempt on w, the route's choice.
func (l *evLoop) routed(x *exchange, w *upstream.Worker, overlap int, load *upstream.Load, err error) {
	s, ctx := l.s, x.c.ctx
	if err != nil {
		s.failRoute(ctx, x.r.Model, x.call.start, err)
		l.respond(x)
		return
	}
	if w == nil {
		s.answerFailure(ctx, &x.call, x.lastErr)
		l.respond(x)
		return
	}
	if !s.beginAttempt(ctx, &x.call, w, load, x.attempt, x.t0, x.attempt > 0 && x.c.gone.Load()) {
		l.respond(x)
		return
	}
	x.o = outcome{w: w, overlap: overlap, load: load}
	if !x.r.Stream {
		load.EstimateFirstToken() // its first token will not be seen
	}
	req := &l.req
	req.Reset()
	s.outbound(ctx, &x.call, w, req)
	x.sent = x.sent[:0]
	l.bw.Reset((*appendWriter)(&x.sent))
	err = req.Write(l.bw)
	if err == nil {
		err = l.bw.Flush()
	}
	req.Reset()
	if err != nil {
		l.failed(x, err)
		return
	}
	x.resent = false
	l.send(x)
}

// send writes x's request to a connection to its worker: an idle one, or a new one.
func (l *evLoop) send(x *exchange) {
	w := x.o.w
	x.got, x.headDone, x.payload = false, false, x.payload[:0]
	x.resp.Reset()
	x.resp.DisableNormalizing()
	var u *lconn
	for idle := l.idle[w]; len(idle) > 0 && u == nil; idle = l.idle[w] {
		u = idle[len(idle)-1]
		l.idle[w] = idle[:len(idle)-1]
		if u.closed {
			u = nil
		}
	}
	if u == nil {
		var err error
		if u, err = l.dial(w); err != nil {
			l.failed(x, &upstream.DialError{Addr: workerEndpoint(w), Err: err})
			return
		}
	}
	u.x, x.u = x, u
	x.deadline = x.call.start.Add(l.s.cfg.Timeouts.Total)
	if u.connects {
		x.deadline = minTime(x.deadline, l.now.Add(l.s.cfg.Timeouts.Connect))
	} else if x.r.Stream {
		x.deadline = minTime(x.deadline, l.now.Add(l.s.cfg.Timeouts.FirstByte))
	}
	l.write(u, x.sent)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// dial opens a non-blocking connection to w; the request waits until it is up.
func (l *evLoop) dial(w *upstream.Worker) (*lconn, error) {
	sa, ip := l.addrOf(w)
	if sa == nil {
		return nil, errors.New("not reachable from the event loop")
	}
	family := unix.AF_INET
	if _, ok := sa.(*unix.SockaddrInet6); ok {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	err = unix.Connect(fd, sa)
	u := &lconn{fd: fd, up: true, w: w, ip: ip}
	switch {
	case err == nil:
	case errors.Is(err, unix.EINPROGRESS):
		u.connects = true
	default:
		_ = unix.Close(fd)
		l.dialFailed(u)
		return nil, err
	}
	ev := uint32(unix.EPOLLIN | unix.EPOLLRDHUP)
	if u.connects {
		ev |= unix.EPOLLOUT
	}
	if !l.register(u, ev) {
		_ = unix.Close(fd)
		return nil, errors.New("epoll registration failed")
	}
	return u, nil
}

// dialFailed tells the resolver that u, a connection to a worker reached by host name,
// could not be made: the name's next address is tried next.
func (l *evLoop) dialFailed(u *lconn) {
	if u.ip.IsValid() {
		l.p.res.failed(l.target(u.w).host, u.ip)
	}
}

// upstreamReadable reads what the worker sent and moves its exchange on.
func (l *evLoop) upstreamReadable(u *lconn) {
	for !u.closed {
		n, err := rawRead(u.fd, l.buf)
		if errors.Is(err, unix.EAGAIN) {
			return
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		x := u.x
		if x == nil { // idle: the worker closed it, or sent what it must not
			l.closeConn(u)
			return
		}
		if err != nil || n == 0 {
			if err == nil {
				err = errUpstreamEOF
			}
			l.upstreamFailed(x, err)
			return
		}
		x.got = true
		l.fromWorker(x, l.buf[:n])
		if n < len(l.buf) || u.x != x {
			return
		}
	}
}

var errUpstreamEOF = errors.New("the worker closed the connection")

// fromWorker reads b, the worker's next bytes of x's answer.
func (l *evLoop) fromWorker(x *exchange, b []byte) {
	u := x.u
	if !x.headDone {
		u.in = append(u.in, b...)
		for !x.headDone {
			end := bytes.Index(u.in, []byte("\r\n\r\n"))
			if end < 0 {
				if len(u.in) > dpMaxResponseHead {
					l.upstreamFailed(x, errors.New("response head too large"))
				}
				return
			}
			l.rd.Reset(u.in[:end+4])
			l.br.Reset(&l.rd)
			if err := x.resp.Read(l.br); err != nil {
				l.upstreamFailed(x, fmt.Errorf("malformed response head: %w", err))
				return
			}
			b = u.in[end+4:]
			if code := x.resp.StatusCode(); code >= 100 && code < 200 {
				u.in = append(u.in[:0], b...) // an interim answer (100 Continue): the real one follows
				x.resp.Reset()
				x.resp.DisableNormalizing()
				continue
			}
			x.headDone = true
			x.body.init(&x.resp)
			l.headed(x)
			if x.u != u {
				return
			}
		}
		l.rest = append(l.rest[:0], b...)
		u.in = u.in[:0]
		b = l.rest
	}
	l.body(x, b)
}

// headed acts on the head of x's answer: a 5xx or 429 is read for a retry, anything
// else committed to the client; a stream's head goes out at once.
func (l *evLoop) headed(x *exchange) {
	s, ctx := l.s, x.c.ctx
	x.o.code = x.resp.StatusCode()
	if x.o.code >= 500 || x.o.code == fasthttp.StatusTooManyRequests {
		return // read below, then retried
	}
	s.commit(ctx, &x.call, x.o.w, x.o.overlap, &x.resp)
	if !x.r.Stream {
		return
	}
	x.sp = s.newStream(&x.call, &x.o, &x.resp)
	x.o.stream = true
	s.settle(ctx, &x.call, &x.o) // the stream's end is settled by streamEnd
	h := &ctx.Response.Header
	h.SetContentLength(-1)
	if ctx.Request.Header.ConnectionClose() || s.draining.Load() {
		h.SetConnectionClose()
	}
	l.out = h.AppendBytes(l.out[:0])
	l.write(x.c, l.out)
	x.deadline = minTime(x.call.start.Add(s.cfg.Timeouts.Total), l.now.Add(s.cfg.Timeouts.FirstByte))
}

// body reads b, bytes of x's answer after its head.
func (l *evLoop) body(x *exchange, b []byte) {
	if len(b) == 0 && !x.body.done {
		return
	}
	var err error
	var used int
	if x.sp == nil {
		x.payload, used, err = x.body.feed(x.payload, b)
		if err == nil && len(x.payload) > dpMaxErrorBody && (x.o.code >= 500 || x.o.code == fasthttp.StatusTooManyRequests) {
			x.payload = x.payload[:min(len(x.payload), dpMaxErrorBody)]
		}
	} else {
		var p []byte
		p, used, err = x.body.feed(x.payload[:0], b)
		x.payload = p
		l.out = l.out[:0]
		if len(p) > 0 {
			x.sp.took(p)
			l.out = appendChunk(l.out, p)
			x.deadline = minTime(x.call.start.Add(l.s.cfg.Timeouts.Total), l.now.Add(l.s.cfg.Timeouts.Idle))
		}
		if !x.body.done || err != nil {
			l.write(x.c, l.out) // the stream's end goes out with its last chunk (streamEnd)
			l.out = l.out[:0]
		}
	}
	if err == nil && used < len(b) {
		err = errors.New("bytes past the end of the answer")
	}
	if err != nil {
		l.upstreamFailed(x, err)
		return
	}
	if x.body.done {
		l.answered(x)
	}
}

// answered ends an attempt whose answer came whole.
func (l *evLoop) answered(x *exchange) {
	s, ctx := l.s, x.c.ctx
	u := x.u
	x.u, u.x = nil, nil
	l.keep(u, !x.resp.ConnectionClose() && x.body.mode != bodyClose)
	switch {
	case x.sp != nil:
		l.streamEnd(x, nil, l.out) // body left the last piece in l.out
	case x.o.code >= 500 || x.o.code == fasthttp.StatusTooManyRequests:
		x.o.err = &statusError{worker: x.o.w.ID, code: x.o.code, contentType: string(x.resp.ContentType()),
			body: append([]byte(nil), x.payload...)}
		l.retry(x)
	default:
		if x.o.code == fasthttp.StatusOK {
			x.o.usage, x.o.usageOK = parseUsage(x.payload)
		}
		ctx.Response.SetBodyRaw(x.payload)
		s.settle(ctx, &x.call, &x.o)
		l.respond(x)
	}
}

// upstreamFailed ends x's attempt on a worker connection that failed: before the
// answer is committed the request is tried again, a committed stream is cut.
func (l *evLoop) upstreamFailed(x *exchange, err error) {
	if x.headDone && x.body.mode == bodyClose && errors.Is(err, errUpstreamEOF) {
		x.body.done = true // the answer ends with the connection
		l.out = l.out[:0]  // nothing of the stream is pending
		l.answered(x)
		return
	}
	u := x.u
	if u != nil {
		x.u, u.x = nil, nil
		l.closeConn(u)
	}
	if x.sp != nil {
		l.streamEnd(x, err, l.out[:0])
		return
	}
	if u != nil && u.reused && !x.got && !x.resent {
		// A keep-alive connection the worker closed while idle: the worker did not see
		// the request, which is sent once more on a fresh connection (as the fasthttp
		// client's RetryIfErr does).
		x.resent = true
		l.send(x)
		return
	}
	l.failed(x, err)
}

// failed ends x's attempt with err, nothing committed, and tries again.
func (l *evLoop) failed(x *exchange, err error) {
	x.o.err = fmt.Errorf("worker %s: %w", x.o.w.ID, err)
	l.retry(x)
}

func (l *evLoop) retry(x *exchange) {
	l.s.settle(x.c.ctx, &x.call, &x.o)
	x.lastErr = x.o.err
	l.s.log.Debug("attempt failed", "request_id", x.call.reqID, "worker", x.o.w.ID, "err", x.o.err)
	x.attempt++
	x.o = outcome{}
	x.resp.Reset()
	l.route(x)
}

// streamEnd ends x's committed stream: complete when err is nil and the stream says so,
// else cut with the error event; then the last chunk. last, the stream's last piece not
// written yet (nil: none), goes out in the same write.
func (l *evLoop) streamEnd(x *exchange, err error, last []byte) {
	sp := x.sp
	if err == nil && !sp.complete() {
		err = errStreamCut
	}
	out := last
	if err != nil {
		out = appendChunk(out, sp.cut(err))
	}
	out = append(out, lastChunk...)
	l.out = out
	l.write(x.c, out)
	sp.ended = true
	l.s.settleStreamEnd(sp)
	if x.c.ctx.Response.ConnectionClose() {
		x.c.closing = true
	}
	l.end(x)
}

// keep puts a worker connection whose answer ended back in the idle list, or closes it.
func (l *evLoop) keep(u *lconn, reusable bool) {
	if u.closed {
		return
	}
	idle := l.idle[u.w]
	if !reusable || len(u.in) > 0 || len(idle) >= dpMaxIdleUpstream || l.s.pool.Worker(u.w.ID) != u.w {
		l.closeConn(u)
		return
	}
	u.reused, u.idleFrom = true, l.now
	l.idle[u.w] = append(idle, u)
}

// respond writes the answer in x's RequestCtx to the client and ends x.
func (l *evLoop) respond(x *exchange) {
	c := x.c
	if !c.closed {
		l.out = l.s.dpAppendResponse(l.out[:0], c.ctx)
		l.write(c, l.out)
		if c.ctx.Response.ConnectionClose() {
			c.closing = true
		}
	}
	l.end(x)
}

// end releases what x held and moves the client's connection to its next request.
func (l *evLoop) end(x *exchange) {
	c := x.c
	l.p.busy.Add(-1)
	if x.call.st != nil {
		putRouteState(x.call.st)
		x.call.st = nil
	}
	if c.reserved > 0 {
		l.s.budget.release(c.reserved)
		c.reserved = 0
	}
	c.ctx.Request.ResetBody()
	c.x = nil
	if c.closed {
		return
	}
	c.spare = x // no goroutine holds x any more: the next request reuses it
	if rest := c.in[c.headLen+c.bodyLen:]; len(rest) > 0 {
		c.in = rest
	} else {
		c.in = c.in[:0] // the buffer is reused from its start
	}
	c.headLen, c.bodyLen, c.since, c.idleAt = 0, 0, time.Time{}, l.now
	if c.closing {
		if len(c.out) == 0 {
			l.closeConn(c)
		}
		return
	}
	if c.paused {
		c.paused = false
		l.setEvents(c, c.events|unix.EPOLLIN)
	}
	l.serve(c)
}

// clientGone ends the client's connection, and its request if one is served: the
// worker's connection is closed (the engine aborts the request) and the request counted
// as closed by the client (499).
func (l *evLoop) clientGone(c *lconn) {
	c.gone.Store(true)
	x := c.x
	l.closeConn(c)
	if x == nil || x.away {
		return // a goroutine working for x ends it (abandoned)
	}
	if u := x.u; u != nil {
		x.u, u.x = nil, nil
		l.closeConn(u)
	}
	switch {
	case x.sp != nil:
		x.sp.status = statusClientClosed
		l.s.settleStreamEnd(x.sp)
	case x.o.load != nil:
		x.o.load.End()
		l.s.count(x.o.w.ID, x.r.Model, statusClientClosed, x.call.start)
	default:
		l.s.count("", x.r.Model, statusClientClosed, x.call.start)
	}
	l.end(x)
}

// write writes b to c now, keeping what the socket does not take for EPOLLOUT.
func (l *evLoop) write(c *lconn, b []byte) {
	if c.closed || c.wfailed || len(b) == 0 {
		return
	}
	if len(c.out) == 0 && !c.connects {
		n, err := rawWrite(c.fd, b)
		if dpWriteFault != nil && !c.up {
			if ferr := dpWriteFault(); ferr != nil {
				n, err = 0, ferr
			}
		}
		if err != nil && !errors.Is(err, unix.EAGAIN) {
			l.writeFailed(c, err)
			return
		}
		b = b[max(n, 0):]
		if len(b) == 0 {
			return
		}
	}
	if len(c.out) == 0 {
		c.stall = l.now
	}
	c.out = append(c.out, b...)
	l.setEvents(c, c.events|unix.EPOLLOUT)
	if !c.up && len(c.out) > 1<<20 && c.x != nil && c.x.u != nil {
		// The client reads slower than the worker answers: stop reading the worker
		// until the client has taken most of it.
		l.setEvents(c.x.u, c.x.u.events&^unix.EPOLLIN)
	}
}

// flush writes what c has kept.
func (l *evLoop) flush(c *lconn) {
	if c.connects {
		c.connects = false
		if errno, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || errno != 0 {
			if err == nil {
				err = unix.Errno(errno)
			}
			l.dialFailed(c)
			if x := c.x; x != nil {
				x.u, c.x = nil, nil
				l.closeConn(c)
				l.failed(x, &upstream.DialError{Addr: workerEndpoint(x.o.w), Err: err})
				return
			}
			l.closeConn(c)
			return
		}
		if x := c.x; x != nil {
			x.deadline = x.call.start.Add(l.s.cfg.Timeouts.Total)
			if x.r.Stream {
				x.deadline = minTime(x.deadline, l.now.Add(l.s.cfg.Timeouts.FirstByte))
			}
		}
	}
	for len(c.out) > 0 {
		n, err := rawWrite(c.fd, c.out)
		if errors.Is(err, unix.EAGAIN) {
			return
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			l.writeFailed(c, err)
			return
		}
		c.out = c.out[n:]
		c.stall = l.now
	}
	c.out = c.out[:0]
	l.setEvents(c, c.events&^unix.EPOLLOUT)
	if !c.up && c.x != nil && c.x.u != nil {
		l.setEvents(c.x.u, c.x.u.events|unix.EPOLLIN)
	}
	if !c.up && c.closing && c.x == nil {
		l.closeConn(c)
	}
}

func (l *evLoop) writeFailed(c *lconn, err error) {
	if !c.up {
		// The client is gone, but the request being answered is ended by the code
		// that wrote (respond, streamEnd, ...), which goes on after the write: reap
		// closes the connection, and ends the request if it is still served, once
		// the loop is done with this round of events.
		if !c.wfailed {
			c.wfailed = true
			l.broken = append(l.broken, c)
		}
		return
	}
	if x := c.x; x != nil {
		l.upstreamFailed(x, err)
		return
	}
	l.closeConn(c)
}

// reap ends what the clients a write failed to still have, as clientGone.
func (l *evLoop) reap() {
	for len(l.broken) > 0 {
		c := l.broken[len(l.broken)-1]
		l.broken[len(l.broken)-1] = nil
		l.broken = l.broken[:len(l.broken)-1]
		if !c.closed {
			l.clientGone(c)
		}
	}
}

// closeConn closes c's socket and forgets it.
func (l *evLoop) closeConn(c *lconn) {
	if c.closed {
		return
	}
	c.closed = true
	if l.conns[c.fd] == c {
		delete(l.conns, c.fd)
	}
	_ = unix.Close(c.fd) // also leaves the epoll set
	if !c.up {
		c.gone.Store(true)
		c.gc.l.release(c.gc.ip)
		if c.x == nil && c.reserved > 0 { // a body that never came (else end releases it)
			l.s.budget.release(c.reserved)
			c.reserved = 0
		}
	}
}

// closeIdle closes the client connections between requests (a shutdown's).
func (l *evLoop) closeIdle() {
	for _, c := range l.conns {
		if !c.up && c.x == nil && len(c.in) == 0 {
			l.closeConn(c)
		}
	}
}

// scan enforces the timeouts: the client's header, body, idle and write timeouts, and
// each attempt's connect, first-byte, idle-chunk and total ones.
func (l *evLoop) scan() {
	lim := l.s.cfg.Limits
	for _, c := range l.conns {
		switch {
		case c.closed:
		case len(c.out) > 0 && l.now.Sub(c.stall) > lim.WriteTimeout:
			if !c.up {
				l.s.gate.rejected[reasonSlowReader].Inc()
				l.clientGone(c)
			} else if c.x != nil {
				l.upstreamFailed(c.x, fasthttp.ErrTimeout)
			}
		case c.up:
			if x := c.x; x != nil && !x.deadline.IsZero() && l.now.After(x.deadline) {
				l.timedOut(x)
			} else if x == nil && l.now.Sub(c.idleFrom) > dpUpstreamIdle {
				l.closeConn(c)
			}
		case c.x != nil:
		case !c.since.IsZero() && c.headLen == 0 && l.now.Sub(c.since) > lim.HeaderTimeout,
			c.headLen > 0 && l.now.Sub(c.headAt) > lim.BodyTimeout:
			l.answerSlow(c)
		case c.since.IsZero() && len(c.in) == 0 && l.now.Sub(c.idleAt) > lim.IdleTimeout:
			l.closeConn(c)
		}
	}
	for w, idle := range l.idle { // drop the closed ones
		n := 0
		for _, u := range idle {
			if !u.closed {
				idle[n] = u
				n++
			}
		}
		clear(idle[n:])
		l.idle[w] = idle[:n]
	}
}

// answerSlow answers a client too slow to send its request, as fasthttp does.
func (l *evLoop) answerSlow(c *lconn) {
	l.s.gate.rejected[reasonSlowClient].Inc()
	writeError(c.ctx, l.s.errTimeout())
	c.ctx.SetConnectionClose()
	l.s.metrics.requests.WithLabelValues("", "", statusLabel(statusOf(l.s.errTimeout()).code)).Inc()
	l.out = l.s.dpAppendResponse(l.out[:0], c.ctx)
	if c.reserved > 0 {
		l.s.budget.release(c.reserved)
		c.reserved = 0
	}
	l.write(c, l.out)
	c.closing = true
	if len(c.out) == 0 {
		l.closeConn(c)
	}
}

// timedOut ends x's attempt past its deadline.
func (l *evLoop) timedOut(x *exchange) {
	if x.sp != nil {
		u := x.u
		x.u, u.x = nil, nil
		l.closeConn(u)
		l.streamEnd(x, fmt.Errorf("%w: no chunk within the timeout", errStreamTimeout), l.out[:0])
		return
	}
	u := x.u
	x.u, u.x = nil, nil
	l.closeConn(u)
	if u.connects {
		l.dialFailed(u)
		l.failed(x, &upstream.DialError{Addr: workerEndpoint(x.o.w), Err: fasthttp.ErrDialTimeout})
		return
	}
	l.failed(x, fasthttp.ErrTimeout)
}

// dpWriteFault, when set (by a test), is asked after each direct write to a client: an
// error it returns stands for the write's (the client went away meanwhile).
var dpWriteFault func() error

// The loops' system calls go straight to the kernel (RawSyscall), without telling Go's
// scheduler: a loop's P stays with its thread while it waits in epoll_wait, so no other
// thread is woken to take the P and the loop never waits for one when it wakes. (With
// syscall.Syscall, the scheduler hands a P blocked for more than 20 us to another
// thread and the loop must win a P back on every wake-up: a request on an idle
// connection took 95 us through the loop against 29 us through fasthttp,
// BenchmarkDataPlaneChat.) The reads and writes are non-blocking. Go's preemption
// still reaches a loop: its signal interrupts epoll_wait (EINTR).

func epollWait(ep int, events []unix.EpollEvent, msec int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(msec), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func rawRead(fd int, b []byte) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

func rawWrite(fd int, b []byte) (int, error) {
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}
