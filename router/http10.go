package router

import (
	"errors"
	"io"
	"net"

	"github.com/valyala/fasthttp"
)

// streamToHTTP10 sends a streaming response to an HTTP/1.0 client. fasthttp writes
// every body stream of unknown length chunked, which RFC 9112 section 6.1 forbids
// towards HTTP/1.0 (it cannot parse it); such a body is instead delimited by closing
// the connection (section 6.3 (8)): no Content-Length, Connection: close, and the
// stream's bytes as they are. The connection is taken over (hijacked) after the
// handler returns, and each chunk is written as soon as it is read, as fasthttp does
// for chunked streams. The writes still go through the guard connection, bounded by
// limits.write_timeout. A hijacked connection is not the server's any more: a graceful
// shutdown does not wait for it (the stream still ends with the worker's, or with the
// timeouts).
func streamToHTTP10(ctx *fasthttp.RequestCtx, sp *streamPipe) {
	h := &ctx.Response.Header
	h.SetContentLength(-2) // identity: Connection: close
	h.Del(fasthttp.HeaderTransferEncoding)
	head := append([]byte(nil), h.Header()...) // a copy: the RequestCtx dies with the handler
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		_, err := c.Write(head)
		buf := make([]byte, 16<<10)
		for err == nil {
			n, rerr := sp.Read(buf)
			if n > 0 {
				_, err = c.Write(buf[:n])
			}
			if errors.Is(rerr, io.EOF) {
				break
			}
			if rerr != nil {
				err = rerr
			}
		}
		_ = sp.CloseWithError(err)
	})
}
