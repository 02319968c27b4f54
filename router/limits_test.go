package router

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// dialRouter opens a raw TCP connection to the router.
func dialRouter(t *testing.T, tr *testRouter) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(tr.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readResponse reads one response from c within d.
func readResponse(t *testing.T, c net.Conn, d time.Duration) (*http.Response, string) {
	t.Helper()
	resp, b, _ := readResponseFrom(t, c, bufio.NewReader(c), d)
	return resp, string(b)
}

// readResponseFrom reads the next response from c through br (which keeps what a
// pipelined answer brought past this one) within d; err is the body's read error.
func readResponseFrom(t *testing.T, c net.Conn, br *bufio.Reader, d time.Duration) (*http.Response, []byte, error) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	return resp, b, err
}

// trickle writes s one byte every gap until the write fails (the router hung up) or s
// is all sent; it returns how many bytes went out.
func trickle(c net.Conn, s string, gap time.Duration) int {
	for i := range len(s) {
		if _, err := c.Write([]byte{s[i]}); err != nil {
			return i
		}
		time.Sleep(gap) // a slow client, on purpose
	}
	return len(s)
}

func limitsConfig(fw *fakeWorker, mutate func(*configs.Limits)) *configs.Config {
	cfg := testConfig(fw)
	mutate(&cfg.Limits)
	return cfg
}

func TestHeaderTooLarge(t *testing.T) {
	fw := newFakeWorker(t, "m")
	tr := startRouter(t, limitsConfig(fw, func(l *configs.Limits) { l.MaxHeaderBytes = 1024 }))
	c := dialRouter(t, tr)
	fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nX-Big: %s\r\nContent-Length: %d\r\n\r\n%s", strings.Repeat("a", 2000), len(chatBody), chatBody)
	resp, body := readResponse(t, c, 5*time.Second)
	checkOpenAIError(t, resp, []byte(body), 431, "request_header_too_large")
	// A request just under the limit passes.
	resp2, _ := rawRequest(t, strings.TrimPrefix(tr.url, "http://"), "POST", "/v1/chat/completions", chatBody, "X-Big", strings.Repeat("a", 600))
	if resp2.StatusCode != 200 {
		t.Errorf("request under the header limit: %d", resp2.StatusCode)
	}
	if v := testutil.ToFloat64(tr.srv.gate.rejected[reasonHeaderTooLarge]); v != 1 {
		t.Errorf("rejected{header_too_large} = %v", v)
	}
}

func TestSlowHeadersAreCut(t *testing.T) {
	fw := newFakeWorker(t, "m")
	tr := startRouter(t, limitsConfig(fw, func(l *configs.Limits) { l.HeaderTimeout = 300 * time.Millisecond }))
	c := dialRouter(t, tr)
	req := "POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nX-Padding: " + strings.Repeat("p", 100) + "\r\nContent-Length: 2\r\n\r\n{}"
	done := make(chan int, 1)
	start := time.Now()
	go func() { done <- trickle(c, req, 20*time.Millisecond) }() // ~3 s for the whole request
	resp, body := readResponse(t, c, 5*time.Second)
	took := time.Since(start)
	checkOpenAIError(t, resp, []byte(body), 408, "request_timeout")
	if took > 2*time.Second {
		t.Errorf("cut after %v, want about the 300ms header timeout", took)
	}
	c.Close()
	if sent := <-done; sent == len(req) {
		t.Error("the whole slow request went out: it was not cut")
	}
	if fw.requests.Load() != 0 {
		t.Error("a request cut while its headers trickled in reached the worker")
	}
	if v := testutil.ToFloat64(tr.srv.gate.rejected[reasonSlowClient]); v != 1 {
		t.Errorf("rejected{slow_client} = %v", v)
	}
}

func TestSlowBodyIsCut(t *testing.T) {
	fw := newFakeWorker(t, "m")
	tr := startRouter(t, limitsConfig(fw, func(l *configs.Limits) { l.BodyTimeout = 300 * time.Millisecond }))
	c := dialRouter(t, tr)
	fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(chatBody))
	go trickle(c, chatBody, 50*time.Millisecond) // ~3 s for the body
	start := time.Now()
	resp, body := readResponse(t, c, 5*time.Second)
	checkOpenAIError(t, resp, []byte(body), 408, "request_timeout")
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("cut after %v, want about the 300ms body timeout", took)
	}
	if fw.requests.Load() != 0 {
		t.Error("the slow request reached the worker")
	}
}

func TestIdleKeepAliveIsClosed(t *testing.T) {
	fw := newFakeWorker(t, "m")
	tr := startRouter(t, limitsConfig(fw, func(l *configs.Limits) { l.IdleTimeout = 300 * time.Millisecond }))
	c := dialRouter(t, tr)
	start := time.Now() // the idle wait starts after the response, so it ends >= 300ms from here
	fmt.Fprintf(c, "GET /health HTTP/1.1\r\nHost: r\r\n\r\n")
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v %v", resp, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("idle connection: read %v, want EOF (closed by the router)", err)
	}
	if took := time.Since(start); took < 300*time.Millisecond || took > 3*time.Second {
		t.Errorf("idle connection closed after %v, want about 300ms", took)
	}
}

func TestMaxConnections(t *testing.T) {
	fw := newFakeWorker(t, "m")
	tr := startRouter(t, limitsConfig(fw, func(l *configs.Limits) { l.MaxConnections = 2 }))
	a, b := dialRouter(t, tr), dialRouter(t, tr)
	for _, c := range []net.Conn{a, b} { // both are open and served
		fmt.Fprintf(c, "GET /health HTTP/1.1\r\nHost: r\r\n\r\n")
		if resp, _ := readResponse(t, c, 5*time.Second); resp.StatusCode != 200 {
			t.Fatalf("connection within the limit: %d", resp.StatusCode)
		}
	}
	third := dialRouter(t, tr)
	fmt.Fprintf(third, "GET /health HTTP/1.1\r\nHost: r\r\n\r\n")
	resp, body := readResponse(t, third, 5*time.Second)
	checkOpenAIError(t, resp, []byte(body), 503, "too_many_connections")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("no Retry-After")
	}
	if v := testutil.ToFloat64(tr.srv.gate.rejected[reasonTooManyConns]); v != 1 {
		t.Errorf("rejected{too_many_connections} = %v", v)
	}
	// A slot freed is a slot usable.
	a.Close()
	poll.CheckFor(t, 5*time.Second, "the closed connection's slot released", func() bool { return tr.srv.openConn.Load() == 1 })
	if resp, _ := rawRequest(t, strings.TrimPrefix(tr.url, "http://"), "GET", "/health", ""); resp.StatusCode != 200 {
		t.Errorf("after a slot was freed: %d", resp.StatusCode)
	}
}

func TestMaxConnectionsPerIP(t *testing.T) {
	fw := newFakeWorker(t, "m")
	tr := startRouter(t, limitsConfig(fw, func(l *configs.Limits) { l.MaxConnectionsPerIP = 1 }))
	a := dialRouter(t, tr)
	fmt.Fprintf(a, "GET /health HTTP/1.1\r\nHost: r\r\n\r\n")
	if resp, _ := readResponse(t, a, 5*time.Second); resp.StatusCode != 200 {
		t.Fatalf("first connection: %d", resp.StatusCode)
	}
	b := dialRouter(t, tr)
	fmt.Fprintf(b, "GET /health HTTP/1.1\r\nHost: r\r\n\r\n")
	resp, body := readResponse(t, b, 5*time.Second)
	checkOpenAIError(t, resp, []byte(body), 429, "too_many_connections")
	if v := testutil.ToFloat64(tr.srv.gate.rejected[reasonTooManyConnsIP]); v != 1 {
		t.Errorf("rejected{too_many_connections_per_ip} = %v", v)
	}
}

// A client that stops reading a long stream is cut after the write timeout, and the
// worker's request is cancelled rather than blocked forever.
func TestClientThatStopsReadingIsCut(t *testing.T) {
	fw := newFakeWorker(t, "m")
	fw.chunks.Store(1 << 30) // an endless stream
	tr := startRouter(t, limitsConfig(fw, func(l *configs.Limits) { l.WriteTimeout = 300 * time.Millisecond }))
	d := net.Dialer{}
	c, err := d.Dial("tcp", strings.TrimPrefix(tr.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.(*net.TCPConn).SetReadBuffer(4096)
	fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(streamBody), streamBody)
	// Read the headers and the first chunk, then stop reading.
	br := bufio.NewReader(c)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, 30*time.Second, "the worker request cancelled", func() bool { return fw.canceled.Load() == 1 })
	poll.CheckFor(t, 5*time.Second, "in-flight back to 0", func() bool { return tr.pool.Worker("w0").InFlight() == 0 })
	if v := testutil.ToFloat64(tr.srv.gate.rejected[reasonSlowReader]); v != 1 {
		t.Errorf("rejected{slow_reader} = %v, want 1", v)
	}
	if v := testutil.ToFloat64(tr.srv.metrics.requests.WithLabelValues("w0", "m", "499")); v != 1 {
		t.Errorf("requests{status=499} = %v, want 1", v)
	}
}

// A stream far longer than every client timeout, with every gap between two chunks
// longer than each of them, is delivered whole: the timeouts bound a stalled read or
// write, never a response's length.
func TestLongStreamIsNeverCut(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {})
	mux.HandleFunc("GET /v1/models", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{"object":"list","data":[{"id":"m"}]}`)
	})
	const chunks = 6
	mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range chunks {
			fmt.Fprintf(w, "data: {\"choices\":[{\"delta\":{\"content\":\"t%d\"}}]}\n\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(300 * time.Millisecond) // generation time between tokens, over every timeout
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	})
	ws := newHTTPServer(t, mux)
	cfg := configs.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Health.Interval = 50 * time.Millisecond
	cfg.Workers = []configs.Worker{{ID: "w0", URL: ws, MaxConns: 8}}
	cfg.Limits.HeaderTimeout, cfg.Limits.BodyTimeout = 200*time.Millisecond, 200*time.Millisecond
	cfg.Limits.IdleTimeout, cfg.Limits.WriteTimeout = 200*time.Millisecond, 200*time.Millisecond
	tr := startRouter(t, &cfg)
	start := time.Now()
	resp, body := rawRequest(t, strings.TrimPrefix(tr.url, "http://"), "POST", "/v1/chat/completions", streamBody)
	took := time.Since(start)
	if resp.StatusCode != 200 || !strings.HasSuffix(string(body), "data: [DONE]\n\n") || strings.Count(string(body), "data: {") != chunks {
		t.Fatalf("stream: %d %q", resp.StatusCode, body)
	}
	if took < 5*200*time.Millisecond {
		t.Errorf("the stream took %v: not longer than the timeouts, the test proves nothing", took)
	}
	if v := testutil.ToFloat64(tr.srv.gate.rejected[reasonSlowReader]) + testutil.ToFloat64(tr.srv.gate.rejected[reasonSlowClient]); v != 0 {
		t.Errorf("a legitimate stream counted as slow: %v", v)
	}
}

func newHTTPServer(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// BenchmarkGuardConnWrite measures a 100-byte write (an SSE chunk) to a loopback TCP
// connection whose peer reads everything, plain ("raw") and through guardConn's write
// deadline ("guarded"). Compare runs with
// benchstat old.txt new.txt (go test -run '^$' -bench GuardConnWrite -count 10 ./router/).
func BenchmarkGuardConnWrite(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	chunk := []byte(strings.Repeat("x", 100))
	for _, guarded := range []bool{false, true} {
		name := "raw"
		if guarded {
			name = "guarded"
		}
		b.Run(name, func(b *testing.B) {
			raw, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer raw.Close()
			var w io.Writer = raw
			if guarded {
				l := &guardListener{lim: configs.Limits{WriteTimeout: time.Minute}, gate: &gate{}, open: new(atomic.Int64)}
				w = &guardConn{Conn: raw, l: l}
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := w.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
