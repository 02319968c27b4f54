package stack

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/configs/tlstest"
	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// metricSum returns the sum of every series of the named metric family in g.
func metricSum(t *testing.T, g prometheus.Gatherer, name string) float64 {
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
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// chatWithKey sends one chat request carrying an inbound key with client.
func chatWithKey(t *testing.T, client *http.Client, url, key, content string) (int, string) {
	t.Helper()
	body := fmt.Sprintf(`{"model":"m","max_tokens":4,"messages":[{"role":"user","content":%q}]}`, content)
	req, _ := http.NewRequest("POST", url+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Every request the router makes to a worker carries the worker's key: kvsim refuses
// any request without it (health, /v1/models, /metrics, /tokenize, inference), so the
// workers being available, scraped, asked to tokenize and serving proves it; the
// client's own inbound key never reaches them.
func TestStackSendsWorkerKeyEverywhere(t *testing.T) {
	t.Setenv("KVROUTE_TEST_UPSTREAM_KEY", "sim-key-42")
	t.Setenv("KVROUTE_TEST_INBOUND_KEY", "client-key-7")
	ss := startSimStack(t, 2, func(fc *sim.FleetConfig, cfg *configs.Config) {
		fc.Worker.RequireAPIKey = "sim-key-42"
		cfg.Upstream.APIKeyEnv = "KVROUTE_TEST_UPSTREAM_KEY"
		cfg.Auth.Keys = []configs.APIKey{{Name: "client", KeyEnv: "KVROUTE_TEST_INBOUND_KEY"}}
		cfg.Tokenize.Mode = "engine"
		cfg.CacheAware.MetricsInterval = 50 * time.Millisecond
		cfg.Admin.Listen = ""
	})
	for _, w := range ss.stack.Pool.Workers() {
		if !w.Available() {
			t.Fatalf("worker %s not available (health and discovery need the key): %+v", w.ID, w.State())
		}
	}
	for i := range 6 {
		if code, body := chatWithKey(t, http.DefaultClient, ss.url, "client-key-7", fmt.Sprintf("question %d about keys", i)); code != 200 {
			t.Fatalf("request %d: %d %s", i, code, body)
		}
	}
	if code, _ := chatWithKey(t, http.DefaultClient, ss.url, "", "no key"); code != 401 {
		t.Errorf("request without an inbound key: %d", code)
	}
	poll.CheckFor(t, 10*time.Second, "every worker scraped", func() bool {
		for _, w := range ss.stack.Pool.Workers() {
			if _, ok := w.Metrics(time.Minute); !ok {
				return false
			}
		}
		return true
	})
	reg := ss.stack.Registry
	if calls, errs := metricSum(t, reg, "kvroute_tokenize_calls_total"), metricSum(t, reg, "kvroute_tokenize_errors_total"); calls == 0 || errs != 0 {
		t.Errorf("tokenize calls %v errors %v: want calls and no error", calls, errs)
	}
	served := uint64(0)
	for _, w := range ss.fleet.Workers() {
		st := w.Stats()
		served += st.Requests
		if st.Unauthorized != 0 {
			t.Errorf("worker %s refused %d requests of the router for their key", w.ID(), st.Unauthorized)
		}
	}
	if served != 6 {
		t.Errorf("the workers served %d requests, want 6", served)
	}
}

// TLS on the API and admin listeners, with client certificates required (mTLS).
func TestStackListenersTLS(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "kvroute test CA")
	certFile, keyFile := ca.Issue(t, "127.0.0.1").Write(t, dir, "router")
	caFile := ca.WriteCA(t, dir, "clients.pem")
	client := ca.Issue(t, "client")
	stranger := tlstest.NewCA(t, "stranger").Issue(t, "client")
	ss := startSimStack(t, 1, func(_ *sim.FleetConfig, cfg *configs.Config) {
		cfg.TLS = configs.ListenerTLS{CertFile: certFile, KeyFile: keyFile, MinVersion: "1.2", ClientCAFile: caFile}
		cfg.Admin.Listen = "127.0.0.1:0"
		cfg.Tokenize.Mode = "approx"
		cfg.MaxBodyBytes = 256 << 10
	})
	base := strings.Replace(ss.url, "http://", "https://", 1)
	httpsClient := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: ca.Pool(), Certificates: certs, MinVersion: tls.VersionTLS12,
		}}}
	}
	good := httpsClient(client.TLS)
	defer good.CloseIdleConnections()
	if code, body := chatWithKey(t, good, base, "", "over TLS"); code != 200 {
		t.Fatalf("chat over mTLS: %d %s", code, body)
	}
	// A body over max_body_bytes is refused with a 413 the client reads: the router
	// closes the connection lingering below TLS (router/limits.go), not with a reset.
	for range 5 {
		resp, err := good.Post(base+"/v1/chat/completions", "application/json", bytes.NewReader(make([]byte, 4<<20)))
		if err != nil {
			t.Fatalf("oversized upload over TLS: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("oversized upload over TLS: status %d, want 413", resp.StatusCode)
		}
	}
	for _, url := range []string{base + "/health", "https://" + ss.stack.AdminAddr() + "/api/overview"} {
		resp, err := good.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.TLS == nil {
			t.Errorf("GET %s: status %d, TLS %v", url, resp.StatusCode, resp.TLS != nil)
		}
	}
	for name, c := range map[string]*http.Client{
		"no client certificate":        httpsClient(),
		"certificate of another CA":    httpsClient(stranger.TLS),
		"plain HTTP on the TLS socket": {Timeout: 10 * time.Second},
	} {
		for _, url := range []string{base + "/health", "https://" + ss.stack.AdminAddr() + "/api/overview"} {
			if name == "plain HTTP on the TLS socket" {
				url = strings.Replace(url, "https://", "http://", 1)
			}
			resp, err := c.Get(url)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					t.Errorf("%s: GET %s succeeded", name, url)
				}
			}
		}
		c.CloseIdleConnections()
	}
	// A client that trusts the system roots only does not trust the router.
	if _, err := (&http.Client{Timeout: 10 * time.Second}).Get(base + "/health"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client without the CA: err = %v, want a certificate error", err)
	}
}

// startStackOn runs a Stack for cfg on loopback until the test ends and returns its
// base URL.
func startStackOn(t *testing.T, cfg *configs.Config) (*Stack, string) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	st, err := NewStack(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- st.Run(ctx, ln, func() { close(ready) }) }()
	<-ready
	t.Cleanup(func() {
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stack: %v", err)
		}
	})
	return st, "http://" + ln.Addr().String()
}

// A kvsim worker behind TLS: forwarded requests, health checks, discovery, scrapes and
// /tokenize all go over verified TLS with the worker's key; with the wrong CA the
// worker is unavailable with a TLS error and requests get 503, not a panic.
func TestStackHTTPSWorker(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "workers CA")
	caFile := ca.WriteCA(t, dir, "ca.pem")
	otherFile := tlstest.NewCA(t, "other").WriteCA(t, dir, "other.pem")
	fc := sim.DefaultFleetConfig()
	fc.Worker.Model = "m"
	fc.Worker.RequireAPIKey = "tls-worker-key"
	fleet, err := sim.StartFleet(context.Background(), fc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fleet.Close() })
	target, _ := url.Parse(fleet.Workers()[0].URL())
	front := httptest.NewUnstartedServer(&httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(target) },
		FlushInterval: -1,
	})
	front.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "127.0.0.1").TLS}, MinVersion: tls.VersionTLS12}
	front.Config.ErrorLog = log.New(io.Discard, "", 0) // the wrong-CA handshakes fail on purpose
	front.StartTLS()
	t.Cleanup(front.Close)

	config := func(ca string) *configs.Config {
		cfg := configs.Default()
		cfg.Listen, cfg.Admin.Listen = "127.0.0.1:0", ""
		cfg.Tokenize.Mode = "engine"
		cfg.Tokenize.Timeout = 10 * time.Second
		cfg.CacheAware.MetricsInterval = 50 * time.Millisecond
		cfg.Health.Interval = 100 * time.Millisecond
		cfg.Upstream.APIKey = "tls-worker-key"
		cfg.Upstream.TLS.CAFile = ca
		cfg.Workers = []configs.Worker{{ID: "tls0", URL: front.URL, MaxConns: 16}}
		return &cfg
	}
	st, base := startStackOn(t, config(caFile))
	if w := st.Pool.Workers()[0]; !w.Available() {
		t.Fatalf("https worker not available: %+v", w.State())
	}
	for i := range 3 {
		if code, body := chatWithKey(t, http.DefaultClient, base, "", fmt.Sprintf("over TLS %d", i)); code != 200 {
			t.Fatalf("chat via an https worker: %d %s", code, body)
		}
	}
	poll.CheckFor(t, 10*time.Second, "the https worker scraped", func() bool {
		_, ok := st.Pool.Workers()[0].Metrics(time.Minute)
		return ok
	})
	if calls, errs := metricSum(t, st.Registry, "kvroute_tokenize_calls_total"), metricSum(t, st.Registry, "kvroute_tokenize_errors_total"); calls == 0 || errs != 0 {
		t.Errorf("tokenize over TLS: calls %v errors %v", calls, errs)
	}
	if s := fleet.Workers()[0].Stats(); s.Requests != 3 || s.Unauthorized != 0 {
		t.Errorf("worker stats %+v", s)
	}

	badCfg := config(otherFile)
	badCfg.Workers[0].Models = []string{"m"} // known, so the request is refused for want of a healthy worker
	bad, badBase := startStackOn(t, badCfg)
	st0 := bad.Pool.Workers()[0].State()
	if st0.Available || !strings.Contains(st0.LastError, "TLS to 127.0.0.1") || !strings.Contains(st0.LastError, "unknown authority") {
		t.Errorf("wrong CA: %+v", st0)
	}
	if code, body := chatWithKey(t, http.DefaultClient, badBase, "", "x"); code != 503 || !strings.Contains(body, "no_healthy_worker") {
		t.Errorf("chat with the worker's certificate unverifiable: %d %s", code, body)
	}
}
