package router

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
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
