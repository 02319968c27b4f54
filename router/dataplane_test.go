package router

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/router/blockhash"
)

// The router's other tests run with the event-loop data plane too, when
// KVROUTE_TEST_DATA_PLANE=event_loop (make test runs them both ways). These test what
// is the loop's own: which requests it serves, and the hand-off of the rest.

// eventLoopConfig is testConfig on the event-loop data plane; it skips t off Linux.
func eventLoopConfig(t *testing.T, workers ...*fakeWorker) *configs.Config {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("the event loop runs on Linux only")
	}
	cfg := testConfig(workers...)
	cfg.DataPlane = configs.DataPlaneEventLoop
	return cfg
}

// TestDataPlaneServesAndHandsOff: chat, streamed chat and pipelined requests are served
// by the loops over one connection; a request that is not on the fast path (GET
// /v1/models) hands the connection to fasthttp, which answers it and every request
// after it on that connection.
func TestDataPlaneServesAndHandsOff(t *testing.T) {
	fw := newFakeWorker(t, "m")
	cfg := eventLoopConfig(t, fw)
	cfg.Headers.Worker = true
	cfg.Workers[0].Role = configs.RoleBoth // as configs' defaults set it
	tr := startRouter(t, cfg)
	c := dialRouter(t, tr)
	br := bufio.NewReader(c)
	request := func(method, path, body string) string {
		return fmt.Sprintf("%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", method, path, len(body), body)
	}
	read := func(what string, want int, contains string) *http.Response {
		t.Helper()
		resp, b, err := readResponseFrom(t, c, br, 10*time.Second)
		if err != nil || resp.StatusCode != want || !strings.Contains(string(b), contains) {
			t.Fatalf("%s: status %d (want %d), err %v, body %q (want it to contain %q)", what, resp.StatusCode, want, err, b, contains)
		}
		return resp
	}
	handoffs := tr.srv.metrics.handoffs.WithLabelValues(handoffRequest)

	for i := range 3 {
		if _, err := io.WriteString(c, request("POST", "/v1/chat/completions", chatBody)); err != nil {
			t.Fatal(err)
		}
		resp := read(fmt.Sprintf("chat %d", i), 200, `"chat.completion"`)
		if resp.Header.Get("X-Request-Id") == "" || resp.Header.Get("x-kvroute-worker") != "w0" {
			t.Errorf("chat %d: headers %v", i, resp.Header)
		}
	}
	resp := func() *http.Response {
		if _, err := io.WriteString(c, request("POST", "/v1/chat/completions", streamBody)); err != nil {
			t.Fatal(err)
		}
		return read("stream", 200, "data: [DONE]")
	}()
	if len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("stream: transfer encoding %v, want chunked", resp.TransferEncoding)
	}
	// Pipelined: a stream, a chat, an unknown model (answered by the loop: 404).
	if _, err := io.WriteString(c, request("POST", "/v1/chat/completions", streamBody)+request("POST", "/v1/chat/completions", chatBody)+
		request("POST", "/v1/chat/completions", `{"model":"nope","messages":[]}`)); err != nil {
		t.Fatal(err)
	}
	read("pipelined stream", 200, "data: [DONE]")
	read("pipelined chat", 200, `"chat.completion"`)
	read("pipelined unknown model", 404, `"model_not_found"`)
	if v := testutil.ToFloat64(handoffs); v != 0 {
		t.Fatalf("handoffs = %v before any request off the fast path", v)
	}
	if n := fw.requests.Load(); n != 6 {
		t.Errorf("the worker got %d requests, want 6", n)
	}

	// Off the fast path: handed to fasthttp with the connection.
	if _, err := io.WriteString(c, "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	read("models", 200, `"m"`)
	if v := testutil.ToFloat64(handoffs); v != 1 {
		t.Errorf("handoffs = %v, want 1", v)
	}
	if _, err := io.WriteString(c, request("POST", "/v1/chat/completions", chatBody)); err != nil {
		t.Fatal(err)
	}
	read("chat after the hand-off", 200, `"chat.completion"`)
	if n := fw.requests.Load(); n != 7 {
		t.Errorf("the worker got %d requests, want 7", n)
	}
}

// TestRespBody checks the answer body decoder against net/http's chunked reader and
// Content-Length framing, with the bytes split at every place.
func TestRespBody(t *testing.T) {
	for _, tc := range []struct {
		name, wire, want string
		chunked          bool
		length           int64
		bad              bool
	}{
		{name: "length", wire: "hello", want: "hello", length: 5},
		{name: "chunked", wire: "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", want: "hello world", chunked: true},
		{name: "chunked LF only", wire: "5\nhello\n0\n\n", want: "hello", chunked: true},
		{name: "extension and trailer", wire: "5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", want: "hello", chunked: true},
		{name: "upper hex", wire: "A\r\n0123456789\r\n0\r\n\r\n", want: "0123456789", chunked: true},
		{name: "no size", wire: "\r\nhello\r\n", chunked: true, bad: true},
		{name: "bad size", wire: "5x\r\nhello\r\n", chunked: true, bad: true},
		{name: "size too long", wire: "1000000000000000\r\n", chunked: true, bad: true},
		{name: "data not ended", wire: "5\r\nhelloX\r\n", chunked: true, bad: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for split := 0; split <= len(tc.wire); split++ {
				var b respBody
				if tc.chunked {
					b.mode = bodyChunked
				} else {
					b.left = tc.length
				}
				out, used1, err := b.feed(nil, []byte(tc.wire[:split]))
				used2 := 0
				if err == nil && !b.done {
					out, used2, err = b.feed(out, []byte(tc.wire[split:]))
				}
				if tc.bad {
					if err == nil {
						t.Fatalf("split %d: no error, body %q", split, out)
					}
					continue
				}
				if err != nil || !b.done || string(out) != tc.want || used1+used2 != len(tc.wire) {
					t.Fatalf("split %d: body %q done %v used %d err %v, want %q", split, out, b.done, used1+used2, err, tc.want)
				}
			}
		})
	}
}

// TestDataPlaneHostNames: workers named by host name are served from the loops once the
// name is looked up, not handed off; a name whose first address refuses connections
// moves on to its next, and the request that found it out is retried; a name whose
// lookup failed at start (its requests handed to fasthttp meanwhile) is tried again
// and then served from the loops.
func TestDataPlaneHostNames(t *testing.T) {
	for _, failFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("first-lookup-fails=%v", failFirst), func(t *testing.T) {
			fw0, fw1 := newFakeWorker(t, "m"), newFakeWorker(t, "m")
			cfg := eventLoopConfig(t, fw0, fw1)
			cfg.Policy = "round_robin"
			cfg.DataPlaneLoops = 1 // every connection on the loop that saw the failed lookup
			for i := range cfg.Workers {
				// The fake workers listen on 127.0.0.1; the health checks and the
				// hand-offs (fasthttp) find localhost there too.
				cfg.Workers[i].URL = strings.Replace(cfg.Workers[i].URL, "127.0.0.1", "localhost", 1)
			}
			var lookups atomic.Int32
			tr := startRouterWith(t, cfg, func(tr *testRouter) {
				tr.srv.dpResolverHook = func(r *dpResolver) {
					r.retry = 50 * time.Millisecond
					r.lookup = func(_ context.Context, host string) ([]netip.Addr, error) {
						if n := lookups.Add(1); host != "localhost" || failFirst && n == 1 {
							return nil, fmt.Errorf("lookup %q: no answer", host)
						}
						// 127.0.0.2 is loopback too, but nothing listens there.
						return []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1")}, nil
					}
				}
			})
			handoffs := tr.srv.metrics.handoffs.WithLabelValues(handoffWorkers)
			chat := func(n int) {
				t.Helper()
				c := dialRouter(t, tr)
				br := bufio.NewReader(c)
				for i := range n {
					if _, err := fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(chatBody), chatBody); err != nil {
						t.Fatal(err)
					}
					resp, b, err := readResponseFrom(t, c, br, 10*time.Second)
					if err != nil || resp.StatusCode != 200 {
						t.Fatalf("chat %d: status %d, err %v, body %s", i, resp.StatusCode, err, b)
					}
				}
			}
			if failFirst {
				chat(1) // handed off: fasthttp resolves the name itself
				if v := testutil.ToFloat64(handoffs); v != 1 {
					t.Fatalf("%v hand-offs before the name's first answer, want 1", v)
				}
				time.Sleep(100 * time.Millisecond) // past the retry delay
				chat(1)                            // the loop looks the name up again; handed off once more
				// Until the second lookup has answered (gen counts the ended ones).
				res := dataPlaneOf(tr).res
				if !poll.Until(5*time.Second, func() bool { return res.gen.Load() >= 2 }) {
					t.Fatalf("the failed lookup was not tried again (%d lookups)", lookups.Load())
				}
			}
			before := testutil.ToFloat64(handoffs)
			served := fw0.requests.Load() + fw1.requests.Load()
			chat(6)
			if v := testutil.ToFloat64(handoffs) - before; v != 0 {
				t.Errorf("%v hand-offs for the workers: their host name was not served from the loop", v)
			}
			if n := fw0.requests.Load() + fw1.requests.Load() - served; n != 6 {
				t.Errorf("the workers got %d requests, want 6", n)
			}
			if fw0.requests.Load() == 0 || fw1.requests.Load() == 0 {
				t.Errorf("requests per worker %d, %d: round_robin should reach both", fw0.requests.Load(), fw1.requests.Load())
			}
			// One at start (two when it failed), one after the refused connection to
			// 127.0.0.2; the same answer then keeps 127.0.0.1 in use, and the answer is
			// kept for dpResolveEvery.
			if n, want := lookups.Load(), 2+int32(map[bool]int{false: 0, true: 1}[failFirst]); n != want {
				t.Errorf("%d lookups of localhost, want %d", n, want)
			}
		})
	}
}

// TestDataPlaneClientWriteFails: when a write to a client fails (the client went away
// between its request and the answer), its request is ended once: counted once (200 if
// the answer was whole, 499 if the client left before its end), the loops' busy count
// back to 0 (so a drain ends at once), the connection closed. The write of a chat's
// answer, of a stream's head, and the next one of the stream.
func TestDataPlaneClientWriteFails(t *testing.T) {
	cfg := eventLoopConfig(t, newFakeWorker(t, "m"))
	tr := startRouter(t, cfg)
	var arm atomic.Int32 // fail the arm-th client write from now (1 = the next)
	dpWriteFault = func() error {
		if arm.Load() > 0 && arm.Add(-1) == 0 {
			return syscall.EPIPE
		}
		return nil
	}
	t.Cleanup(func() { dpWriteFault = nil })
	counted := func() float64 {
		mfs, err := tr.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var n float64
		for _, mf := range mfs {
			if mf.GetName() == "kvroute_router_requests_total" {
				for _, m := range mf.GetMetric() {
					n += m.GetCounter().GetValue()
				}
			}
		}
		return n
	}
	for _, c := range []struct {
		name, body string
		nth        int32
	}{
		{"chat answer", chatBody, 1},
		{"stream head", streamBody, 1},
		{"stream after its head", streamBody, 2},
	} {
		before := counted()
		conn := dialRouter(t, tr)
		arm.Store(c.nth)
		if _, err := fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(c.body), c.body); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(conn); err != nil { // the loop closes the connection
			t.Fatalf("%s: %v", c.name, err)
		}
		dp := dataPlaneOf(tr)
		if !poll.Until(5*time.Second, func() bool { return dp.busy.Load() == 0 }) {
			t.Fatalf("%s: the loops' busy count is %d after the request ended, want 0", c.name, dp.busy.Load())
		}
		if !poll.Until(2*time.Second, func() bool { return counted() > before }) {
			t.Fatalf("%s: the request was not counted", c.name)
		}
		time.Sleep(20 * time.Millisecond) // a second count, if any, would come right after
		if got := counted() - before; got != 1 {
			t.Errorf("%s: counted %v times in kvroute_router_requests_total, want once", c.name, got)
		}
	}
}

// FuzzRespBody: any bytes as a chunked body: the decoder never panics, uses no more than
// it is given, and whatever it takes as a whole body, net/http's chunked reader reads
// the same.
func FuzzRespBody(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\n"), 3)
	f.Add([]byte("5;x\r\nhello\r\n0\r\nA: b\r\n\r\n"), 7)
	f.Add([]byte("fffffffffffffff\r\n"), 1)
	f.Fuzz(func(t *testing.T, wire []byte, split int) {
		if split < 0 || split > len(wire) {
			split = len(wire) / 2
		}
		b := respBody{mode: bodyChunked}
		out, used, err := b.feed(nil, wire[:split])
		if used > split {
			t.Fatalf("used %d of %d", used, split)
		}
		if err == nil && !b.done {
			var used2 int
			out, used2, err = b.feed(out, wire[split:])
			used += used2
		}
		if err != nil || !b.done {
			return
		}
		want, rerr := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(wire[:used])))
		if rerr != nil {
			// net/http is stricter about chunk extensions and bare LFs in places; the
			// decoder only has to agree on what both accept.
			return
		}
		if !bytes.Equal(out, want) {
			t.Fatalf("body %q, net/http reads %q", out, want)
		}
	})
}

// BenchmarkDataPlaneChat: non-streamed chat requests through each data plane, the
// worker a fasthttp server on loopback, with round_robin and with cache_aware (approx
// tokenization); conns=1 is one keep-alive connection sending request after request,
// conns=16 sixteen at once (a closed loop, as kvbench proxy's peak). On the event loop it
// reports loop-ns/op, the loops' own thread CPU per request (kernel and user, from
// /proc/self/task/TID/schedstat): the data plane's cost without the client's and the
// worker's, which share the process. With -memprofile it shows what the request path
// allocates; the proxy CPU per request against nginx is kvbench proxy's
// (bench/RESULTS.md, Hot path).
func BenchmarkDataPlaneChat(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("the event loop runs on Linux only")
	}
	completion := []byte(`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"` + strings.Repeat("a", 1800) + `"}}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}`)
	ws := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		switch string(ctx.Path()) {
		case "/v1/models":
			ctx.SetBodyString(`{"object":"list","data":[{"id":"m","object":"model"}]}`)
		case "/v1/chat/completions":
			ctx.SetContentType("application/json")
			ctx.SetBody(completion)
		}
	}}
	var workers []configs.Worker
	for i := range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		go func() { _ = ws.Serve(ln) }()
		workers = append(workers, configs.Worker{ID: fmt.Sprintf("w%d", i), URL: "http://" + ln.Addr().String(), MaxConns: 64, Role: configs.RoleBoth})
	}
	b.Cleanup(func() { _ = ws.Shutdown() })
	body := []byte(`{"model":"m","messages":[{"role":"system","content":"` + strings.Repeat("s", 900) + `"},{"role":"user","content":"` + strings.Repeat("x", 1000) + `"}]}`)
	for _, dp := range []string{configs.DataPlaneFastHTTP, configs.DataPlaneEventLoop} {
		for _, policy := range []string{"round_robin", "cache_aware"} {
			for _, conns := range []int{1, 16} {
				b.Run(fmt.Sprintf("plane=%s/policy=%s/conns=%d", dp, policy, conns), func(b *testing.B) {
					cfg := configs.Default()
					cfg.Listen = "127.0.0.1:0"
					cfg.Policy = policy
					cfg.Tokenize.Mode = "approx"
					cfg.DataPlane = dp
					cfg.DataPlaneLoops = 1
					cfg.Workers = workers
					ix, err := indexer.New(indexer.Options{})
					if err != nil {
						b.Fatal(err)
					}
					tr := startRouterOpts(b, &cfg, func(o *Options) { o.Index, o.Hasher = ix, blockhash.Approx{} }, nil, nil)
					benchChat(b, tr, body, conns)
				})
			}
		}
	}
}

// benchChat sends b.N copies of body to tr from conns keep-alive connections and, on the
// event loop, reports the loops' thread CPU per request.
func benchChat(b *testing.B, tr *testRouter, body []byte, conns int) {
	hc := &fasthttp.HostClient{Addr: strings.TrimPrefix(tr.url, "http://"), MaxConns: conns}
	var next atomic.Int64
	// One request first: Serve has started the data plane when it is answered.
	if code, _, err := fasthttp.Post(nil, tr.url+"/v1/chat/completions", nil); err != nil || code == 0 {
		b.Fatalf("warm-up request: %d %v", code, err)
	}
	b.ReportAllocs()
	cpu0 := loopsCPU(b, tr)
	b.ResetTimer()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI(tr.url + "/v1/chat/completions")
			req.Header.SetMethod("POST")
			req.SetBodyRaw(body)
			for next.Add(1) <= int64(b.N) {
				if err := hc.Do(req, resp); err != nil || resp.StatusCode() != 200 {
					errs <- fmt.Errorf("status %d, err %w", resp.StatusCode(), err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	if cpu := loopsCPU(b, tr); cpu >= 0 {
		b.ReportMetric(float64(cpu-cpu0)/float64(b.N), "loop-ns/op")
	}
}

// dataPlaneOf returns tr's event-loop data plane, nil without one. Call it once tr has
// answered a request: Serve has started the data plane then, and dpOnce orders this read
// after its write (called before Serve, it would keep Serve from starting one).
func dataPlaneOf(tr *testRouter) *dataPlane {
	tr.srv.dpOnce.Do(func() {})
	return tr.srv.dp
}

// loopsCPU is the CPU time of tr's event loops' threads in nanoseconds, -1 without an
// event loop.
func loopsCPU(b *testing.B, tr *testRouter) int64 {
	dp := dataPlaneOf(tr)
	if dp == nil {
		return -1
	}
	var sum int64
	for i, tid := range dp.threads() {
		for tid == 0 { // the loop is about to start
			time.Sleep(time.Millisecond)
			tid = dp.threads()[i]
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/schedstat", tid))
		if err != nil {
			b.Fatal(err)
		}
		f := strings.Fields(string(raw))
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			b.Fatalf("schedstat %q: %v", raw, err)
		}
		sum += ns
	}
	return sum
}

// FuzzDataPlaneInput: any bytes a client sends, then closes its side, on a connection
// the event loop holds: the loop answers or hands off, closes the connection within
// the timeouts, gives back the body budget and the connection slot, ends every request
// it began once (its busy count back to 0), and serves the next client as before. A
// panic in a loop would end the test process.
func FuzzDataPlaneInput(f *testing.F) {
	if runtime.GOOS != "linux" {
		f.Skip("the event loop runs on Linux only")
	}
	req := func(head, body string) []byte {
		return fmt.Appendf(nil, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s", head, len(body), body)
	}
	f.Add(req("", chatBody))
	f.Add(req("", streamBody))
	f.Add(append(req("", chatBody), req("Connection: close\r\n", streamBody)...))
	f.Add(req("Transfer-Encoding: chunked\r\n", chatBody))
	f.Add(req("Content-Length: 5\r\n", chatBody))
	f.Add([]byte("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{"))
	f.Add([]byte("POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"model\""))
	f.Add([]byte("GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("POST /v1/embeddings HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}"))
	f.Add([]byte("\r\n\r\n\r\n"))
	// A head whose body never comes: its budget must come back (it did not, once).
	f.Add([]byte("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"model\":"))
	fw := newFakeWorker(f, "m")
	cfg := testConfig(fw)
	cfg.DataPlane = configs.DataPlaneEventLoop
	cfg.Workers[0].Role = configs.RoleBoth
	cfg.MaxBodyBytes = 64 << 10
	cfg.Limits.HeaderTimeout = time.Second
	cfg.Limits.BodyTimeout = time.Second
	tr := startRouter(f, cfg)
	addr := strings.TrimPrefix(tr.url, "http://")
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(in); err != nil {
			return // the router closed early: fine
		}
		_ = c.(*net.TCPConn).CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("the connection was not closed: %v", err)
		}
		dp := dataPlaneOf(tr)
		if !poll.Until(5*time.Second, func() bool {
			return tr.srv.budget.used.Load() == 0 && tr.srv.openConn.Load() == 0 && dp.busy.Load() == 0
		}) {
			t.Fatalf("after %q: body budget %d bytes, %d connections and %d requests still held", in, tr.srv.budget.used.Load(), tr.srv.openConn.Load(), dp.busy.Load())
		}
		resp, body := post(t, tr.url+"/v1/chat/completions", chatBody, "Connection", "close")
		if resp.StatusCode != 200 {
			t.Fatalf("the next client: %d %s", resp.StatusCode, body)
		}
		poll.CheckFor(t, 5*time.Second, "its connection slot back", func() bool { return tr.srv.openConn.Load() == 0 })
	})
}

// TestDataPlaneCloseDelimitedStream: a worker's stream without Content-Length or
// chunked framing ends when the worker closes the connection (RFC 9112 section 6.3
// (8)); the client gets exactly its events, then the end of the chunked body.
func TestDataPlaneCloseDelimitedStream(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the event loop runs on Linux only")
	}
	events := "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n"
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("/v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"+events)
		_ = c.Close()
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	cfg := testConfig()
	cfg.DataPlane = configs.DataPlaneEventLoop
	cfg.Workers = []configs.Worker{{ID: "w0", URL: srv.URL, MaxConns: 64, Models: []string{"m"}, Role: configs.RoleBoth}}
	tr := startRouter(t, cfg)
	for i := range 3 {
		resp, body := post(t, tr.url+"/v1/chat/completions", streamBody)
		if resp.StatusCode != 200 || string(body) != events {
			t.Fatalf("stream %d: %d %q, want %q", i, resp.StatusCode, body, events)
		}
	}
	if v := testutil.ToFloat64(tr.srv.metrics.handoffs.WithLabelValues(handoffRequest)); v != 0 {
		t.Errorf("handoffs = %v", v)
	}
}
