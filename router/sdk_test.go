package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/router/replica"
	"github.com/kvroute/kvroute/upstream"
	"github.com/kvroute/kvroute/upstream/kvevents/natsbus"
)

// sdkConversation runs a 5-turn stored conversation with the official OpenAI Go SDK's
// Responses client and checks that every turn, and a retrieval of the last response,
// lands on the worker holding the previous response (the x-kvroute-worker header).
func sdkConversation(t *testing.T, client openai.Client) {
	t.Helper()
	ctx := context.Background()
	prev, holder := "", ""
	for turn := range 5 {
		params := responses.ResponseNewParams{
			Model:           "kvsim",
			Instructions:    openai.String("You are a terse assistant."),
			Input:           responses.ResponseNewParamsInputUnion{OfString: openai.String(fmt.Sprintf("turn %d: go on", turn))},
			Store:           openai.Bool(true),
			MaxOutputTokens: openai.Int(6),
		}
		if prev != "" {
			params.PreviousResponseID = openai.String(prev)
		}
		var raw *http.Response
		resp, err := client.Responses.New(ctx, params, option.WithResponseInto(&raw))
		if err != nil {
			t.Fatalf("turn %d: %v", turn, err)
		}
		w := raw.Header.Get("x-kvroute-worker")
		if turn > 0 && w != holder {
			t.Fatalf("turn %d landed on %s; the previous response is on %s", turn, w, holder)
		}
		if resp.ID == "" || resp.OutputText() == "" || resp.Usage.InputTokens == 0 {
			t.Fatalf("turn %d: answer %+v", turn, resp)
		}
		if turn > 0 && resp.Usage.InputTokensDetails.CachedTokens == 0 {
			t.Errorf("turn %d: nothing cached on the holder (usage %+v)", turn, resp.Usage)
		}
		prev, holder = resp.ID, w
	}
	var raw *http.Response
	got, err := client.Responses.Get(ctx, prev, responses.ResponseGetParams{}, option.WithResponseInto(&raw))
	if err != nil || got.ID != prev || raw.Header.Get("x-kvroute-worker") != holder {
		t.Fatalf("retrieval: %v, id %q on %q", err, got.ID, raw.Header.Get("x-kvroute-worker"))
	}
	// An id no worker holds: the SDK sees the router's 404 response_not_found.
	_, err = client.Responses.New(ctx, responses.ResponseNewParams{Model: "kvsim", PreviousResponseID: openai.String("resp_nobody"),
		Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("x")}})
	var apiErr *openai.Error
	if !asError(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != "response_not_found" {
		t.Fatalf("unknown previous_response_id: %v", err)
	}
}

func TestOpenAISDKResponsesConversation(t *testing.T) {
	_, cfg := startSimFleet(t, 4)
	cfg.Policy = "round_robin" // every turn would move without stickiness
	tr := startRouter(t, cfg)
	sdkConversation(t, openai.NewClient(option.WithBaseURL(tr.url+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0)))
}

// TestOpenAISDKResponsesReplicas is the conversation through 3 router replicas behind a
// round-robin balancer (the client moves to the next replica on every request): the
// replicas share the stored responses over replica sync.
func TestOpenAISDKResponsesReplicas(t *testing.T) {
	_, cfg := startSimFleet(t, 4)
	cfg.Policy = "round_robin"
	srv, err := natsbus.StartEmbedded(natsbus.EmbeddedOptions{NoJetStream: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	var urls []string
	var syncs []*replica.Sync
	for i := range 3 {
		c := *cfg
		c.Workers = append([]configs.Worker(nil), cfg.Workers...)
		u, s := startReplicaRouter(t, &c, srv.ClientURL(), fmt.Sprintf("r%d", i))
		urls, syncs = append(urls, u), append(syncs, s)
	}
	poll.CheckFor(t, 10*time.Second, "the replicas see each other", func() bool {
		for _, s := range syncs {
			if len(s.Peers()) != 2 {
				return false
			}
		}
		return true
	})
	// The balancer: a reverse proxy sending each request to the next replica.
	var next atomic.Int64
	targets := make([]*url.URL, len(urls))
	for i, u := range urls {
		targets[i], _ = url.Parse(u)
	}
	lb := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
		pr.SetURL(targets[next.Add(1)%int64(len(targets))])
	}})
	t.Cleanup(lb.Close)
	sdkConversation(t, openai.NewClient(option.WithBaseURL(lb.URL+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0)))
	if next.Load() < 7 {
		t.Errorf("the balancer saw %d requests", next.Load())
	}
}

// startReplicaRouter starts a router with replica sync on the NATS server at natsURL
// and returns its URL and its Sync.
func startReplicaRouter(t *testing.T, cfg *configs.Config, natsURL, id string) (string, *replica.Sync) {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	pool, err := upstream.NewPool(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	rs, err := replica.New(replica.Options{Conn: nc, Pool: pool, ID: id, Heartbeat: 50 * time.Millisecond, ExpireAfter: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := New(Options{Config: cfg, Pool: pool, Registerer: reg, Gatherer: reg, Logger: log, Replica: rs})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	pool.Start(ctx)
	done := make(chan struct{}, 3)
	go func() { pool.Run(ctx); done <- struct{}{} }()
	go func() { _ = rs.Run(ctx); done <- struct{}{} }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ln); done <- struct{}{} }()
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = s.Shutdown(sctx)
		cancel()
		for range 3 {
			<-done
		}
	})
	return "http://" + ln.Addr().String(), rs
}

func asError[T error](err error, target *T) bool { return errors.As(err, target) }
