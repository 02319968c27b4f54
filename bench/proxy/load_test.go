package proxy

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// TestRunLoadOpenLoop checks that arrivals follow the schedule whatever the answers do:
// against a server that takes 100 ms per request, 50 requests at 100 req/s are all
// sent within half a second (a closed-loop client would need five).
func TestRunLoadOpenLoop(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		time.Sleep(100 * time.Millisecond)
		ctx.SetBodyString("ok")
	}}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown() })

	res, err := RunLoad(context.Background(), LoadOptions{
		Targets: [][]string{{"http://" + ln.Addr().String()}}, Body: []byte(`{}`),
		Expect: []byte("ok"), Rate: 100, Duration: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Samples) != 50 || res.OK() != 50 {
		t.Fatalf("%d samples, %d ok, errors %v; want 50 ok", len(res.Samples), res.OK(), res.Errors())
	}
	if res.Wall > 2*time.Second {
		t.Errorf("run took %v: requests waited for earlier answers", res.Wall)
	}
	for i, s := range res.Samples {
		if s.End < 100*time.Millisecond || s.First != s.End {
			t.Errorf("sample %d: first %v end %v; want end >= 100ms = first", i, s.First, s.End)
		}
	}
}

// TestRunLoadStream checks the two times of a stream: the first chunk arrives long
// before the end when the upstream paces its chunks.
func TestRunLoadStream(t *testing.T) {
	u, base := startUpstream(t, UpstreamOptions{Chunks: 20, ChunkGap: 3 * time.Millisecond})
	res, err := RunLoad(context.Background(), LoadOptions{
		Targets: [][]string{{base}}, Body: ChatRequestBody(DefaultModel, 2048, true), Stream: true,
		Expect: u.StreamBody(), Rate: 50, Duration: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK() != 10 {
		t.Fatalf("%d of %d ok, errors %v", res.OK(), len(res.Samples), res.Errors())
	}
	for i, s := range res.Samples {
		// 19 gaps of at least 3 ms separate the first chunk from the last.
		if s.End-s.First < 19*3*time.Millisecond {
			t.Errorf("sample %d: first chunk %v, end %v: want the gaps in between", i, s.First, s.End)
		}
	}
}

// TestRunLoadChecksBodies checks that a wrong or truncated answer is a failure, not a
// sample.
func TestRunLoadChecksBodies(t *testing.T) {
	u, base := startUpstream(t, UpstreamOptions{Chunks: 10})
	for _, tc := range []struct {
		name   string
		stream bool
		expect []byte
		want   string
	}{
		{"completion differs", false, append([]byte("x"), u.CompletionBody()[1:]...), "unexpected body"},
		{"stream longer than expected", true, u.StreamBody()[:len(u.StreamBody())-5], "unexpected body"},
		{"stream shorter than expected", true, append(append([]byte(nil), u.StreamBody()...), "data: more\n\n"...), "truncated body"},
	} {
		res, err := RunLoad(context.Background(), LoadOptions{
			Targets: [][]string{{base}}, Body: ChatRequestBody(DefaultModel, 500, tc.stream), Stream: tc.stream,
			Expect: tc.expect, Rate: 100, Duration: 50 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		for e, n := range res.Errors() {
			if !strings.HasPrefix(e, tc.want) {
				t.Errorf("%s: %d x %q, want %q", tc.name, n, e, tc.want)
			}
		}
		if res.OK() != 0 || len(res.Samples) != 5 {
			t.Errorf("%s: %d of %d ok, want 0 of 5", tc.name, res.OK(), len(res.Samples))
		}
	}
}

// TestRunLoadAlternatesTargets checks that request i goes to target i mod n, and that a
// dead target fails its requests without stopping the run.
func TestRunLoadAlternatesTargets(t *testing.T) {
	u, base := startUpstream(t, UpstreamOptions{})
	dead, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	res, err := RunLoad(context.Background(), LoadOptions{
		Targets: [][]string{{base}, {"http://" + dead}}, Body: ChatRequestBody(DefaultModel, 500, false),
		Expect: u.CompletionBody(), Rate: 50, Duration: 200 * time.Millisecond, Timeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Samples) != 20 {
		t.Fatalf("%d samples, want 20", len(res.Samples))
	}
	for i, s := range res.Samples {
		if s.Target != i%2 || (s.Err == "") != (i%2 == 0) {
			t.Errorf("sample %d: target %d err %q", i, s.Target, s.Err)
		}
	}
}

// TestRunClosed checks the closed loop: never more than conns requests open at once,
// each client's next request sent only after its answer, the run ending at its duration.
func TestRunClosed(t *testing.T) {
	var open, maxOpen atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		n := open.Add(1)
		for m := maxOpen.Load(); n > m && !maxOpen.CompareAndSwap(m, n); m = maxOpen.Load() {
		}
		time.Sleep(10 * time.Millisecond)
		open.Add(-1)
		ctx.SetBodyString("ok")
	}}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown() })

	const conns = 4
	res, err := RunClosed(context.Background(), LoadOptions{
		Targets: [][]string{{"http://" + ln.Addr().String()}}, Body: []byte(`{}`),
		Expect: []byte("ok"), Duration: 300 * time.Millisecond,
	}, conns)
	if err != nil {
		t.Fatal(err)
	}
	// 4 clients x 300 ms / 10 ms: at most 30 rounds of 4 (+4 started just before the end).
	if n := len(res.Samples); res.OK() != n || n < conns || n > conns*31 {
		t.Fatalf("%d samples, %d ok, errors %v", n, res.OK(), res.Errors())
	}
	if m := maxOpen.Load(); m > conns {
		t.Errorf("%d requests open at once, want at most %d", m, conns)
	}
	for i, s := range res.Samples {
		if s.End < 10*time.Millisecond || s.Lateness != 0 {
			t.Errorf("sample %d: end %v lateness %v", i, s.End, s.Lateness)
		}
	}
	if res.Wall < 300*time.Millisecond {
		t.Errorf("wall %v, shorter than the duration", res.Wall)
	}
	if _, err := RunClosed(context.Background(), LoadOptions{Targets: [][]string{{"http://" + ln.Addr().String()}}, Duration: time.Second}, 0); err == nil {
		t.Error("0 connections: no error")
	}
}

func TestRunLoadRejectsBadOptions(t *testing.T) {
	for _, o := range []LoadOptions{
		{Rate: 10, Duration: time.Second},
		{Targets: [][]string{{}}, Rate: 10, Duration: time.Second},
		{Targets: [][]string{{"http://127.0.0.1:1"}}, Rate: 0, Duration: time.Second},
		{Targets: [][]string{{"::bad"}}, Rate: 10, Duration: time.Second},
	} {
		if _, err := RunLoad(context.Background(), o); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}
