package stack

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/router/admin"
	"github.com/kvroute/kvroute/upstream"
)

// Beyond loopback the indexer's listener follows the admin API's token rules: /metrics
// and the index API need the token, /health does not.
func TestIndexerHandlerTokenRules(t *testing.T) {
	cfg := configs.Default()
	cfg.Workers = []configs.Worker{{ID: "a", URL: "http://127.0.0.1:1", Models: []string{"m"}, MaxConns: 1}}
	pool, err := upstream.NewPool(&cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	api, err := admin.New(admin.Options{Backend: admin.Backend{Pool: pool}, Token: "tok", RequireToken: true})
	if err != nil {
		t.Fatal(err)
	}
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("kvroute_x 1\n")) })
	h := indexerHandler(api, metrics)
	for _, tc := range []struct {
		method, path, token string
		want                int
	}{
		{"GET", "/health", "", 200},
		{"GET", "/metrics", "", 401},
		{"GET", "/metrics", "wrong", 401},
		{"GET", "/metrics", "tok", 200},
		{"GET", "/api/index/snapshot", "", 401},
		{"POST", "/api/index/query", "", 401},
		{"POST", "/api/index/query", "tok", 409}, // no querier in this backend
		{"GET", "/api/workers", "tok", 404},
		{"POST", "/v1/completions", "tok", 404},
	} {
		req := httptest.NewRequest(tc.method, tc.path, nil)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("%s %s (token %q): %d %s, want %d", tc.method, tc.path, tc.token, rec.Code, rec.Body, tc.want)
		}
	}
}
