package router

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/router/blockhash"
	"github.com/kvroute/kvroute/upstream"
)

// ctxKeepingHasher keeps the context of every Hash call and reads it later, as
// net/http's dial goroutine does after a /tokenize call has timed out.
type ctxKeepingHasher struct {
	mu   sync.Mutex
	ctxs []context.Context
}

func (h *ctxKeepingHasher) Hash(ctx context.Context, _ *blockhash.Request, dst []proto.BlockHash) (blockhash.Result, error) {
	h.mu.Lock()
	h.ctxs = append(h.ctxs, ctx)
	h.mu.Unlock()
	return blockhash.Result{Hashes: dst}, nil
}

// The prompt hasher never gets the fasthttp RequestCtx as its context: its HTTP client
// may read the context after the handler has returned, when fasthttp has recycled the
// RequestCtx for the connection's next request (found by the chaos suite under -race).
func TestHasherContextOutlivesHandler(t *testing.T) {
	fw := newFakeWorker(t, "m")
	cfg := testConfig(fw)
	reg := prometheus.NewRegistry()
	pool, err := upstream.NewPool(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	h := &ctxKeepingHasher{}
	srv, err := New(Options{Config: cfg, Pool: pool, Registerer: reg, Gatherer: reg,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Hasher: h})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pool.Start(ctx)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer func() { _ = srv.Shutdown(context.Background()) }()

	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}} // one connection: one RequestCtx, reused
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for i := 0; i < 20; i++ {
		resp, err := client.Post("http://"+ln.Addr().String()+"/v1/chat/completions", "application/json", strings.NewReader(chatBody))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		h.mu.Lock()
		got := h.ctxs[len(h.ctxs)-1]
		h.mu.Unlock()
		if _, ok := got.(*fasthttp.RequestCtx); ok {
			t.Fatal("the hasher got the fasthttp RequestCtx")
		}
		// Read it while the next request runs on the same connection.
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
					_ = got.Value("k")
				}
			}
		}()
	}
	close(stop)
	readers.Wait()
}
