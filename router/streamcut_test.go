package router

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/upstream"
)

// cutWorker is a worker whose streams send two SSE events and then end without data:
// [DONE]: closing the TCP connection between two chunks (a killed engine) or, with
// terminate, ending the chunked body properly (an engine that died behind a proxy).
func cutWorker(t *testing.T, terminate bool) *fakeWorker {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/health":
			return
		case "/v1/models":
			fmt.Fprint(w, `{"object":"list","data":[{"id":"m","object":"model"}]}`)
			return
		}
		conn, bw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		fmt.Fprint(bw, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
		for i := 1; i <= 2; i++ {
			ev := fmt.Sprintf("data: {\"choices\":[{\"delta\":{\"content\":\"c%d\"}}]}\n\n", i)
			fmt.Fprintf(bw, "%x\r\n%s\r\n", len(ev), ev)
			_ = bw.Flush()
		}
		if terminate {
			fmt.Fprint(bw, "0\r\n\r\n")
			_ = bw.Flush()
		}
	}))
	t.Cleanup(srv.Close)
	return &fakeWorker{Server: srv}
}

// A stream whose worker goes away without data: [DONE] ends with an error event, never
// as if it were complete, and its bookkeeping is freed.
func TestStreamCutWithoutDoneEndsWithErrorEvent(t *testing.T) {
	for _, terminate := range []bool{false, true} {
		t.Run(fmt.Sprintf("terminated=%v", terminate), func(t *testing.T) {
			fw := cutWorker(t, terminate)
			tr := startRouter(t, testConfig(fw))
			resp, body := post(t, tr.url+"/v1/chat/completions", streamBody)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			s := string(body)
			if !strings.Contains(s, "c2") || !strings.HasSuffix(s, "\n\n") || !strings.Contains(s[strings.LastIndex(s, "data: "):], `"code":"upstream_error"`) {
				t.Errorf("stream %q: want c1, c2, then an upstream_error event", s)
			}
			poll.CheckFor(t, 2*time.Second, "in-flight back to 0", func() bool { return tr.pool.Worker("w0").InFlight() == 0 })
		})
	}
}

func TestSSETail(t *testing.T) {
	for _, tc := range []struct {
		chunks []string
		done   bool
	}{
		{[]string{"data: [DONE]\n\n"}, true},
		{[]string{"data: {}\n\n", "data: [DO", "NE]\n\n"}, true},
		{[]string{"data:[DONE]\r\n\r\n"}, true},
		{[]string{strings.Repeat("x", 100) + "data: [DONE]\n\n"}, true},
		{[]string{"data: [DONE]\n\n", "data: {}\n\n"}, false},
		{[]string{"data: {\"c\":1}\n\n"}, false},
		{nil, false},
		{[]string{"data: [DONE]"}, true},
		{[]string{strings.Repeat("y", 31), "data: [DONE]\n\n"}, true},
		{[]string{"[DONE]\n\n"}, false},
	} {
		var tl sseTail
		for _, c := range tc.chunks {
			tl.add([]byte(c))
		}
		if got := tl.done(); got != tc.done {
			t.Errorf("%q: done = %v, want %v", tc.chunks, got, tc.done)
		}
	}
}

// FuzzStreamPassthrough streams arbitrary bytes, cut into chunks of arbitrary size,
// from a worker through a real router: the client receives them unchanged, followed by
// an upstream_error event exactly when they do not end with data: [DONE].
func FuzzStreamPassthrough(f *testing.F) {
	f.Add([]byte("data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n"), uint16(7))
	f.Add([]byte("data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"), uint16(1))
	f.Add([]byte("data:[DONE]\r\n\r\n"), uint16(0))
	f.Add([]byte(""), uint16(3))
	f.Add([]byte(": keep-alive\n\ndata: [DONE]\n\ndata: late\n\n"), uint16(100))

	type streamReq struct {
		Messages []struct {
			Content string `json:"content"`
		} `json:"messages"`
		Chunk int `json:"chunk"`
	}
	worker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/health":
			return
		case "/v1/models":
			fmt.Fprint(w, `{"object":"list","data":[{"id":"m","object":"model"}]}`)
			return
		}
		var req streamReq
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Messages) != 1 {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		fl := w.(http.Flusher)
		fl.Flush()
		p, n := []byte(req.Messages[0].Content), max(req.Chunk, 1)
		for len(p) > 0 {
			k := min(n, len(p))
			_, _ = w.Write(p[:k])
			fl.Flush()
			p = p[k:]
		}
	}))
	defer worker.Close()
	cfg := testConfig(&fakeWorker{Server: worker})
	cfg.Health.EjectAfter = 1 << 30 // every input gets the worker, failed streams or not
	if err := cfg.Validate(); err != nil {
		f.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	pool, err := upstream.NewPool(cfg, reg)
	if err != nil {
		f.Fatal(err)
	}
	srv, err := New(Options{Config: cfg, Pool: pool, Registerer: reg, Gatherer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pool.Start(ctx)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Shutdown(context.Background()) }()
	url := "http://" + ln.Addr().String() + "/v1/chat/completions"
	client := &http.Client{Timeout: 10 * time.Second}

	f.Fuzz(func(t *testing.T, payload []byte, chunk uint16) {
		if len(payload) > 64<<10 {
			return
		}
		body, _ := json.Marshal(map[string]any{"model": "m", "stream": true, "chunk": chunk,
			"messages": []map[string]string{{"role": "user", "content": string(payload)}}})
		var sent streamReq // what the worker will send: JSON replaced invalid UTF-8
		if err := json.Unmarshal(body, &sent); err != nil {
			t.Fatal(err)
		}
		want := sent.Messages[0].Content
		resp, err := client.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, read error %v, body %.200q", resp.StatusCode, err, got)
		}
		var tl sseTail
		tl.add([]byte(want))
		rest, ok := bytes.CutPrefix(got, []byte(want))
		switch {
		case !ok:
			t.Fatalf("client got %.200q, want the worker's %.200q first", got, want)
		case tl.done() && len(rest) > 0:
			t.Fatalf("complete stream followed by %q", rest)
		case !tl.done() && !isUpstreamErrorEvent(rest):
			t.Fatalf("stream without [DONE] followed by %q, want an upstream_error event", rest)
		}
	})
}

// isUpstreamErrorEvent reports whether b is one SSE upstream_error event.
func isUpstreamErrorEvent(b []byte) bool {
	return bytes.HasPrefix(b, []byte(`data: {"error":`)) && bytes.HasSuffix(b, []byte("\n\n")) &&
		bytes.Contains(b, []byte(`"code":"upstream_error"`))
}
