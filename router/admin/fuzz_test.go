package admin_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/router/admin"
	"github.com/kvroute/kvroute/upstream"
)

// Any request the admin handler gets (method, path, query, credentials) is answered
// without a panic, every /api/ answer is a JSON document, and no request without the
// bearer token succeeds (2xx) when it is a write (any method but GET and HEAD) or when
// the handler requires the token for everything.
func FuzzHandler(f *testing.F) {
	for _, s := range [][4]string{
		{"GET", "/api/overview", "", ""},
		{"GET", "/api/decisions", "n=5", ""},
		{"GET", "/api/prefixes", "n=-1", ""},
		{"POST", "/api/workers/a/drain", "", "Bearer tok"},
		{"POST", "/api/workers/a%2Fb/clear", "", "Bearer tok"},
		{"POST", "/api/reload", "", "bearer tok"},
		{"GET", "/", "token=tok", ""},
		{"DELETE", "/api/workers/a", "", "Bearer"},
		{"GET", "/assets/../admin.go", "", ""},
		{"GET", "/api/index/snapshot", "", ""},
		{"POST", "/api/index/restore", "", "Bearer tok"},
		{"POST", "/api/index/query", "", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3], false)
		f.Add(s[0], s[1], s[2], s[3], true)
	}
	cfg := configs.Default()
	cfg.Workers = []configs.Worker{{ID: "a", URL: "http://127.0.0.1:1", Models: []string{"m"}, MaxConns: 1}}
	pool, err := upstream.NewPool(&cfg, nil)
	if err != nil {
		f.Fatal(err)
	}
	ix, err := indexer.New(indexer.Options{})
	if err != nil {
		f.Fatal(err)
	}
	b := admin.Backend{Pool: pool, Index: ix, Decisions: blankDecisions{}}
	open, err := admin.New(admin.Options{Backend: b, Token: "tok"})
	if err != nil {
		f.Fatal(err)
	}
	closed, err := admin.New(admin.Options{Backend: b, Token: "tok", RequireToken: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, path, query, auth string, requireToken bool) {
		u := &url.URL{Path: path, RawQuery: query}
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(method, " \t\r\n()<>@,;:\\\"/[]?={}") || method == "" {
			return // not something net/http would hand to a handler
		}
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Method, req.URL, req.RequestURI = method, u, u.RequestURI()
		authorized := false
		if auth != "" && !strings.ContainsAny(auth, "\r\n") {
			req.Header.Set("Authorization", auth)
			a := req.Header.Get("Authorization")
			authorized = len(a) > 7 && strings.EqualFold(a[:7], "bearer ") && strings.TrimSpace(a[7:]) == "tok"
		}
		h := open
		if requireToken {
			h = closed
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code < 200 || rec.Code >= 600 {
			t.Fatalf("%s %s: status %d", method, u, rec.Code)
		}
		ok := rec.Code < 300
		read := method == http.MethodGet || method == http.MethodHead || method == http.MethodPost && path == "/api/index/query"
		if ok && !authorized && !read {
			t.Fatalf("%s %s (Authorization %q): %d without the token", method, u, auth, rec.Code)
		}
		if ok && !authorized && requireToken {
			t.Fatalf("%s %s (Authorization %q): %d without the token on a handler that requires it", method, u, auth, rec.Code)
		}
		// A path ServeMux cleans ("/api/.") is redirected: 301 for GET and HEAD, 307 for
		// other methods (fuzz finding 226c49b544b5467e).
		redirect := rec.Code == http.StatusMovedPermanently || rec.Code == http.StatusTemporaryRedirect
		binary := rec.Header().Get("Content-Type") == "application/octet-stream" // GET /api/index/snapshot
		if strings.HasPrefix(path, "/api/") && !redirect && !binary && !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %s: %d, body not JSON: %.200q", method, u, rec.Code, rec.Body.Bytes())
		}
	})
}

// blankDecisions answers n empty decisions.
type blankDecisions struct{}

func (blankDecisions) Decisions(n int) []admin.Decision { return make([]admin.Decision, n) }

// Any POST /api/workers body decodes to an error or to a worker, never a panic; a
// decoded worker re-encodes to a body that decodes to the same worker.
func FuzzDecodeWorkerSpec(f *testing.F) {
	for _, s := range []string{
		`{"url":"http://10.0.0.1:8000","id":"gpu-0","events":"tcp://10.0.0.1:5557","replay":"tcp://10.0.0.1:5558","models":["m"],"dp_ranks":2}`,
		`{"url":"http://a:1"}`,
		`{"url":"http://a:1","weight":1}`,
		`{"url":"http://a:1"} {}`,
		`{"models":[null]}`,
		`[]`,
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		w, err := admin.DecodeWorkerSpec(strings.NewReader(string(body)))
		if err != nil {
			return
		}
		if len(body) > 64<<10+1 {
			t.Fatalf("a %d-byte body was accepted", len(body))
		}
		again, err := json.Marshal(admin.WorkerSpec{URL: w.URL, ID: w.ID, Events: w.Events, Replay: w.Replay, Models: w.Models,
			DPRanks: w.DPRanks, APIKeyEnv: w.APIKeyEnv, MaxConns: w.MaxConns})
		if err != nil {
			t.Fatal(err)
		}
		w2, err := admin.DecodeWorkerSpec(strings.NewReader(string(again)))
		if err != nil || w2.URL != w.URL || w2.ID != w.ID || len(w2.Models) != len(w.Models) {
			t.Fatalf("%s decoded to %+v, re-encoded %s decoded to %+v (%v)", body, w, again, w2, err)
		}
		_ = configs.ValidateWorker(&w) // must not panic on whatever was decoded
	})
}
