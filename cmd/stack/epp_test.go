package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/router/epp"
)

// eppStack is `kvroute epp` (Stack.RunEPP) in front of a kvsim fleet, all on loopback,
// with a gRPC client of its ext_proc and health listeners.
type eppStack struct {
	fleet  *sim.Fleet
	stack  *Stack
	url    string // the HTTP listener
	conn   *grpc.ClientConn
	health healthpb.HealthClient
	proc   extprocv3.ExternalProcessorClient
}

func startEPPStack(t testing.TB, workers int, mutate func(*sim.FleetConfig, *configs.Config)) *eppStack {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	fc := sim.DefaultFleetConfig()
	fc.Workers = workers
	fc.Worker.Model = "m"
	cfg := configs.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.EPP.GRPCListen, cfg.EPP.HealthListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Health.Interval = 100 * time.Millisecond
	cfg.Timeouts.Shutdown = 30 * time.Second
	cfg.Tokenize.Timeout = 10 * time.Second
	if mutate != nil {
		mutate(&fc, &cfg)
	}
	fleet, err := sim.StartFleet(ctx, fc)
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range fleet.Infos() {
		cfg.Workers = append(cfg.Workers, configs.Worker{ID: info.ID, URL: info.URL, Events: info.Events, Replay: info.Replay, MaxConns: 256})
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	st, err := NewStack(&cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	var lns []net.Listener
	for _, a := range []string{cfg.Listen, cfg.EPP.GRPCListen, cfg.EPP.HealthListen} {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
	}
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- st.RunEPP(ctx, lns[0], lns[1], lns[2], func() { close(ready) }) }()
	<-ready
	conn, err := grpc.NewClient(lns[1].Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	hconn, err := grpc.NewClient(lns[2].Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		_ = hconn.Close()
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stack: %v", err)
		}
		_ = fleet.Close()
	})
	es := &eppStack{fleet: fleet, stack: st, url: "http://" + lns[0].Addr().String(), conn: conn,
		health: healthpb.NewHealthClient(hconn), proc: extprocv3.NewExternalProcessorClient(conn)}
	poll.CheckFor(t, 10*time.Second, "event feeds subscribed", func() bool {
		for _, w := range fleet.Workers() {
			if !w.EventsSubscribed() {
				return false
			}
		}
		return true
	})
	return es
}

// standIn is a gateway stand-in: an HTTP proxy that runs the ext_proc exchange as Envoy
// does with the endpoint picker protocol (request headers, then the body in chunks in
// FULL_DUPLEX_STREAMED mode, the picker's header mutation and streamed body applied;
// the response's headers with the served endpoint in metadata, then its body chunks
// echoed back) and forwards to the endpoints the picker named, in order, going to the
// next on a connection failure.
type standIn struct {
	t     *testing.T
	proc  extprocv3.ExternalProcessorClient
	chunk int // request body chunk size
	// trailers ends the request body with trailers instead of end_of_stream.
	trailers bool
	// subset, when non-nil, is sent as the subset hint.
	subset []string
	// down holds endpoints the stand-in treats as refusing connections.
	down map[string]bool

	mu     sync.Mutex
	served []string // the endpoint of each forwarded request
	dests  []string // the destination header of each request
}

func (g *standIn) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := g.exchange(w, r); err != nil {
		g.t.Errorf("stand-in gateway: %v", err)
		http.Error(w, err.Error(), http.StatusBadGateway)
	}
}

func hv(k, v string) *corev3.HeaderValue { return &corev3.HeaderValue{Key: k, RawValue: []byte(v)} }

func (g *standIn) exchange(w http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stream, err := g.proc.Process(ctx)
	if err != nil {
		return err
	}
	hdrs := []*corev3.HeaderValue{hv(":method", r.Method), hv(":path", r.URL.RequestURI()), hv(":authority", r.Host), hv(":scheme", "http")}
	for k, vs := range r.Header {
		for _, v := range vs {
			hdrs = append(hdrs, hv(strings.ToLower(k), v))
		}
	}
	first := &extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
			Headers: &corev3.HeaderMap{Headers: hdrs}, EndOfStream: len(body) == 0}},
		ProtocolConfig: &extprocv3.ProtocolConfiguration{
			RequestBodyMode: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBodyMode: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED},
	}
	if g.subset != nil {
		vals := make([]any, len(g.subset))
		for i, s := range g.subset {
			vals[i] = s
		}
		ns, err := structpb.NewStruct(map[string]any{epp.SubsetKey: vals})
		if err != nil {
			return err
		}
		first.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{epp.SubsetNamespace: ns}}
	}
	if err := stream.Send(first); err != nil {
		return err
	}
	// The body in chunks, without waiting (full duplex).
	for off := 0; off < len(body); {
		n := min(g.chunk, len(body)-off)
		last := off+n == len(body)
		if err := stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
			RequestBody: &extprocv3.HttpBody{Body: body[off : off+n], EndOfStream: last && !g.trailers}}}); err != nil {
			return err
		}
		off += n
	}
	if g.trailers && len(body) > 0 {
		if err := stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{
			RequestTrailers: &extprocv3.HttpTrailers{Trailers: &corev3.HeaderMap{}}}}); err != nil {
			return err
		}
	}
	// The picker's answer: the headers' mutation, or an immediate response.
	resp, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("recv headers response: %w", err)
	}
	if ir := resp.GetImmediateResponse(); ir != nil {
		for _, h := range ir.GetHeaders().GetSetHeaders() {
			w.Header().Set(h.GetHeader().GetKey(), string(h.GetHeader().GetRawValue()))
		}
		w.WriteHeader(int(ir.GetStatus().GetCode()))
		_, _ = w.Write(ir.GetBody())
		return nil
	}
	hr := resp.GetRequestHeaders().GetResponse()
	if hr == nil {
		return fmt.Errorf("first response is %T, not the request headers'", resp.GetResponse())
	}
	if !hr.GetClearRouteCache() {
		return errors.New("the route cache is not cleared")
	}
	out := r.Header.Clone()
	for _, h := range hr.GetHeaderMutation().GetSetHeaders() {
		out.Set(h.GetHeader().GetKey(), string(h.GetHeader().GetRawValue()))
	}
	dest := out.Get(epp.DestinationHeader)
	md := resp.GetDynamicMetadata().GetFields()[epp.DestinationNamespace].GetStructValue().GetFields()[epp.DestinationHeader].GetStringValue()
	if dest == "" || md != dest {
		return fmt.Errorf("destination header %q, metadata %q", dest, md)
	}
	// The body streamed back.
	var newBody []byte
	for {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("recv body: %w", err)
		}
		sb := resp.GetRequestBody().GetResponse().GetBodyMutation().GetStreamedResponse()
		if sb == nil {
			return fmt.Errorf("body response %v is not a streamed body", resp)
		}
		newBody = append(newBody, sb.GetBody()...)
		if sb.GetEndOfStream() {
			break
		}
		if g.trailers && len(newBody) == len(body) {
			if resp, err := stream.Recv(); err != nil || resp.GetRequestTrailers() == nil {
				return fmt.Errorf("trailers response %v: %w", resp, err)
			}
			break
		}
	}
	if cl := out.Get("content-length"); cl != strconv.Itoa(len(newBody)) || !bytes.Equal(newBody, body) {
		return fmt.Errorf("content-length %s, body back %d bytes (sent %d)", cl, len(newBody), len(body))
	}
	// Forward down the endpoint list.
	var up *http.Response
	served := ""
	for _, ep := range strings.Split(dest, ",") {
		if g.down[ep] {
			continue
		}
		req, err := http.NewRequestWithContext(ctx, r.Method, "http://"+ep+r.URL.RequestURI(), bytes.NewReader(newBody))
		if err != nil {
			return err
		}
		req.Header = out
		if up, err = http.DefaultClient.Do(req); err == nil {
			served = ep
			break
		}
	}
	if up == nil {
		return fmt.Errorf("no endpoint of %q answered", dest)
	}
	defer up.Body.Close()
	g.mu.Lock()
	g.served, g.dests = append(g.served, served), append(g.dests, dest)
	g.mu.Unlock()
	servedMD, err := structpb.NewStruct(map[string]any{epp.ServedKey: served})
	if err != nil {
		return err
	}
	if err := stream.Send(&extprocv3.ProcessingRequest{
		Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			hv(":status", strconv.Itoa(up.StatusCode)), hv("content-type", up.Header.Get("Content-Type"))}}}},
		MetadataContext: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{epp.DestinationNamespace: servedMD}},
	}); err != nil {
		return err
	}
	if resp, err := stream.Recv(); err != nil || resp.GetResponseHeaders() == nil {
		return fmt.Errorf("response headers' answer %v: %w", resp, err)
	}
	w.Header().Set("Content-Type", up.Header.Get("Content-Type"))
	w.Header().Set("x-served-by", served)
	w.WriteHeader(up.StatusCode)
	buf := make([]byte, 4096)
	for {
		n, rerr := up.Body.Read(buf)
		eos := rerr != nil
		if n > 0 || eos {
			if err := stream.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
				ResponseBody: &extprocv3.HttpBody{Body: buf[:n], EndOfStream: eos}}}); err != nil {
				return err
			}
			resp, err := stream.Recv()
			if err != nil {
				return fmt.Errorf("recv response body: %w", err)
			}
			sb := resp.GetResponseBody().GetResponse().GetBodyMutation().GetStreamedResponse()
			if sb == nil || !bytes.Equal(sb.GetBody(), buf[:n]) || sb.GetEndOfStream() != eos {
				return fmt.Errorf("response chunk echoed as %v", resp)
			}
			_, _ = w.Write(sb.GetBody())
			if f, ok := w.(http.Flusher); ok {
				f.Flush()
			}
		}
		if eos {
			if !errors.Is(rerr, io.EOF) {
				return rerr
			}
			break
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("stream end: %w", err)
	}
	return nil
}

func newStandIn(t *testing.T, es *eppStack) (*standIn, string) {
	g := &standIn{t: t, proc: es.proc, chunk: 700, down: map[string]bool{}}
	srv := httptest.NewServer(g)
	t.Cleanup(srv.Close)
	return g, srv.URL
}

func idle(st *Stack) bool {
	for _, w := range st.Pool.Workers() {
		if w.InFlight() != 0 || w.PendingPrefillTokens() != 0 {
			return false
		}
	}
	return true
}

// Multi-turn conversations through the stand-in gateway: each turn lands on the worker
// holding its history (the worker reports most of the previous prompt cached), streamed
// and not, and the picker learns the served endpoint and the reported usage (truth
// metrics), leaving no load behind.
func TestEPPStandInGatewayMultiTurn(t *testing.T) {
	es := startEPPStack(t, 3, nil)
	g, url := newStandIn(t, es)
	rng := rand.New(rand.NewPCG(1, 2))
	client := &http.Client{Timeout: 60 * time.Second}
	for conv := 0; conv < 4; conv++ {
		msgs := []chatMsg{{Role: "system", Content: someWords(rng, 200)}}
		prevPrompt := 0
		for turn := 0; turn < 3; turn++ {
			msgs = append(msgs, chatMsg{Role: "user", Content: someWords(rng, 40)})
			var res chatResult
			if turn%2 == 1 {
				res = chatStream(client, url, msgs, 8)
			} else {
				res = chatOnce(client, url, msgs, 8)
			}
			if res.err != nil {
				t.Fatalf("conversation %d turn %d: %v", conv, turn, res.err)
			}
			if turn > 0 && res.cached < prevPrompt*9/10 {
				t.Errorf("conversation %d turn %d: %d of the previous %d prompt tokens cached", conv, turn, res.cached, prevPrompt)
			}
			prevPrompt = res.prompt
			msgs = append(msgs, chatMsg{Role: "assistant", Content: res.reply})
		}
	}
	g.mu.Lock()
	if len(g.served) != 12 {
		t.Errorf("%d requests forwarded, want 12", len(g.served))
	}
	for i, d := range g.dests {
		if eps := strings.Split(d, ","); len(eps) != 3 || eps[0] != g.served[i] {
			t.Errorf("request %d: destination %q, served %q: want the pick and 2 fallbacks", i, d, g.served[i])
		}
	}
	g.mu.Unlock()
	poll.CheckFor(t, 10*time.Second, "loads ended", func() bool { return idle(es.stack) })
	if n := metricSum(t, es.stack.Registry, "kvroute_router_reported_prompt_tokens_total"); n <= 0 {
		t.Errorf("reported prompt tokens %v: the picker did not read the usage", n)
	}
	if n := metricSum(t, es.stack.Registry, "kvroute_router_reported_cached_tokens_total"); n <= 0 {
		t.Errorf("reported cached tokens %v", n)
	}
	if n := metricSum(t, es.stack.Registry, "kvroute_router_unreported_answers_total"); n != 0 {
		t.Errorf("%v answers without usage: the SSE or JSON usage was missed", n)
	}
	if n := metricSum(t, es.stack.Registry, "kvroute_epp_requests_total"); n != 12 {
		t.Errorf("kvroute_epp_requests_total %v, want 12", n)
	}
	decs := es.stack.Server.Decisions(50)
	reported := 0
	for _, d := range decs {
		if d.Reported != nil {
			reported++
		}
	}
	if len(decs) != 12 || reported != 12 {
		t.Errorf("%d decisions, %d with reported usage; want 12 and 12", len(decs), reported)
	}
}

// A gateway that cannot reach the pick goes down the list; the picker moves the request
// to the endpoint that served it. Trailers end a body as end_of_stream does.
func TestEPPFallbackAndTrailers(t *testing.T) {
	es := startEPPStack(t, 2, nil)
	g, url := newStandIn(t, es)
	g.trailers = true
	client := &http.Client{Timeout: 60 * time.Second}
	msgs := []chatMsg{{Role: "user", Content: someWords(rand.New(rand.NewPCG(3, 4)), 100)}}
	res := chatOnce(client, url, msgs, 4)
	if res.err != nil {
		t.Fatal(res.err)
	}
	first := g.served[0]
	g.down[first] = true // the pick for the same prompt is this worker again: it is down
	res = chatOnce(client, url, msgs, 4)
	if res.err != nil {
		t.Fatal(res.err)
	}
	g.mu.Lock()
	second, dest := g.served[1], g.dests[1]
	g.mu.Unlock()
	if second == first || !strings.HasPrefix(dest, first+",") {
		t.Errorf("second request: destination %q, served %q; want %s first and a fallback serving", dest, second, first)
	}
	poll.CheckFor(t, 10*time.Second, "loads ended", func() bool { return idle(es.stack) })
	if d := es.stack.Server.Decisions(1); len(d) != 1 || d[0].Reported == nil {
		t.Errorf("the fallback's usage was not recorded: %+v", d)
	}
}

// The subset hint restricts the pick; a subset with no eligible endpoint gets 503, a
// body without a model 400, and a fleet at capacity with no queue 429, each as an
// immediate response the gateway passes on.
func TestEPPSubsetAndImmediateResponses(t *testing.T) {
	es := startEPPStack(t, 3, func(_ *sim.FleetConfig, c *configs.Config) {
		c.CacheAware.MaxInFlight = 1
		c.Queue.MaxSize = 0
	})
	g, url := newStandIn(t, es)
	only := strings.TrimPrefix(es.fleet.Infos()[1].URL, "http://")
	g.subset = []string{only}
	client := &http.Client{Timeout: 60 * time.Second}
	rng := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 4; i++ {
		if res := chatOnce(client, url, []chatMsg{{Role: "user", Content: someWords(rng, 30)}}, 2); res.err != nil {
			t.Fatal(res.err)
		}
	}
	for _, s := range g.served {
		if s != only {
			t.Errorf("served by %s outside the subset %s", s, only)
		}
	}
	g.subset = []string{"10.255.255.1:80"}
	if res := chatOnce(client, url, []chatMsg{{Role: "user", Content: "hi"}}, 2); res.status != 503 || !strings.Contains(res.err.Error(), "no_healthy_worker") {
		t.Errorf("subset with no worker: %d %v, want 503 no_healthy_worker", res.status, res.err)
	}
	g.subset = []string{}
	if res := chatOnce(client, url, []chatMsg{{Role: "user", Content: "hi"}}, 2); res.status != 503 {
		t.Errorf("empty subset: %d %v, want 503", res.status, res.err)
	}
	g.subset = nil
	resp, err := client.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(`{"messages":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), `"model\" is required`) {
		t.Errorf("body without model: %d %s, want 400", resp.StatusCode, b)
	}
	// Hold one pick per worker open (no response yet): the fleet is at max_in_flight.
	var held []extprocv3.ExternalProcessor_ProcessClient
	for range 3 {
		s, dest := openPick(t, es, `{"model":"m","messages":[{"role":"user","content":"hold"}]}`)
		if dest == "" {
			t.Fatal("no destination for a held request")
		}
		held = append(held, s)
	}
	res := chatOnce(client, url, []chatMsg{{Role: "user", Content: "shed me"}}, 2)
	if res.status != 429 {
		t.Errorf("at capacity: %d %v, want 429", res.status, res.err)
	}
	for _, s := range held {
		_ = s.CloseSend() // the gateway gives up: the picker ends the loads
	}
	poll.CheckFor(t, 10*time.Second, "held loads ended", func() bool { return idle(es.stack) })
}

// openPick sends a request's headers and body on a new ext_proc stream and returns the
// stream and the destination it got ("" for an immediate response).
func openPick(t *testing.T, es *eppStack, body string) (extprocv3.ExternalProcessor_ProcessClient, string) {
	t.Helper()
	s, err := es.proc.Process(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	send(t, s, reqHeaders("/v1/chat/completions", false))
	send(t, s, reqBody(body, true))
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if h.GetHeader().GetKey() == epp.DestinationHeader {
			for {
				r, err := s.Recv()
				if err != nil {
					t.Fatal(err)
				}
				if r.GetRequestBody().GetResponse().GetBodyMutation().GetStreamedResponse().GetEndOfStream() {
					break
				}
			}
			return s, string(h.GetHeader().GetRawValue())
		}
	}
	return s, ""
}

func send(t *testing.T, s extprocv3.ExternalProcessor_ProcessClient, r *extprocv3.ProcessingRequest) {
	t.Helper()
	if err := s.Send(r); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
}

func reqHeaders(path string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{hv(":method", "POST"), hv(":path", path)}}, EndOfStream: eos}}}
}

func reqBody(b string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: []byte(b), EndOfStream: eos}}}
}

// Malformed ext_proc streams end with a clean gRPC error, and a stream cut at any point
// leaves no load behind. The health services answer.
func TestEPPMalformedStreamsAndHealth(t *testing.T) {
	es := startEPPStack(t, 1, func(_ *sim.FleetConfig, c *configs.Config) { c.EPP.MaxBodyBytes = 4096 })
	ctx := t.Context()
	for _, svc := range []string{"", epp.LivenessService, epp.ReadinessService, epp.ServiceName} {
		poll.CheckFor(t, 10*time.Second, "health "+svc+" serving", func() bool {
			r, err := es.health.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
			return err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING
		})
	}
	chat := `{"model":"m","messages":[{"role":"user","content":"hello"}]}`
	cases := []struct {
		name string
		msgs []*extprocv3.ProcessingRequest
		code codes.Code
	}{
		{"body before headers", []*extprocv3.ProcessingRequest{reqBody(chat, true)}, codes.InvalidArgument},
		{"headers twice", []*extprocv3.ProcessingRequest{reqHeaders("/v1/chat/completions", false), reqHeaders("/v1/chat/completions", false)}, codes.InvalidArgument},
		{"response before request", []*extprocv3.ProcessingRequest{{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{}}}}, codes.InvalidArgument},
		{"unknown phase", []*extprocv3.ProcessingRequest{{}}, codes.InvalidArgument},
		{"oversize body", []*extprocv3.ProcessingRequest{reqHeaders("/v1/chat/completions", false), reqBody(strings.Repeat("x", 3000), false), reqBody(strings.Repeat("x", 3000), false)}, codes.ResourceExhausted},
		{"buffered mode", []*extprocv3.ProcessingRequest{{Request: reqHeaders("/v1/chat/completions", false).Request,
			ProtocolConfig: &extprocv3.ProtocolConfiguration{RequestBodyMode: filterv3.ProcessingMode_BUFFERED}}}, codes.FailedPrecondition},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := es.proc.Process(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range c.msgs {
				send(t, s, m)
			}
			_, err = s.Recv()
			if status.Code(err) != c.code {
				t.Errorf("got %v, want code %v", err, c.code)
			}
		})
	}
	// Cut mid-body, and after the pick before any response.
	s, err := es.proc.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send(t, s, reqHeaders("/v1/chat/completions", false))
	send(t, s, reqBody(chat[:10], false))
	_ = s.CloseSend()
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("cut mid-body: %v, want the stream closed cleanly", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	s, err = es.proc.Process(cctx)
	if err != nil {
		t.Fatal(err)
	}
	send(t, s, reqHeaders("/v1/chat/completions", false))
	send(t, s, reqBody(chat, true))
	if r, err := s.Recv(); err != nil || r.GetRequestHeaders() == nil {
		t.Fatalf("pick: %v %v", r, err)
	}
	if idle(es.stack) { // the load is begun before the destination is sent
		t.Error("the pick counted no load")
	}
	cancel()
	poll.CheckFor(t, 10*time.Second, "the cut pick's load ended", func() bool { return idle(es.stack) })
	// A request without a body (headers end the stream) is a body without a model: 400.
	s, err = es.proc.Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send(t, s, reqHeaders("/v1/chat/completions", true))
	r, err := s.Recv()
	if err != nil || r.GetImmediateResponse().GetStatus().GetCode() != 400 {
		t.Errorf("no body: %v %v, want an immediate 400", r, err)
	}
	var body map[string]any
	if err := json.Unmarshal(r.GetImmediateResponse().GetBody(), &body); err != nil || body["error"] == nil {
		t.Errorf("immediate response body %s is not an OpenAI error: %v", r.GetImmediateResponse().GetBody(), err)
	}
}
