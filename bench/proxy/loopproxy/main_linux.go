// Command loopproxy is the least an event-loop reverse proxy does, to be measured by
// `kvbench proxy --kvroute` in kvroute's place as floorproxy is: one goroutine on one
// thread waits for readiness of every socket in one epoll set, as an nginx worker
// does, with no goroutine per connection and no other thread to wake. Round robin over
// the --worker addresses; a request (Content-Length framing) is forwarded as read, the
// answer is passed to the client as it arrives, its end found by its framing
// (Content-Length or chunked), then the worker's connection is kept for the next
// request. Nothing else: no routing, limits, timeouts, health, metrics or logs, and
// no HTTP feature the benchmark's workloads do not use (no chunked requests, trailers
// are passed over, no pipelining of a client's requests). It answers `version` and
// GET /ready as kvbench expects. The framing is scanned here, byte by byte as reads
// bring it, because fasthttp's parsers read from a bufio.Reader that blocks for more.
//
// Its requests per CPU-second, next to floorproxy's and kvroute's in the same run,
// show what an event loop saves over fasthttp on Go's netpoller on the machine at hand.
//
//	go build -o /tmp/loopproxy ./bench/proxy/loopproxy
//	kvbench proxy --kvroute /tmp/loopproxy --nginx-workers 1 --peak --rounds 2 --duration 5s --warmup 1s
//
// Not for production: a bench tool.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"log"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kvroute/kvroute/bench/proxy/internal/stand"
)

func main() {
	listen, addrs, policy, err := stand.Args("loopproxy")
	if err != nil {
		log.Fatal(err)
	}
	workers := make([]unix.Sockaddr, len(addrs))
	for i, a := range addrs {
		if workers[i], err = sockaddr(a); err != nil {
			log.Fatal(err)
		}
	}
	la, err := sockaddr(listen)
	if err != nil {
		log.Fatal(err)
	}
	runtime.LockOSThread()
	l, err := newLoop(la, workers)
	if err != nil {
		log.Fatal(err)
	}
	switch policy {
	case "", "round_robin":
	case "cache_aware":
		if l.aware, err = newAware(len(workers)); err != nil {
			log.Fatal(err)
		}
	default:
		log.Fatalf("loopproxy: policy %q: want round_robin or cache_aware", policy)
	}
	log.Fatal(l.run())
}

func sockaddr(hostport string) (unix.Sockaddr, error) {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil || !ap.Addr().Is4() {
		return nil, fmt.Errorf("address %q: want IPv4:port", hostport)
	}
	return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, nil
}

// conn is a client's connection or a worker's.
type conn struct {
	fd       int
	upstream bool
	in       []byte // read and not yet handled
	out      []byte // to write once the socket takes it
	wantOut  bool   // EPOLLOUT is registered
	peer     *conn  // during an exchange: the client's worker connection, or the worker's client
	worker   int    // a worker connection's worker
	resp     respFraming
}

// respFraming finds the end of a worker's answer in the bytes passed through.
type respFraming struct {
	head    []byte // the head until it is complete
	inBody  bool
	chunked bool
	left    int // Content-Length bytes left, or the current chunk's
	st      chunkState
	size    int
	line    int // length of the current trailer line
}

type chunkState uint8

const (
	chSize chunkState = iota
	chExt
	chData
	chDataCR
	chDataLF
	chTrailer
)

type loop struct {
	ep      int
	lfd     int
	workers []unix.Sockaddr
	idle    [][]*conn // per worker: connections between exchanges
	next    int
	conns   map[int]*conn
	buf     []byte
	aware   *aware // --policy cache_aware; nil: round robin
}

func newLoop(la unix.Sockaddr, workers []unix.Sockaddr) (*loop, error) {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return nil, err
	}
	if err := unix.Bind(lfd, la); err != nil {
		return nil, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(lfd, 4096); err != nil {
		return nil, err
	}
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, lfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(lfd)}); err != nil {
		return nil, err
	}
	return &loop{ep: ep, lfd: lfd, workers: workers, idle: make([][]*conn, len(workers)),
		conns: map[int]*conn{}, buf: make([]byte, 64<<10)}, nil
}

func (l *loop) run() error {
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(l.ep, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			if fd == l.lfd {
				l.accept()
				continue
			}
			c := l.conns[fd]
			if c == nil {
				continue
			}
			if ev.Events&unix.EPOLLOUT != 0 {
				l.flush(c)
			}
			if ev.Events&(unix.EPOLLIN|unix.EPOLLHUP|unix.EPOLLERR) != 0 && l.conns[fd] == c {
				l.readable(c)
			}
		}
	}
}

func (l *loop) accept() {
	for {
		fd, _, err := unix.Accept4(l.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return // EAGAIN, or an error the next event retries
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		l.add(&conn{fd: fd})
	}
}

func (l *loop) add(c *conn) {
	l.conns[c.fd] = c
	_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, c.fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(c.fd)})
}

func (l *loop) close(c *conn) {
	if l.conns[c.fd] != c {
		return
	}
	delete(l.conns, c.fd)
	_ = unix.Close(c.fd)             // also leaves the epoll set
	if c.upstream && c.peer == nil { // an idle worker connection the worker closed
		if i := slices.Index(l.idle[c.worker], c); i >= 0 {
			l.idle[c.worker] = slices.Delete(l.idle[c.worker], i, i+1)
		}
	}
	if p := c.peer; p != nil {
		if l.aware != nil { // an exchange cut: its worker has it no more
			u := c
			if !c.upstream {
				u = p
			}
			l.aware.inflight[u.worker]--
		}
		c.peer, p.peer = nil, nil
		l.close(p) // an exchange cut on one side cannot finish on the other
	}
}

// readable reads what c has and handles it.
func (l *loop) readable(c *conn) {
	for {
		n, err := unix.Read(c.fd, l.buf)
		if errors.Is(err, unix.EAGAIN) {
			return
		}
		if err != nil || n == 0 {
			l.close(c)
			return
		}
		if c.upstream {
			l.fromWorker(c, l.buf[:n])
		} else {
			c.in = append(c.in, l.buf[:n]...)
			l.request(c)
		}
		if l.conns[c.fd] != c || n < len(l.buf) {
			return
		}
	}
}

// request forwards the client's next complete request, if it has one and no exchange
// is under way.
func (l *loop) request(c *conn) {
	if c.peer != nil {
		return
	}
	end := bytes.Index(c.in, []byte("\r\n\r\n"))
	if end < 0 {
		return
	}
	head := c.in[:end+4]
	size := len(head) + contentLength(head)
	if len(c.in) < size {
		return
	}
	if bytes.HasPrefix(head, []byte("GET /ready ")) {
		c.in = c.in[size:]
		l.write(c, []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
		return
	}
	w := -1
	if l.aware != nil {
		w = l.aware.pick(c.in[len(head):size])
	}
	if w < 0 {
		w = l.next % len(l.workers)
		l.next++
	}
	u, err := l.workerConn(w)
	if err != nil {
		c.in = c.in[size:]
		l.write(c, []byte("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"))
		return
	}
	if l.aware != nil {
		l.aware.inflight[w]++
	}
	c.peer, u.peer = u, c
	u.resp = respFraming{}
	l.write(u, c.in[:size])
	c.in = c.in[size:]
}

// workerConn returns an idle connection to worker w, or a new one.
func (l *loop) workerConn(w int) (*conn, error) {
	if n := len(l.idle[w]); n > 0 {
		u := l.idle[w][n-1]
		l.idle[w] = l.idle[w][:n-1]
		return u, nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, l.workers[w]); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		_ = unix.Close(fd)
		return nil, err
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	u := &conn{fd: fd, upstream: true, worker: w}
	l.add(u)
	return u, nil
}

// fromWorker passes a worker's bytes to its client and, at the end of the answer,
// ends the exchange.
func (l *loop) fromWorker(u *conn, b []byte) {
	c := u.peer
	if c == nil {
		l.close(u) // bytes outside an exchange
		return
	}
	done, bad := u.resp.scan(b)
	if bad {
		l.close(u)
		return
	}
	l.write(c, b)
	if !done {
		return
	}
	u.peer, c.peer = nil, nil
	if l.aware != nil {
		l.aware.inflight[u.worker]--
	}
	if l.conns[u.fd] == u {
		l.idle[u.worker] = append(l.idle[u.worker], u)
	}
	if l.conns[c.fd] == c {
		l.request(c) // a request that came while this one was answered
	}
}

// write writes b to c now, or keeps what the socket does not take for EPOLLOUT.
func (l *loop) write(c *conn, b []byte) {
	if len(c.out) == 0 {
		n, err := unix.Write(c.fd, b)
		if n < 0 {
			n = 0
		}
		if err != nil && !errors.Is(err, unix.EAGAIN) {
			l.close(c)
			return
		}
		b = b[n:]
		if len(b) == 0 {
			return
		}
	}
	c.out = append(c.out, b...)
	if !c.wantOut {
		c.wantOut = true
		_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_MOD, c.fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLOUT, Fd: int32(c.fd)})
	}
}

// flush writes what c has kept, and stops waiting for EPOLLOUT once it is all out.
func (l *loop) flush(c *conn) {
	for len(c.out) > 0 {
		n, err := unix.Write(c.fd, c.out)
		if errors.Is(err, unix.EAGAIN) {
			return
		}
		if err != nil {
			l.close(c)
			return
		}
		c.out = c.out[n:]
	}
	c.out = c.out[:0]
	if c.wantOut {
		c.wantOut = false
		_ = unix.EpollCtl(l.ep, unix.EPOLL_CTL_MOD, c.fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(c.fd)})
	}
}

// contentLength returns the Content-Length of a head, 0 when it has none.
func contentLength(head []byte) int {
	for line := range bytes.SplitSeq(head, []byte("\r\n")) {
		name, val, ok := bytes.Cut(line, []byte(":"))
		if ok && strings.EqualFold(string(name), "Content-Length") {
			n, err := strconv.Atoi(string(bytes.TrimSpace(val)))
			if err == nil && n >= 0 {
				return n
			}
		}
	}
	return 0
}

// scan reads the next bytes of an answer; done: they end it; bad: they cannot be
// framed (the connection is then dropped).
func (f *respFraming) scan(b []byte) (done, bad bool) {
	if !f.inBody {
		f.head = append(f.head, b...)
		end := bytes.Index(f.head, []byte("\r\n\r\n"))
		if end < 0 {
			return false, len(f.head) > 64<<10
		}
		head := f.head[:end+4]
		b = f.head[end+4:]
		f.inBody = true
		f.chunked = bytes.Contains(bytes.ToLower(head), []byte("transfer-encoding: chunked"))
		if !f.chunked {
			f.left = contentLength(head)
		}
		f.head = nil
	}
	if !f.chunked {
		if len(b) > f.left {
			return false, true
		}
		f.left -= len(b)
		return f.left == 0, false
	}
	for i := 0; i < len(b); i++ {
		switch ch := b[i]; f.st {
		case chSize:
			switch {
			case ch >= '0' && ch <= '9':
				f.size = f.size<<4 | int(ch-'0')
			case ch >= 'a' && ch <= 'f':
				f.size = f.size<<4 | int(ch-'a'+10)
			case ch >= 'A' && ch <= 'F':
				f.size = f.size<<4 | int(ch-'A'+10)
			case ch == '\n':
				f.endSizeLine()
			default:
				f.st = chExt
			}
			if f.size > 1<<30 {
				return false, true
			}
		case chExt:
			if ch == '\n' {
				f.endSizeLine()
			}
		case chData:
			n := min(f.left, len(b)-i)
			f.left -= n
			i += n - 1
			if f.left == 0 {
				f.st = chDataCR
			}
		case chDataCR:
			f.st = chDataLF
		case chDataLF:
			f.st = chSize
		case chTrailer:
			switch ch {
			case '\n':
				if f.line == 0 {
					return i == len(b)-1, i != len(b)-1
				}
				f.line = 0
			case '\r':
			default:
				f.line++
			}
		}
	}
	return false, false
}

func (f *respFraming) endSizeLine() {
	if f.size == 0 {
		f.st, f.line = chTrailer, 0
		return
	}
	f.st, f.left, f.size = chData, f.size, 0
}
