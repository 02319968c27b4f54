package epp

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/router"
	"github.com/kvroute/kvroute/upstream"
)

// fakeStream is an ext_proc stream fed from a list of messages, in memory: Process
// reads them in order, then io.EOF.
type fakeStream struct {
	grpc.ServerStream
	ctx  context.Context
	msgs []*extprocv3.ProcessingRequest
	sent int
}

func (f *fakeStream) Context() context.Context { return f.ctx }

func (f *fakeStream) Recv() (*extprocv3.ProcessingRequest, error) {
	if len(f.msgs) == 0 {
		return nil, io.EOF
	}
	m := f.msgs[0]
	f.msgs = f.msgs[1:]
	return m, nil
}

func (f *fakeStream) Send(*extprocv3.ProcessingResponse) error { f.sent++; return nil }

// fuzzRouter is a router.Server over two loopback workers that answer health checks
// and model lists (the picks never reach them).
func fuzzRouter(f *testing.F) (*router.Server, *upstream.Pool) {
	cfg := configs.Default()
	for _, id := range []string{"a", "b"} {
		ws := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"object":"list","data":[{"id":"m","object":"model"}]}`)
		}))
		f.Cleanup(ws.Close)
		cfg.Workers = append(cfg.Workers, configs.Worker{ID: id, URL: ws.URL, MaxConns: 16})
	}
	cfg.Tokenize.Mode = "approx"
	if err := cfg.Validate(); err != nil {
		f.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	pool, err := upstream.NewPool(&cfg, reg)
	if err != nil {
		f.Fatal(err)
	}
	srv, err := router.New(router.Options{Config: &cfg, Pool: pool, Registerer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.Cleanup(cancel)
	pool.Start(ctx)
	go pool.Run(ctx)
	poll.CheckFor(f, 10*time.Second, "workers available", srv.Ready)
	return srv, pool
}

// decodeOps turns fuzz bytes into ext_proc messages: each op is a kind byte, a length
// byte and that many payload bytes.
func decodeOps(data []byte) []*extprocv3.ProcessingRequest {
	var out []*extprocv3.ProcessingRequest
	for len(data) >= 2 {
		kind, n := data[0], int(data[1])
		data = data[2:]
		n = min(n, len(data))
		p := data[:n]
		data = data[n:]
		eos := kind&0x80 != 0
		var m extprocv3.ProcessingRequest
		switch kind & 0x7 {
		case 0:
			m.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
				Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":path", RawValue: p}}}, EndOfStream: eos}}
		case 1:
			m.Request = &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: p, EndOfStream: eos}}
		case 2:
			m.Request = &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{}}
		case 3:
			m.Request = &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
				Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":status", RawValue: p}, {Key: "content-type", Value: "text/event-stream"}}}, EndOfStream: eos}}
		case 4:
			m.Request = &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: p, EndOfStream: eos}}
		case 5:
			m.Request = &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: &extprocv3.HttpTrailers{}}
		case 6:
			m.MetadataContext = &corev3.Metadata{}
		default:
			m.Request = &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{
				Body: []byte(`{"model":"m","stream":true,"messages":[{"role":"user","content":` + strconv.Quote(string(p)) + `}]}`), EndOfStream: eos}}
		}
		out = append(out, &m)
	}
	return out
}

// FuzzProcess feeds arbitrary sequences of ext_proc messages (any phase in any order,
// bodies of any bytes, statuses of any text) to the picker: it must never panic, and
// once the stream ends every load it began must have ended.
func FuzzProcess(f *testing.F) {
	srv, pool := fuzzRouter(f)
	s, err := New(Options{Picker: srv, MaxBodyBytes: 512, Fallbacks: 1})
	if err != nil {
		f.Fatal(err)
	}
	op := func(kind byte, p string) []byte { return append([]byte{kind, byte(len(p))}, p...) }
	join := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	chat := `{"model":"m","messages":[{"role":"user","content":"hi"}]}`
	f.Add(join(op(0, "/v1/chat/completions"), op(0x81, chat), op(3, "200"), op(4, "data: {\"usage\":{\"prompt_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n"), op(0x84, "data: [DONE]\n\n")))
	f.Add(join(op(0, "/v1/chat/completions"), op(1, chat[:20]), op(1, chat[20:]), op(2, ""), op(0x83, "200")))
	f.Add(join(op(1, chat), op(0, "/")))
	f.Add(join(op(0x80, "/v1/completions")))
	f.Add(join(op(0, "/v1/chat/completions"), op(0x87, "hello"), op(3, "500"), op(5, "")))
	f.Add(join(op(6, ""), op(0, "/v1/chat/completions"), op(1, "{\"model\":")))
	f.Fuzz(func(t *testing.T, data []byte) {
		fs := &fakeStream{ctx: context.Background(), msgs: decodeOps(data)}
		_ = s.Process(fs) // an error is a clean end; a panic fails
		for _, w := range pool.Workers() {
			if w.InFlight() != 0 || w.PendingPrefillTokens() != 0 {
				t.Fatalf("worker %s left with %d in flight, %d pending tokens", w.ID, w.InFlight(), w.PendingPrefillTokens())
			}
		}
	})
}
