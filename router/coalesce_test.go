package router

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/configs"
)

// TestStreamCoalesceAvailable: with the fasthttp this module builds with, the read
// buffer of a streamed response is found, and the chunks of an answer already received
// are taken by one Read and readMore, byte for byte; a fasthttp upgrade that hides the
// buffer fails here instead of quietly bringing back one write per chunk.
func TestStreamCoalesceAvailable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	var body, wire strings.Builder
	for i := range 50 {
		ev := fmt.Sprintf("data: {\"i\":%d}\n\n", i)
		body.WriteString(ev)
		fmt.Fprintf(&wire, "%x\r\n%s\r\n", len(ev), ev)
	}
	wire.WriteString("0\r\n\r\n")
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer func() { _ = c.Close() }()
		buf := make([]byte, 4096)
		_, _ = c.Read(buf) // the request (small, one read on loopback)
		// The whole answer in one write: every chunk arrives at once.
		_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + wire.String()))
		_, _ = io.Copy(io.Discard, c)
	}()
	hc := &fasthttp.HostClient{Addr: ln.Addr().String(), StreamResponseBody: true}
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://" + ln.Addr().String() + "/v1/chat/completions")
	if err := hc.DoTimeout(req, resp, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	stream := resp.BodyStream()
	br := bodyStreamReader(stream)
	if br == nil {
		t.Fatalf("no read buffer found under fasthttp's body stream %T", stream)
	}
	var got bytes.Buffer
	var g streamGuard
	reads := 0
	b := make([]byte, 8192)
	for {
		n, err := stream.Read(b)
		if n > 0 && err == nil {
			n, err = readMore(stream, br, &g, b, n)
		}
		got.Write(b[:n])
		reads++
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if reads > 100 {
			t.Fatal("no end of stream after 100 reads")
		}
	}
	if got.String() != body.String() {
		t.Fatalf("coalesced body differs:\n%q\nwant\n%q", got.String(), body.String())
	}
	// One Read takes every chunk, one more meets the end (the 50 chunks without
	// coalescing need 51).
	if reads > 3 {
		t.Errorf("%d reads for 50 chunks received at once, want at most 3", reads)
	}
	_ = resp.CloseBodyStream()
}

// TestBodyStreamReaderOther: a reader of another type, or nil, gets no buffer.
func TestBodyStreamReaderOther(t *testing.T) {
	for _, r := range []io.Reader{strings.NewReader("x"), nil, (*bytes.Reader)(nil), &struct{ io.Reader }{}} {
		if br := bodyStreamReader(r); br != nil {
			t.Errorf("%T: got a read buffer", r)
		}
	}
}

// writeLog records the writes made on the connections a logListener accepts, below the
// router's guardConn: one entry per system call the router would make.
type writeLog struct {
	mu     sync.Mutex
	writes []string
}

func (l *writeLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.writes
	l.writes = nil
	return w
}

type logListener struct {
	net.Listener
	log *writeLog
}

func (l logListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return logConn{Conn: c, log: l.log}, nil
}

type logConn struct {
	net.Conn
	log *writeLog
}

func (c logConn) Write(p []byte) (int, error) {
	c.log.mu.Lock()
	c.log.writes = append(c.log.writes, string(p))
	c.log.mu.Unlock()
	return c.Conn.Write(p)
}

// wholeStreamWorker is a real HTTP server on loopback that answers a streamed chat
// request with its whole chunked answer, end included, in one write (so the router
// reads the answer and its end together, as it does from an engine whose last event
// and end leave in one packet), and other chat requests with a JSON answer.
func wholeStreamWorker(t *testing.T, events int) (url, body string) {
	t.Helper()
	var wire, want strings.Builder
	for i := range events {
		ev := fmt.Sprintf("data: {\"choices\":[{\"delta\":{\"content\":\"c%d\"}}]}\n\n", i)
		want.WriteString(ev)
		fmt.Fprintf(&wire, "%x\r\n%s\r\n", len(ev), ev)
	}
	want.WriteString("data: [DONE]\n\n")
	fmt.Fprintf(&wire, "%x\r\n%s\r\n0\r\n\r\n", len("data: [DONE]\n\n"), "data: [DONE]\n\n")
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("/v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if !bytes.Contains(b, []byte(`"stream":true`)) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"id":"x","object":"chat.completion","choices":[{"message":{"role":"assistant","content":"ok"}}]}`)
			return
		}
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer func() { _ = c.Close() }()
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"+wire.String())
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL, want.String()
}

// TestStreamEndOneWrite: a stream whose end the router reads with its last chunk
// reaches the client in two writes, the headers (sent at once) and the rest with the
// chunked body's end (fasthttp alone makes four: the last piece, "0\r\n" and the
// trailer's "\r\n" each flushed on their own). Requests pipelined behind a stream,
// and others after it on the same connection, are answered intact: the trailer's line
// that went out early is dropped from the next write. A fasthttp upgrade that frames
// the end differently fails here (more writes) rather than costing writes unseen.
func TestStreamEndOneWrite(t *testing.T) {
	url, want := wholeStreamWorker(t, 5)
	cfg := testConfig()
	cfg.Workers = []configs.Worker{{ID: "w0", URL: url, MaxConns: 64, Models: []string{"m"}}}
	log := &writeLog{}
	tr := startRouterOn(t, cfg, nil, func(ln net.Listener) net.Listener { return logListener{Listener: ln, log: log} })
	c, err := net.Dial("tcp", strings.TrimPrefix(tr.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	br := bufio.NewReader(c)
	request := func(body string) string {
		return fmt.Sprintf("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	}
	read := func(what, wantBody string) {
		t.Helper()
		resp, b, err := readResponseFrom(t, c, br, 10*time.Second)
		if err != nil || resp.StatusCode != 200 || (wantBody != "" && string(b) != wantBody) {
			t.Fatalf("%s: status %d, err %v, body %q, want %q", what, resp.StatusCode, err, b, wantBody)
		}
	}
	for i := range 3 {
		log.take()
		if _, err := io.WriteString(c, request(streamBody)); err != nil {
			t.Fatal(err)
		}
		read(fmt.Sprintf("stream %d", i), want)
		writes := log.take()
		if len(writes) != 2 || !strings.HasSuffix(writes[1], "data: [DONE]\n\n\r\n0\r\n\r\n") {
			t.Errorf("stream %d: %d writes %q, want the headers, then the answer with the end of the chunked body", i, len(writes), writes)
		}
	}
	// A stream, a non-streamed request and another stream pipelined in one write.
	if _, err := io.WriteString(c, request(streamBody)+request(chatBody)+request(streamBody)); err != nil {
		t.Fatal(err)
	}
	read("pipelined stream", want)
	read("pipelined chat", "")
	read("second pipelined stream", want)
	if _, err := io.WriteString(c, request(chatBody)); err != nil {
		t.Fatal(err)
	}
	read("chat after the streams", "")
}

// TestStreamEndUnexpectedWrite: a write other than the one a held stream end expects
// releases what is held, in order, and ends the hold; so does a held end that would
// outgrow maxHeld.
func TestStreamEndUnexpectedWrite(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b, _ := io.ReadAll(c)
		got <- b
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	gl := newGuardListener(ln, configs.Default().Limits, nil, nil, nil)
	c := &guardConn{Conn: raw, l: gl}
	log := &writeLog{}
	c.Conn = logConn{Conn: raw, log: log}
	var want bytes.Buffer
	write := func(s string) {
		t.Helper()
		want.WriteString(s)
		if n, err := c.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%d bytes) = %d, %v", len(s), n, err)
		}
	}
	c.holdEnd()
	write("held")
	c.lastChunkNext()
	write("not the last chunk") // releases "held" before it
	write("plain")
	if c.end.state != endIdle {
		t.Errorf("hold state %d after an unexpected write, want idle", c.end.state)
	}
	c.holdEnd()
	write("held again")
	big := strings.Repeat("x", maxHeld)
	write(big) // over maxHeld: what is held goes out, then the big write
	c.holdEnd()
	write("5\r\nlast.\r\n")
	c.lastChunkNext()
	write("0\r\n")
	want.WriteString("\r\n")                               // the trailer's line, sent with the end...
	if _, err := c.Write([]byte("\r\nnext")); err != nil { // ...and dropped from the next write
		t.Fatal(err)
	}
	want.WriteString("next")
	_ = raw.Close()
	b := <-got
	if !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("peer read %d bytes, want %d in order", len(b), want.Len())
	}
	writes := log.take()
	wantWrites := []int{len("held"), len("not the last chunk"), len("plain"), len("held again"), len(big),
		len("5\r\nlast.\r\n0\r\n\r\n"), len("next")}
	if len(writes) != len(wantWrites) {
		for i, w := range writes {
			t.Logf("write %d: %q", i, w[:min(len(w), 40)])
		}
		t.Fatalf("%d writes, want %d", len(writes), len(wantWrites))
	}
	for i, w := range writes {
		if len(w) != wantWrites[i] {
			t.Errorf("write %d: %d bytes, want %d", i, len(w), wantWrites[i])
		}
	}
}
