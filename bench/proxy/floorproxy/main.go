// Command floorproxy is the least a fasthttp reverse proxy does, to be measured by
// `kvbench proxy --kvroute` in kvroute's place: round robin over the --worker
// addresses, the request forwarded as fasthttp read it, the answer streamed back as it
// arrives (fasthttp.HostClient with StreamResponseBody, as kvroute's forwarding does).
// Nothing else: no routing, limits, retries, health, metrics, logging or tokenizing.
// Its requests per CPU-second are the ceiling of kvroute's architecture (fasthttp on
// Go's netpoller) on the machine at hand, as indexer's BenchmarkIngestFloor is the
// index's. It takes kvroute's serve flags that kvbench passes and ignores all but
// --listen and --worker; it answers `version` and GET /ready as kvbench expects.
//
//	go build -o /tmp/floorproxy ./bench/proxy/floorproxy
//	kvbench proxy --kvroute /tmp/floorproxy --nginx-workers 1 --peak --rounds 2 --duration 5s --warmup 1s
//
// Not for production: it has no timeouts and answers every error with a plain 502.
package main

import (
	"io"
	"log"
	"sync/atomic"

	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/bench/proxy/internal/stand"
)

func main() {
	listen, workers, _, err := stand.Args("floorproxy")
	if err != nil {
		log.Fatal(err)
	}
	clients := make([]*fasthttp.HostClient, len(workers))
	for i, w := range workers {
		clients[i] = &fasthttp.HostClient{Addr: w, StreamResponseBody: true, MaxConns: 1024}
	}
	var next atomic.Uint64
	handle := func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/ready" {
			return
		}
		c := clients[next.Add(1)%uint64(len(clients))]
		resp := fasthttp.AcquireResponse()
		if err := c.Do(&ctx.Request, resp); err != nil {
			fasthttp.ReleaseResponse(resp)
			ctx.Error(err.Error(), fasthttp.StatusBadGateway)
			return
		}
		resp.Header.CopyTo(&ctx.Response.Header)
		if bs := resp.BodyStream(); bs != nil {
			ctx.Response.SetBodyStream(&streamBody{Reader: bs, resp: resp}, -1)
			return
		}
		ctx.Response.SetBody(resp.Body())
		fasthttp.ReleaseResponse(resp)
	}
	srv := &fasthttp.Server{Handler: handle, NoDefaultServerHeader: true, NoDefaultDate: true}
	log.Fatal(srv.ListenAndServe(listen))
}

// streamBody is a worker's streamed answer: fasthttp closes it when the client's answer
// is written, which frees the worker's response and connection.
type streamBody struct {
	io.Reader
	resp *fasthttp.Response
}

func (s *streamBody) Close() error {
	fasthttp.ReleaseResponse(s.resp)
	return nil
}
