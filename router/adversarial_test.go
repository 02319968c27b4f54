package router

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/router/admin"
)

// This file sends hostile HTTP/1.1 to a real router on loopback over raw TCP: framing
// that two HTTP parsers could read differently (request smuggling, RFC 9112 sections
// 6.1 and 6.3), oversize and slow requests, and checks that no error body ever carries
// bytes the client sent (they may be another client's, behind a load balancer that
// shares one connection between clients).

// secret marks request bytes that must never come back in an error body.
const secret = "SECRET-7f3a9c"

// rawResult is what a raw exchange produced: the responses read in order, and whether
// the router closed the connection after them.
type rawResult struct {
	resps  []*http.Response
	bodies []string
	closed bool
}

func (r rawResult) String() string {
	var b strings.Builder
	for i, resp := range r.resps {
		if i > 0 {
			b.WriteString(" then ")
		}
		fmt.Fprintf(&b, "%d", resp.StatusCode)
	}
	if len(r.resps) == 0 {
		b.WriteString("no response")
	}
	if r.closed {
		b.WriteString(", closed")
	} else {
		b.WriteString(", kept open")
	}
	for _, body := range r.bodies {
		if strings.Contains(body, secret) {
			b.WriteString(", body echoes " + secret)
			break
		}
	}
	return b.String()
}

// rawExchange writes payload to a new connection to addr and reads every response
// until the router closes the connection or stays silent for quiet.
func rawExchange(t *testing.T, addr, payload string, quiet time.Duration) rawResult {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, payload); err != nil {
		t.Fatal(err)
	}
	return readAll(t, c, quiet)
}

// readAll reads responses from c until it is closed or silent for quiet.
func readAll(t *testing.T, c net.Conn, quiet time.Duration) rawResult {
	t.Helper()
	var res rawResult
	br := bufio.NewReader(c)
	for {
		_ = c.SetReadDeadline(time.Now().Add(quiet))
		if _, err := br.Peek(1); err != nil {
			var ne net.Error
			res.closed = !errors.As(err, &ne) || !ne.Timeout()
			return res
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read response %d: %v", len(res.resps)+1, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		res.resps = append(res.resps, resp)
		res.bodies = append(res.bodies, string(b))
	}
}

// adversarialStack starts a router with the admin API under /admin (mounted as the
// composition root mounts it) in front of one fake worker, with small limits so the
// oversize cases stay cheap.
func adversarialStack(t *testing.T, mutate func(*configs.Config)) (*testRouter, *fakeWorker, string) {
	t.Helper()
	fw := newFakeWorker(t, "m")
	cfg := testConfig(fw)
	cfg.Admin.Listen, cfg.Admin.PathPrefix = "", "/admin"
	cfg.Tokenize.Mode = "approx"
	cfg.MaxBodyBytes = 64 << 10
	cfg.Limits.MaxHeaderBytes = 4096
	cfg.Limits.HeaderTimeout = 500 * time.Millisecond
	cfg.Limits.BodyTimeout = 500 * time.Millisecond
	if mutate != nil {
		mutate(cfg)
	}
	tr := startRouterWith(t, cfg, func(tr *testRouter) {
		h, err := admin.New(admin.Options{Backend: admin.Backend{Pool: tr.pool, Traffic: tr.srv, Gatherer: tr.reg}})
		if err != nil {
			t.Fatal(err)
		}
		tr.srv.MountAdmin(h)
	})
	return tr, fw, strings.TrimPrefix(tr.url, "http://")
}

// metricSum returns the sum of every series of the named metric family in g whose
// labels include each name/value pair of labels (none: every series).
func metricSum(t *testing.T, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
					return l.GetName() == labels[i] && l.GetValue() == labels[i+1]
				}) {
					continue series
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// pipelined is a second request, carrying another client's credentials, sent right
// after a malformed one: it must neither run nor be echoed.
const pipelined = "GET /admin/api/workers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret + "\r\n\r\n"

func TestAdversarialFraming(t *testing.T) {
	_, fw, addr := adversarialStack(t, nil)
	chunk := func(s string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(s), s) }
	big := strings.Repeat("b", 70<<10) // over max_body_bytes (64 KiB)
	cases := []struct {
		name    string
		payload string
		status  int    // the one response expected
		code    string // its OpenAI error code
	}{
		{"content-length and chunked (RFC 9112 6.3)",
			"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 49\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + pipelined,
			400, "invalid_request"},
		{"chunked then content-length",
			"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + pipelined,
			400, "invalid_request"},
		{"transfer-encoding xchunked",
			"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n" + pipelined,
			400, "invalid_request"},
		{"transfer-encoding chunked, identity",
			"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + pipelined,
			400, "invalid_request"},
		{"transfer-encoding identity with content-length",
			"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\nContent-Length: 0\r\n\r\n" + pipelined,
			400, "invalid_request"},
		{"two transfer-encoding fields",
			"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + pipelined,
			400, "invalid_request"},
		{"duplicate differing content-length",
			"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello" + pipelined,
			400, "invalid_request"},
		{"chunked on HTTP/1.0 (RFC 9112 6.1)",
			"POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + pipelined,
			400, "invalid_request"},
		{"bad chunk size",
			"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz" + secret + "\r\n\r\n" + pipelined,
			400, "invalid_request"},
		{"invalid header name",
			"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX(" + secret + "): 1\r\nContent-Length: 0\r\n\r\n" + pipelined,
			400, "invalid_request"},
		{"headers over max_header_bytes",
			"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat(secret, 600) + "\r\n\r\n",
			431, "request_header_too_large"},
		{"content-length over max_body_bytes",
			"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + fmt.Sprint(len(big)) + "\r\n\r\n" + secret + big,
			413, "request_too_large"},
		{"chunked body over max_body_bytes",
			"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(secret+big) + chunk(big) + "0\r\n\r\n",
			413, "request_too_large"},
		{"truncated body then close",
			"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"" + secret,
			0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			payload := c.payload
			var res rawResult
			if c.status == 0 {
				// The client half-closes: the router must give up on the body and close.
				conn, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				_, _ = io.WriteString(conn, payload)
				_ = conn.(*net.TCPConn).CloseWrite()
				res = readAll(t, conn, 3*time.Second)
				t.Logf("result: %s", res)
				if !res.closed {
					t.Error("connection kept open")
				}
				for _, b := range res.bodies {
					if strings.Contains(b, secret) {
						t.Errorf("error body echoes request bytes: %s", b)
					}
				}
				return
			}
			res = rawExchange(t, addr, payload, 2*time.Second)
			t.Logf("result: %s", res)
			if len(res.resps) != 1 {
				t.Fatalf("%d responses (%s), want exactly one", len(res.resps), res)
			}
			checkOpenAIError(t, res.resps[0], []byte(res.bodies[0]), c.status, c.code)
			if !res.closed {
				t.Error("connection kept open after a refused request: what follows could run as a request")
			}
			if strings.Contains(res.bodies[0], secret) || strings.Contains(res.bodies[0], "Bearer") {
				t.Errorf("error body echoes request bytes: %s", res.bodies[0])
			}
		})
	}
	if n := fw.requests.Load(); n != 0 {
		t.Errorf("the worker got %d of these requests", n)
	}
}

// A client still sending a body the router refused gets the answer, not a reset: the
// router closes such a connection lingering (limits.go), reading and dropping what
// follows. Go's client writes the whole body before it reads, so a reset lands in its
// write and the 413 is lost.
func TestAdversarialRefusedUploadAnswered(t *testing.T) {
	tr, fw, _ := adversarialStack(t, nil)
	body := bytes.Repeat([]byte{'a'}, 4<<20)
	for i := range 20 {
		resp, err := http.Post(tr.url+"/v1/chat/completions", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		checkOpenAIError(t, resp, out, 413, "request_too_large")
	}
	if n := fw.requests.Load(); n != 0 {
		t.Errorf("the worker got %d of these requests", n)
	}
}

// A client that sends its headers a byte at a time is cut at header_timeout, with a
// 408 that echoes nothing, whatever it sends.
func TestAdversarialSlowloris(t *testing.T) {
	_, fw, addr := adversarialStack(t, nil)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret + "\r\nX-Pad: " + strings.Repeat("p", 200) + "\r\n\r\n"
	start := time.Now()
	go trickle(c, req, 10*time.Millisecond) // ~2.7 s for the headers, over the 500 ms timeout
	res := readAll(t, c, 3*time.Second)
	took := time.Since(start)
	t.Logf("result: %s after %v", res, took)
	if len(res.resps) != 1 {
		t.Fatalf("%d responses, want one", len(res.resps))
	}
	checkOpenAIError(t, res.resps[0], []byte(res.bodies[0]), 408, "request_timeout")
	if strings.Contains(res.bodies[0], secret) {
		t.Errorf("error body echoes request bytes: %s", res.bodies[0])
	}
	if took > 2500*time.Millisecond || !res.closed {
		t.Errorf("cut after %v (closed %v), want about the 500ms header timeout", took, res.closed)
	}
	if fw.requests.Load() != 0 {
		t.Error("the slow request reached the worker")
	}
}

// Fields named in Connection are hop-by-hop (RFC 9110 section 7.6.1): neither the
// worker nor the client sees them, nor the fixed hop-by-hop fields in any case.
func TestAdversarialConnectionNamedFields(t *testing.T) {
	_, fw, addr := adversarialStack(t, nil)
	for _, body := range []string{chatBody, streamBody} {
		res := rawExchange(t, addr, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Hop\r\n"+
			"X-Hop: "+secret+"\r\nte: trailers\r\nupgrade: h2c\r\nkeep-alive: timeout=5\r\nX-Kept: yes\r\n"+
			"Content-Type: application/json\r\nContent-Length: "+fmt.Sprint(len(body))+"\r\n\r\n"+body, 500*time.Millisecond)
		if len(res.resps) != 1 || res.resps[0].StatusCode != 200 {
			t.Fatalf("%s", res)
		}
		fw.mu.Lock()
		hdr := fw.lastHdr
		fw.mu.Unlock()
		for _, name := range []string{"X-Hop", "Te", "Upgrade", "Keep-Alive"} {
			if v := hdr.Get(name); v != "" {
				t.Errorf("the worker got %s: %s", name, v)
			}
		}
		if hdr.Get("X-Kept") != "yes" {
			t.Errorf("an end-to-end field was dropped: %v", hdr)
		}
		if v := res.resps[0].Header.Get("X-Worker-Hop"); v != "" {
			t.Errorf("the client got the worker's Connection-named field X-Worker-Hop: %s", v)
		}
	}
}

// An HTTP/1.0 client cannot parse chunked (RFC 9112 section 6.1): its stream comes
// close-delimited, as the worker sent it.
func TestAdversarialHTTP10Stream(t *testing.T) {
	_, _, addr := adversarialStack(t, nil)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(streamBody), streamBody)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	raw, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read until close: %v (%q)", err, raw)
	}
	head, body, ok := strings.Cut(string(raw), "\r\n\r\n")
	if !ok {
		t.Fatalf("no header block: %q", raw)
	}
	lower := strings.ToLower(head)
	t.Logf("head: %q", head)
	if !strings.Contains(head, " 200 ") || strings.Contains(lower, "transfer-encoding") || strings.Contains(lower, "content-length") ||
		!strings.Contains(lower, "connection: close") {
		t.Errorf("head %q: want 200, no Transfer-Encoding or Content-Length, Connection: close", head)
	}
	if !strings.HasPrefix(body, "data: ") || !strings.Contains(body, `"c3"`) || !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Errorf("body is not the raw event stream: %q", body)
	}
}

// The admin handler sees the path the request was routed by (fasthttp's normalised
// one), never redirects outside admin.path_prefix, and answers every 404 in JSON.
func TestAdversarialAdminPaths(t *testing.T) {
	_, _, addr := adversarialStack(t, nil)
	get := func(target string) (*http.Response, string) {
		t.Helper()
		res := rawExchange(t, addr, "GET "+target+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 2*time.Second)
		if len(res.resps) != 1 {
			t.Fatalf("GET %s: %s", target, res)
		}
		return res.resps[0], res.bodies[0]
	}
	for _, target := range []string{"/v1/../admin/api/overview", "/admin//api/overview", "/admin/api/./overview"} {
		resp, body := get(target)
		t.Logf("GET %s: %d %s", target, resp.StatusCode, resp.Header.Get("Content-Type"))
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || !strings.Contains(body, `"workers"`) {
			t.Errorf("GET %s: %d %s %.80s", target, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
	}
	for _, target := range []string{"/admin//x", "/admin/nothing", "/admin/api/nothing", "/v1/../admin/../admin/x", "/nothing"} {
		resp, body := get(target)
		t.Logf("GET %s: %d %s %s", target, resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Location"))
		if resp.StatusCode != 404 || resp.Header.Get("Content-Type") != "application/json" || !strings.HasPrefix(body, "{") {
			t.Errorf("GET %s: %d %s %s, want a JSON 404", target, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
	}
	// ServeMux's own redirect of a directory to its slash stays under the prefix.
	resp, _ := get("/admin/assets")
	if loc := resp.Header.Get("Location"); resp.StatusCode/100 == 3 && !strings.HasPrefix(loc, "/admin/") {
		t.Errorf("GET /admin/assets redirects to %q, outside the prefix", loc)
	}
}

// Request bodies in memory are bounded across connections: a body that does not fit
// in limits.max_inflight_body_bytes gets 503 with Retry-After once its headers (and
// fasthttp's first 8 KiB) are in, and the budget comes back when a request ends.
func TestAdversarialBodyBudget(t *testing.T) {
	st, _, addr := adversarialStack(t, func(cfg *configs.Config) {
		cfg.Limits.MaxInflightBodyBytes = 100 << 10
		cfg.Limits.BodyTimeout = 10 * time.Second
	})
	body := `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("x", 60000) + `"}]}`
	head := fmt.Sprintf("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(body))
	first, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	_, _ = io.WriteString(first, head+body[:10000]) // holds its 60 KB while the rest is awaited
	poll.CheckFor(t, 5*time.Second, "the first body reserved", func() bool {
		return metricSum(t, st.reg, "kvroute_router_inflight_body_bytes") == float64(len(body))
	})
	res := rawExchange(t, addr, head+body[:10000], 2*time.Second)
	t.Logf("second body while the first is in flight: %s", res)
	if len(res.resps) != 1 {
		t.Fatalf("%s", res)
	}
	checkOpenAIError(t, res.resps[0], []byte(res.bodies[0]), 503, "server_busy")
	if res.resps[0].Header.Get("Retry-After") == "" || !res.closed {
		t.Errorf("503 without Retry-After or connection kept open: %s %v", res, res.resps[0].Header)
	}
	// A chunked body reserves as it arrives: its first 64 KiB step does not fit either.
	chunked := "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
		fmt.Sprintf("%x\r\n%s\r\n", 10000, body[:10000])
	res = rawExchange(t, addr, chunked, 2*time.Second)
	t.Logf("chunked body while the first is in flight: %s", res)
	if len(res.resps) != 1 || res.resps[0].StatusCode != 503 || !res.closed {
		t.Errorf("chunked body over the budget: %s", res)
	}
	_, _ = io.WriteString(first, body[10000:])
	if r := readAll(t, first, 500*time.Millisecond); len(r.resps) != 1 || r.resps[0].StatusCode != 200 {
		t.Fatalf("the first request: %s", r)
	}
	poll.CheckFor(t, 5*time.Second, "the budget released", func() bool {
		return metricSum(t, st.reg, "kvroute_router_inflight_body_bytes") == 0
	})
	if res := rawExchange(t, addr, head+body, 500*time.Millisecond); len(res.resps) != 1 || res.resps[0].StatusCode != 200 {
		t.Errorf("a body after the first ended: %s", res)
	}
	if v := metricSum(t, st.reg, "kvroute_router_rejected_total"); v != 2 {
		t.Errorf("rejected_total = %v, want 2 (body_budget)", v)
	}
}

// A client that hangs up before its first byte is not retried on another worker once
// the first one times out: there is nobody left to answer.
func TestAdversarialNoRetryForGoneClient(t *testing.T) {
	a, b := newFakeWorker(t, "m"), newFakeWorker(t, "m")
	a.hang.Store(true)
	b.hang.Store(true)
	cfg := testConfig(a, b)
	cfg.Health.Interval = time.Hour
	cfg.Timeouts.FirstByte = 300 * time.Millisecond
	tr := startRouter(t, cfg)
	c := dialRouter(t, tr)
	fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(streamBody), streamBody)
	poll.CheckFor(t, 5*time.Second, "the first attempt", func() bool { return a.requests.Load()+b.requests.Load() == 1 })
	c.Close()
	if testDataPlane == configs.DataPlaneEventLoop {
		// The event loop sees the client go at once: the attempt is aborted (the worker's
		// request canceled) and counted on its worker, before any retry is due.
		poll.CheckFor(t, 5*time.Second, "the attempt aborted", func() bool { return a.canceled.Load()+b.canceled.Load() == 1 })
		w := "w0"
		if b.requests.Load() == 1 {
			w = "w1"
		}
		if v := testutil.ToFloat64(tr.srv.metrics.requests.WithLabelValues(w, "m", "499")); v != 1 {
			t.Errorf("requests_total{worker=%s,status=499} = %v", w, v)
		}
	} else {
		skipped := tr.srv.metrics.retriesSkipped.WithLabelValues("m")
		poll.CheckFor(t, 5*time.Second, "the retry skipped", func() bool { return testutil.ToFloat64(skipped) == 1 })
		if v := testutil.ToFloat64(tr.srv.metrics.requests.WithLabelValues("", "m", "499")); v != 1 {
			t.Errorf("requests_total{status=499} = %v", v)
		}
	}
	time.Sleep(2 * cfg.Timeouts.FirstByte) // past a retry's time
	if n := a.requests.Load() + b.requests.Load(); n != 1 {
		t.Errorf("the workers got %d requests, want 1: a gone client was retried", n)
	}
	// A client still there is retried as before.
	a.hang.Store(false)
	b.hang.Store(false)
	if resp, _ := post(t, tr.url+"/v1/chat/completions", streamBody); resp.StatusCode != 200 {
		t.Errorf("a normal request after: %d", resp.StatusCode)
	}
}
