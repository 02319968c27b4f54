package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/cmd/stack"
	"github.com/kvroute/kvroute/configs"
)

// BenchmarkRequestPath sends requests through kvroute (the whole stack, in this
// process) to two fake upstreams on loopback, 8 clients at a time: a 2 KB chat
// completion (2 KB answer) and the same with "stream": true (200 SSE chunks), with
// round_robin and with cache_aware (tokenize approx: no /tokenize round trip, so the
// router's own work is what is measured). Every answer is checked byte for byte.
//
// ns/op and allocs/op count the client, the upstreams and kvroute together; the client
// and the upstreams are the same code in two runs, so a difference between two runs is
// kvroute's. For kvroute's CPU alone against nginx, see scripts/bench-proxy.sh.
//
// Compare two runs:
//
//	go test -run '^$' -bench '^BenchmarkRequestPath$' -count 10 ./bench/proxy > new.txt; benchstat old.txt new.txt
func BenchmarkRequestPath(b *testing.B) {
	for _, policy := range []string{"round_robin", "cache_aware"} {
		for _, stream := range []bool{false, true} {
			name := fmt.Sprintf("%s/stream=%v", policy, stream)
			b.Run(name, func(b *testing.B) { benchRequestPath(b, policy, stream) })
		}
	}
}

func benchRequestPath(b *testing.B, policy string, stream bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := configs.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Policy = policy
	cfg.Tokenize.Mode = "approx"
	var expect []byte
	for i := range 2 {
		up := NewUpstream(UpstreamOptions{})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		go func() { _ = up.Serve(ln) }()
		defer func() { _ = up.Shutdown(context.Background()) }()
		cfg.Workers = append(cfg.Workers, configs.Worker{ID: fmt.Sprintf("w%d", i), URL: "http://" + ln.Addr().String(), MaxConns: 1024})
		expect = up.CompletionBody()
		if stream {
			expect = up.StreamBody()
		}
	}
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- stack.Run(ctx, &cfg, ln, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	}()
	defer func() {
		cancel()
		<-done
	}()
	url := "http://" + ln.Addr().String() + "/v1/chat/completions"
	// 64 distinct bodies, so cache_aware hashes and matches varied prompts.
	bodies := make([][]byte, 64)
	for i := range bodies {
		bodies[i] = ChatRequestBody(DefaultModel, 2048, stream)
		bodies[i] = bytes.Replace(bodies[i], []byte(`"content":"`), fmt.Appendf(nil, `"content":"%02d `, i), 1)
	}
	client := &fasthttp.Client{MaxConnsPerHost: 64, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	do := func(i int) error {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI(url)
		req.Header.SetMethod("POST")
		req.Header.SetContentType("application/json")
		req.SetBodyRaw(bodies[i%len(bodies)])
		if err := client.Do(req, resp); err != nil {
			return err
		}
		if resp.StatusCode() != 200 || !bytes.Equal(resp.Body(), expect) {
			return fmt.Errorf("status %d, body %.200q", resp.StatusCode(), resp.Body())
		}
		return nil
	}
	// Ready when both workers have passed a health check and answer through kvroute.
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; ; i++ {
		err := do(i)
		if err == nil && i >= 8 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("kvroute not ready: %v", err)
		}
		if err != nil {
			time.Sleep(20 * time.Millisecond)
		}
	}
	b.SetParallelism(4) // 8 clients on 2 cores, about wrk -c16's concurrency per core
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for i := 0; pb.Next(); i++ {
			if err := do(i); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
