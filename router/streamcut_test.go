package router

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
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
			eventually(t, 2*time.Second, "in-flight back to 0", func() bool { return tr.pool.Worker("w0").InFlight() == 0 })
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
