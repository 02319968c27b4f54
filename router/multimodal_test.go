package router

import (
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvroute/kvroute/router/blockhash"
	"github.com/kvroute/kvroute/upstream"
)

// A chat holding an image is hashed only up to it and counted in
// kvroute_router_multimodal_truncated_total; a text chat is not counted.
func TestMultimodalTruncatedCounted(t *testing.T) {
	fw := newFakeWorker(t, "m")
	cfg := testConfig(fw)
	reg := prometheus.NewRegistry()
	pool, err := upstream.NewPool(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Options{Config: cfg, Pool: pool, Registerer: reg, Gatherer: reg,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Hasher: blockhash.Approx{}})
	if err != nil {
		t.Fatal(err)
	}
	pool.Start(t.Context())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown(t.Context()) })
	url := "http://" + ln.Addr().String() + "/v1/chat/completions"
	image := `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"` + strings.Repeat("look ", 40) +
		`"},{"type":"image_url","image_url":{"url":"https://x/cat.png"}}]}]}`
	for _, body := range []string{chatBody, image, image} {
		if resp, out := post(t, url, body); resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, out)
		}
	}
	if v := testutil.ToFloat64(srv.metrics.mmTruncated.WithLabelValues("m")); v != 2 {
		t.Fatalf("kvroute_router_multimodal_truncated_total{model=\"m\"} = %v, want 2", v)
	}
}
