package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/configs/tlstest"
)

// keyWorker is a loopback worker that records the Authorization header of every
// request by path.
type keyWorker struct {
	mu   sync.Mutex
	auth map[string][]string // path -> Authorization values seen
}

func (k *keyWorker) handler(redirectTo string) http.Handler {
	k.auth = map[string][]string{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k.mu.Lock()
		k.auth[r.URL.Path] = append(k.auth[r.URL.Path], r.Header.Get("Authorization"))
		k.mu.Unlock()
		switch r.URL.Path {
		case "/redirect":
			http.Redirect(w, r, redirectTo, http.StatusFound)
		case "/v1/models":
			fmt.Fprint(w, `{"data":[{"id":"m"}]}`)
		default:
			fmt.Fprint(w, "ok")
		}
	})
}

func (k *keyWorker) seen(path string) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.auth[path]...)
}

func trapListener(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return "http://" + ln.Addr().String(), &n
}

func poolFor(t *testing.T, mutate func(*configs.Config), urls ...string) (*Pool, *prometheus.Registry) {
	t.Helper()
	cfg := configs.Default()
	cfg.Health.Timeout = 2 * time.Second
	for i, u := range urls {
		cfg.Workers = append(cfg.Workers, configs.Worker{ID: fmt.Sprintf("w%d", i), URL: u, MaxConns: 4})
	}
	if mutate != nil {
		mutate(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	p, err := NewPool(&cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.CloseIdleConnections)
	return p, reg
}

func TestWorkerKeyOnEveryPoolRequest(t *testing.T) {
	trapURL, trapped := trapListener(t)
	kw := &keyWorker{}
	srv := httptest.NewServer(kw.handler(trapURL + "/stolen"))
	defer srv.Close()
	t.Setenv("KVROUTE_TEST_WORKER_KEY", "w-key-123")
	p, _ := poolFor(t, func(c *configs.Config) { c.Workers[0].APIKeyEnv = "KVROUTE_TEST_WORKER_KEY" }, srv.URL)
	p.Start(context.Background())
	w := p.Workers()[0]
	if !w.Available() {
		t.Fatalf("worker not available: %+v", w.State())
	}
	// Forwarded requests: the router calls Authorize on its copy of the client's request.
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	req.SetRequestURI(w.URL + "/v1/chat/completions")
	req.Header.SetMethod("POST")
	w.Authorize(&req.Header)
	if err := w.Client(false).DoTimeout(req, resp, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	client := p.HTTPClient()
	for _, path := range []string{"/metrics", "/tokenize", "/redirect"} {
		r, err := client.Get(w.URL + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
		if path == "/redirect" && r.StatusCode != http.StatusFound {
			t.Errorf("redirect: status %d, want the 302 itself (never followed)", r.StatusCode)
		}
	}
	for _, path := range []string{"/health", "/v1/models", "/v1/chat/completions", "/metrics", "/tokenize", "/redirect"} {
		got := kw.seen(path)
		if len(got) == 0 {
			t.Errorf("%s: never requested", path)
		}
		for _, a := range got {
			if a != "Bearer w-key-123" {
				t.Errorf("%s: Authorization %q, want the worker's key", path, a)
			}
		}
	}
	// Anything but a pool worker is refused before a connection is made.
	for _, u := range []string{trapURL + "/metrics", strings.Replace(srv.URL, "127.0.0.1", "localhost", 1) + "/x", "https" + strings.TrimPrefix(srv.URL, "http") + "/metrics"} {
		if _, err := client.Get(u); !errors.Is(err, ErrNotAWorker) {
			t.Errorf("GET %s: err = %v, want ErrNotAWorker", u, err)
		}
	}
	if n := trapped.Load(); n != 0 {
		t.Errorf("the pool's client connected to a non-worker %d times", n)
	}
}

func TestWorkerKeyRefusedIsExplained(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer right" {
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	defer srv.Close()
	p, _ := poolFor(t, func(c *configs.Config) { c.Upstream.APIKey = "wrong" }, srv.URL)
	p.Start(context.Background())
	st := p.Workers()[0].State()
	if st.Available || !strings.Contains(st.LastError, "status 401") || !strings.Contains(st.LastError, "refused the router's credentials") {
		t.Errorf("state %+v, want unavailable with the credentials hint", st)
	}
}

// tlsWorker starts an https worker on loopback with a certificate for 127.0.0.1 signed
// by ca; clientCA, when set, makes it require client certificates signed by it.
func tlsWorker(t *testing.T, ca *tlstest.CA, clientCA *tlstest.CA) (*httptest.Server, *keyWorker) {
	t.Helper()
	kw := &keyWorker{}
	srv := httptest.NewUnstartedServer(kw.handler("/"))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "127.0.0.1").TLS}, MinVersion: tls.VersionTLS12}
	if clientCA != nil {
		srv.TLS.ClientCAs = clientCA.Pool()
		srv.TLS.ClientAuth = tls.RequireAndVerifyClientCert
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the failing handshakes are the point
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, kw
}

func TestWorkerTLS(t *testing.T) {
	dir := t.TempDir()
	ca, other := tlstest.NewCA(t, "workers CA"), tlstest.NewCA(t, "someone else")
	caFile, otherFile := ca.WriteCA(t, dir, "ca.pem"), other.WriteCA(t, dir, "other.pem")
	clientCert, clientKey := ca.Issue(t, "kvroute").Write(t, dir, "client")
	srv, kw := tlsWorker(t, ca, nil)

	t.Run("right CA", func(t *testing.T) {
		p, _ := poolFor(t, func(c *configs.Config) {
			c.Upstream.TLS.CAFile = caFile
			c.Upstream.APIKey = "k"
		}, srv.URL)
		p.Start(context.Background())
		w := p.Workers()[0]
		if !w.Available() {
			t.Fatalf("not available over TLS: %+v", w.State())
		}
		r, err := p.HTTPClient().Get(w.URL + "/metrics")
		if err != nil {
			t.Fatalf("net/http client over TLS: %v", err)
		}
		r.Body.Close()
		if got := kw.seen("/metrics"); len(got) != 1 || got[0] != "Bearer k" {
			t.Errorf("/metrics over TLS: Authorization %q", got)
		}
	})

	t.Run("wrong CA is a worker failure with a clear error", func(t *testing.T) {
		p, _ := poolFor(t, func(c *configs.Config) { c.Upstream.TLS.CAFile = otherFile }, srv.URL)
		p.Start(context.Background())
		w := p.Workers()[0]
		st := w.State()
		if st.Available || !strings.Contains(st.LastError, "TLS to 127.0.0.1") || !strings.Contains(st.LastError, "certificate signed by unknown authority") {
			t.Errorf("state %+v, want unavailable with a TLS error", st)
		}
		if v := testutil.ToFloat64(p.metrics.checks.WithLabelValues("w0", "fail")); v != 1 {
			t.Errorf("health_checks{fail} = %v", v)
		}
		// A forwarded request fails the same way, as a TLS error (metric kind "tls").
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		req.SetRequestURI(w.URL + "/v1/chat/completions")
		err := w.Client(true).DoTimeout(req, resp, 5*time.Second)
		if err == nil || !IsTLSError(err) {
			t.Errorf("forwarded request: err = %v, want a TLS error", err)
		}
		if _, err := p.HTTPClient().Get(w.URL + "/metrics"); err == nil || !IsTLSError(err) || !strings.Contains(err.Error(), "TLS to") {
			t.Errorf("net/http client: err = %v, want an explained TLS error", err)
		}
	})

	t.Run("server name", func(t *testing.T) {
		// The certificate names 127.0.0.1 only: another name fails, even with the right CA.
		p, _ := poolFor(t, func(c *configs.Config) {
			c.Workers[0].TLS = &configs.UpstreamTLS{CAFile: caFile, ServerName: "gpu-a.internal"}
		}, srv.URL)
		p.Start(context.Background())
		if st := p.Workers()[0].State(); st.Available || !strings.Contains(st.LastError, "gpu-a.internal") {
			t.Errorf("state %+v, want a name mismatch", st)
		}
	})

	t.Run("insecure_skip_verify", func(t *testing.T) {
		p, _ := poolFor(t, func(c *configs.Config) { c.Upstream.TLS.InsecureSkipVerify = true }, srv.URL)
		p.Start(context.Background())
		if st := p.Workers()[0].State(); !st.Available {
			t.Errorf("insecure_skip_verify: %+v", st)
		}
	})

	mtls, _ := tlsWorker(t, ca, ca)
	t.Run("client certificate", func(t *testing.T) {
		without, _ := poolFor(t, func(c *configs.Config) { c.Upstream.TLS.CAFile = caFile }, mtls.URL)
		without.Start(context.Background())
		// With TLS 1.3 the client's handshake completes before the server checks the
		// certificate, so the refusal shows as a closed connection, not a TLS error.
		if st := without.Workers()[0].State(); st.Available || st.LastError == "" {
			t.Errorf("without a client certificate: %+v", st)
		}
		with, _ := poolFor(t, func(c *configs.Config) {
			c.Upstream.TLS = configs.UpstreamTLS{CAFile: caFile, CertFile: clientCert, KeyFile: clientKey}
		}, mtls.URL)
		with.Start(context.Background())
		if st := with.Workers()[0].State(); !st.Available {
			t.Errorf("with a client certificate: %+v", st)
		}
	})
}
