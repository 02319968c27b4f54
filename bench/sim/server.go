package sim

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// server is an HTTP server that can go offline and come back on the same address (a
// crashed and restarted process): the worker's API and a prefill worker's P/D side
// channel. It must not be copied.
type server struct {
	handler    http.Handler
	ctx        context.Context // requests' base context; its end stops a pending restart
	addr       string
	onShutdown func() // run by Shutdown and Close (may be nil)

	// mu guards srv (nil while offline) and closed.
	mu     sync.Mutex
	srv    *http.Server
	closed bool
}

// start serves on ln.
func (s *server) start(ln net.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.serveLocked(ln)
}

// serveLocked serves on ln. mu must be held.
func (s *server) serveLocked(ln net.Listener) {
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return s.ctx }}
	if s.onShutdown != nil {
		srv.RegisterOnShutdown(s.onShutdown)
	}
	s.srv = srv
	go func() { _ = srv.Serve(ln) }()
}

// current returns the running server, nil while offline or closed.
func (s *server) current() *http.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv
}

// goOffline closes the server (listener and connections) and listens again on the same
// address after d, retrying every 10 ms while the port is not free.
func (s *server) goOffline(d time.Duration) {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv == nil {
		return // already offline, or closed
	}
	_ = srv.Close()
	go func() {
		t := time.NewTimer(d)
		defer t.Stop()
		for {
			select {
			case <-t.C:
			case <-s.ctx.Done():
				return
			}
			ln, err := net.Listen("tcp", s.addr)
			if err != nil {
				t.Reset(10 * time.Millisecond)
				continue
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.closed {
				_ = ln.Close()
				return
			}
			s.serveLocked(ln)
			return
		}
	}()
}

// close closes the server for good: a pending restart does not happen.
func (s *server) close() error {
	s.mu.Lock()
	s.closed = true
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Close()
}
