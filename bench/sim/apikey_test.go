package sim

import (
	"context"
	"net/http"
	"testing"
)

func TestRequireAPIKey(t *testing.T) {
	cfg := DefaultConfig()
	cfg.RequireAPIKey = "worker-key"
	w, err := StartWorker(context.Background(), "w", cfg, "127.0.0.1", 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	get := func(path string, auth ...string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, w.URL()+path, nil)
		for _, a := range auth {
			req.Header.Add("Authorization", a)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		path string
		auth []string
		want int
	}{
		{"/health", nil, 401},
		{"/metrics", []string{"Bearer wrong"}, 401},
		{"/v1/models", []string{"Bearer worker-key", "Bearer worker-key"}, 401},
		{"/v1/models", []string{"worker-key"}, 401},
		{"/health", []string{"Bearer worker-key"}, 200},
		{"/v1/models", []string{"Bearer worker-key"}, 200},
		{"/sim/stats", nil, 200},
	} {
		if got := get(c.path, c.auth...); got != c.want {
			t.Errorf("GET %s with %q: status %d, want %d", c.path, c.auth, got, c.want)
		}
	}
	if n := w.Stats().Unauthorized; n != 4 {
		t.Errorf("Unauthorized = %d, want 4", n)
	}
}
