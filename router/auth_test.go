package router

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/upstream"
)

func TestParseBearer(t *testing.T) {
	for _, c := range []struct {
		in, tok string
		ok      bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer abc", "abc", true},
		{"BEARER   abc  ", "abc", true},
		{"\tBearer\tabc", "abc", true},
		{"Bearer", "", false},
		{"Bearer ", "", false},
		{"Bearerabc", "", false},
		{"Basic YWJjOmRlZg==", "", false},
		{"abc", "", false},
		{"", "", false},
	} {
		tok, ok := parseBearer([]byte(c.in))
		if ok != c.ok || string(tok) != c.tok {
			t.Errorf("parseBearer(%q) = %q, %v; want %q, %v", c.in, tok, ok, c.tok, c.ok)
		}
	}
}

// rawRequest sends one HTTP/1.1 request written by hand (header names exactly as given)
// and returns the response.
func rawRequest(t *testing.T, addr, method, path, body string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var b strings.Builder
	b.WriteString(method + " " + path + " HTTP/1.1\r\nHost: router\r\nConnection: close\r\n")
	for i := 0; i+1 < len(hdr); i += 2 {
		b.WriteString(hdr[i] + ": " + hdr[i+1] + "\r\n")
	}
	if body != "" {
		b.WriteString("Content-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n")
	}
	b.WriteString("\r\n" + body)
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, _ := io.ReadAll(resp.Body)
	return resp, got
}

func authConfig(t *testing.T, fw *fakeWorker) *configs.Config {
	t.Helper()
	t.Setenv("KVROUTE_TEST_KEY_B", "key-bbbb-2222")
	cfg := testConfig(fw)
	cfg.Auth.Keys = []configs.APIKey{{Name: "a", Key: "key-aaaa-1111"}, {Name: "b", KeyEnv: "KVROUTE_TEST_KEY_B"}}
	return cfg
}

func TestInboundAPIKeys(t *testing.T) {
	fw := newFakeWorker(t, "m")
	tr := startRouter(t, authConfig(t, fw))
	addr := strings.TrimPrefix(tr.url, "http://")
	for _, c := range []struct {
		name   string
		path   string
		hdr    []string
		status int
		code   string
	}{
		{"no key", "/v1/chat/completions", nil, 401, "invalid_api_key"},
		{"wrong key", "/v1/chat/completions", []string{"Authorization", "Bearer key-aaaa-111"}, 401, "invalid_api_key"},
		{"other scheme", "/v1/chat/completions", []string{"Authorization", "Basic a2V5LWFhYWEtMTExMQ=="}, 401, "invalid_api_key"},
		{"key a", "/v1/chat/completions", []string{"Authorization", "Bearer key-aaaa-1111"}, 200, ""},
		{"key b from env, lower-case header and scheme", "/v1/chat/completions", []string{"authorization", "bearer key-bbbb-2222"}, 200, ""},
		{"api-key header", "/v1/chat/completions", []string{"api-key", "key-aaaa-1111"}, 200, ""},
		{"API-Key header, wrong bearer", "/v1/chat/completions", []string{"Authorization", "Bearer nope", "API-Key", "key-bbbb-2222"}, 200, ""},
		{"models need a key", "/v1/models", nil, 401, "invalid_api_key"},
		{"unknown paths need a key", "/v2/anything", nil, 401, "invalid_api_key"},
	} {
		method := "POST"
		body := chatBody
		if c.path != "/v1/chat/completions" {
			method, body = "GET", ""
		}
		resp, got := rawRequest(t, addr, method, c.path, body, c.hdr...)
		if c.status != 200 {
			checkOpenAIError(t, resp, got, c.status, c.code)
			if !bytes.Contains(got, []byte(`"type":"invalid_request_error","param":null,"code":"invalid_api_key"`)) {
				t.Errorf("%s: body %s", c.name, got)
			}
			if resp.Header.Get("WWW-Authenticate") != `Bearer realm="kvroute"` {
				t.Errorf("%s: WWW-Authenticate = %q", c.name, resp.Header.Get("WWW-Authenticate"))
			}
			if bytes.Contains(got, []byte("key-aaaa")) {
				t.Errorf("%s: the answer echoes a key: %s", c.name, got)
			}
			continue
		}
		if resp.StatusCode != 200 {
			t.Errorf("%s: status %d, body %s", c.name, resp.StatusCode, got)
			continue
		}
		// The worker never sees the client's credentials.
		fw.mu.Lock()
		for k := range fw.lastHdr {
			if strings.EqualFold(k, "Authorization") || strings.EqualFold(k, "api-key") {
				t.Errorf("%s: the worker got the client's %s header", c.name, k)
			}
		}
		fw.mu.Unlock()
	}
	for _, p := range []string{"/health", "/ready", "/metrics"} {
		if resp, body := rawRequest(t, addr, "GET", p, ""); resp.StatusCode != 200 {
			t.Errorf("GET %s without a key: %d %s", p, resp.StatusCode, body)
		}
	}
	g := tr.srv.gate
	for r, want := range map[reason]float64{reasonMissingKey: 4, reasonInvalidKey: 1} {
		if got := testutil.ToFloat64(g.rejected[r]); got != want {
			t.Errorf("rejected{%s} = %v, want %v", reasonLabels[r], got, want)
		}
	}
	if a, b := testutil.ToFloat64(g.keys[0].requests), testutil.ToFloat64(g.keys[1].requests); a != 2 || b != 2 {
		t.Errorf("api_key_requests a=%v b=%v, want 2 and 2", a, b)
	}
	if fw.requests.Load() != 4 {
		t.Errorf("the worker got %d requests, want the 4 authorized ones", fw.requests.Load())
	}
}

// Without inbound auth a client's Authorization reaches the worker unless the worker
// has a key of its own, which then replaces it in whatever case the client wrote it.
func TestForwardedAuthorization(t *testing.T) {
	fw := newFakeWorker(t, "m")
	plain := startRouter(t, testConfig(fw))
	rawRequest(t, strings.TrimPrefix(plain.url, "http://"), "POST", "/v1/chat/completions", chatBody, "Authorization", "Bearer client-token")
	fw.mu.Lock()
	if got := fw.lastHdr.Values("Authorization"); len(got) != 1 || got[0] != "Bearer client-token" {
		t.Errorf("no keys anywhere: worker got Authorization %q, want the client's", got)
	}
	fw.mu.Unlock()

	fw2 := newFakeWorker(t, "m")
	cfg := testConfig(fw2)
	cfg.Workers[0].APIKey = "worker-secret"
	keyed := startRouter(t, cfg)
	rawRequest(t, strings.TrimPrefix(keyed.url, "http://"), "POST", "/v1/chat/completions", chatBody,
		"authorization", "Bearer client-token", "AUTHORIZATION", "Bearer other")
	fw2.mu.Lock()
	defer fw2.mu.Unlock()
	if got := fw2.lastHdr.Values("Authorization"); len(got) != 1 || got[0] != "Bearer worker-secret" {
		t.Errorf("worker key: worker got Authorization %q, want only its own key", got)
	}
}

func TestMetricsFollowsAdminPolicy(t *testing.T) {
	fw := newFakeWorker(t, "m")
	tr := startRouter(t, testConfig(fw))
	addr := strings.TrimPrefix(tr.url, "http://")
	// Loopback listener: open, token or not.
	tr.srv.gate.setListener(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, "admin-tok")
	if resp, _ := rawRequest(t, addr, "GET", "/metrics", ""); resp.StatusCode != 200 {
		t.Errorf("loopback /metrics: %d", resp.StatusCode)
	}
	// Beyond loopback without a token: open as before.
	tr.srv.gate.setListener(&net.TCPAddr{IP: net.IPv4(10, 1, 2, 3)}, "")
	if resp, _ := rawRequest(t, addr, "GET", "/metrics", ""); resp.StatusCode != 200 {
		t.Errorf("no admin token /metrics: %d", resp.StatusCode)
	}
	// Beyond loopback with a token: the token is needed.
	tr.srv.gate.setListener(&net.TCPAddr{IP: net.IPv4(10, 1, 2, 3)}, "admin-tok")
	resp, body := rawRequest(t, addr, "GET", "/metrics", "")
	checkOpenAIError(t, resp, body, 401, "invalid_api_key")
	resp, body = rawRequest(t, addr, "GET", "/metrics", "", "Authorization", "Bearer wrong")
	checkOpenAIError(t, resp, body, 401, "invalid_api_key")
	if resp, _ := rawRequest(t, addr, "GET", "/metrics", "", "authorization", "Bearer admin-tok"); resp.StatusCode != 200 {
		t.Errorf("/metrics with the admin token: %d", resp.StatusCode)
	}
	if resp, _ := rawRequest(t, addr, "GET", "/health", ""); resp.StatusCode != 200 {
		t.Errorf("/health: %d", resp.StatusCode)
	}
	if v := testutil.ToFloat64(tr.srv.gate.rejected[reasonMetricsToken]); v != 2 {
		t.Errorf("rejected{metrics_unauthorized} = %v, want 2", v)
	}
}

// benchServer is a Server with no listener, for the gate's benchmark and allocation
// test: with five inbound keys and a per-key rate limit, or with neither (the default
// configuration) when off is true.
func benchServer(tb testing.TB, off ...bool) *Server {
	tb.Helper()
	cfg := configs.Default()
	cfg.Workers = []configs.Worker{{ID: "w", URL: "http://127.0.0.1:1", MaxConns: 1}}
	if len(off) == 0 || !off[0] {
		for _, k := range []string{"k0-000000", "k1-111111", "k2-222222", "k3-333333", "k4-444444"} {
			cfg.Auth.Keys = append(cfg.Auth.Keys, configs.APIKey{Name: k[:2], Key: configs.Secret(k)})
		}
		cfg.RateLimit.RequestsPerSecond = 1e12
	}
	pool, err := upstream.NewPool(&cfg, nil)
	if err != nil {
		tb.Fatal(err)
	}
	s, err := New(Options{Config: &cfg, Pool: pool, Registerer: prometheus.NewRegistry()})
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func benchCtx() *fasthttp.RequestCtx {
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.DisableNormalizing()
	ctx.Request.Header.SetMethod("POST")
	ctx.Request.SetRequestURI("/v1/chat/completions")
	ctx.Request.Header.Set("Content-Type", "application/json")
	ctx.Request.Header.Set("User-Agent", "OpenAI/Python 1.50.0")
	ctx.Request.Header.Set("X-Stainless-Lang", "python")
	ctx.Request.Header.Set("authorization", "Bearer k4-444444")
	return &ctx
}

func TestAdmitDoesNotAllocate(t *testing.T) {
	s := benchServer(t)
	ctx := benchCtx()
	if !s.admit(ctx) {
		t.Fatalf("refused: %s", ctx.Response.Body())
	}
	if n := testing.AllocsPerRun(200, func() { s.admit(ctx) }); n != 0 {
		t.Errorf("admit allocates %v times per request", n)
	}
}

// BenchmarkAdmit measures the inbound gate of one request: "keys" checks the key among
// five and takes a token from the key's bucket, "off" is the default configuration
// (nothing to check). Compare runs with
// benchstat old.txt new.txt (go test -run '^$' -bench Admit -count 10 ./router/).
func BenchmarkAdmit(b *testing.B) {
	for _, c := range []struct {
		name string
		off  bool
	}{{"keys", false}, {"off", true}} {
		b.Run(c.name, func(b *testing.B) {
			s := benchServer(b, c.off)
			ctx := benchCtx()
			b.ReportAllocs()
			for b.Loop() {
				if !s.admit(ctx) {
					b.Fatal("refused")
				}
			}
		})
	}
}

// FuzzCredential feeds raw request headers to the header parser and the key check:
// nothing panics, a found token is part of the input without surrounding blanks, and
// only the configured key is accepted.
func FuzzCredential(f *testing.F) {
	for _, s := range []string{
		"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer k4-444444\r\n\r\n",
		"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nauthorization: bearer  wrong \r\napi-key: k0-000000\r\n\r\n",
		"GET /v1/models HTTP/1.1\r\nHost: r\r\nAuthorization: Basic dXNlcjpwYXNz\r\nAPI-KEY:\t k1-111111\t\r\n\r\n",
		"GET /v1/models HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer\r\nAuthorization: Bearer k2-222222\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	s := benchServer(f)
	f.Fuzz(func(t *testing.T, raw []byte) {
		var h fasthttp.RequestHeader
		h.DisableNormalizing()
		if err := h.Read(bufio.NewReader(bytes.NewReader(raw))); err != nil {
			return
		}
		v := headerFold(&h, "authorization")
		if tok, ok := parseBearer(v); ok {
			if len(tok) == 0 || !bytes.Contains(raw, tok) || tok[0] == ' ' || tok[len(tok)-1] == ' ' {
				t.Fatalf("token %q from %q", tok, v)
			}
		}
		i, r := s.gate.authenticate(&h)
		if i >= 0 {
			key := []byte(string(s.cfg.Auth.Keys[i].Key))
			if !bytes.Contains(raw, key) {
				t.Fatalf("accepted key %d, which is not in the input", i)
			}
		} else if r != reasonMissingKey && r != reasonInvalidKey {
			t.Fatalf("refused with reason %d", r)
		}
		delHeaderFold(&h, "authorization")
		delHeaderFold(&h, "api-key")
		if headerFold(&h, "authorization") != nil || headerFold(&h, "api-key") != nil {
			t.Fatal("a credential header survived delHeaderFold")
		}
	})
}
