package router

import (
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// trap is a listener the router must never connect to: it counts every connection.
type trap struct {
	ln       net.Listener
	accepted atomic.Int32
}

func newTrap(t *testing.T) *trap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &trap{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tp.accepted.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return tp
}

// Requests only ever go to the pool's workers: nothing a client controls (an
// absolute-URI request line, Host, X-Forwarded-Host, a model naming a URL) makes the
// router connect anywhere else.
func TestRequestsOnlyReachPoolWorkers(t *testing.T) {
	evil := newTrap(t)
	ev := evil.ln.Addr().String()
	fw := newFakeWorker(t, "m")
	tr := startRouter(t, testConfig(fw))
	addr := strings.TrimPrefix(tr.url, "http://")
	cases := []struct {
		name, raw string
		reaches   bool // the request is served by the pool's worker
	}{
		{"absolute URI", fmt.Sprintf("POST http://%s/v1/chat/completions HTTP/1.1\r\nHost: %s\r\n", ev, ev), true},
		{"absolute URI to /health", fmt.Sprintf("GET http://%s/health HTTP/1.1\r\nHost: %s\r\n", ev, ev), false},
		{"Host header", fmt.Sprintf("POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\n", ev), true},
		{"X-Forwarded-Host", fmt.Sprintf("POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nX-Forwarded-Host: %s\r\nForwarded: host=%s\r\n", ev, ev), true},
		{"model is a URL", "POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\n", false},
	}
	for _, c := range cases {
		body := chatBody
		if c.name == "model is a URL" {
			body = fmt.Sprintf(`{"model":"http://%s/v1","messages":[{"role":"user","content":"x"}]}`, ev)
		}
		before := fw.requests.Load()
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		raw := c.raw + "Connection: close\r\n"
		if strings.HasPrefix(raw, "POST") {
			raw += fmt.Sprintf("Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		} else {
			raw += "\r\n"
		}
		if _, err := conn.Write([]byte(raw)); err != nil {
			t.Fatal(err)
		}
		resp, _ := readResponse(t, conn, 5*time.Second)
		conn.Close()
		served := fw.requests.Load() > before
		if served != c.reaches {
			t.Errorf("%s: status %d, served by the worker %v, want %v", c.name, resp.StatusCode, served, c.reaches)
		}
		if c.name == "model is a URL" && resp.StatusCode != 404 {
			t.Errorf("%s: status %d, want 404 (unknown model)", c.name, resp.StatusCode)
		}
	}
	if n := evil.accepted.Load(); n != 0 {
		t.Errorf("the router connected to the client-named host %d times", n)
	}
}
