package stack

import (
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// multiTurn runs convs conversations of turns turns each, one request at a time, on
// url (a router or the stand-in gateway), and returns the fleet's hit rate: cached
// prompt tokens over prompt tokens, as the workers reported them.
func multiTurn(t *testing.T, url string, convs, turns int) float64 {
	t.Helper()
	rng := rand.New(rand.NewPCG(7, 8))
	client := &http.Client{Timeout: 60 * time.Second}
	type conv struct{ msgs []chatMsg }
	cs := make([]conv, convs)
	for i := range cs {
		cs[i].msgs = []chatMsg{{Role: "system", Content: someWords(rng, 120)}}
	}
	prompt, cached := 0, 0
	for turn := 0; turn < turns; turn++ {
		for i := range cs { // interleaved, as a fleet's traffic is
			cs[i].msgs = append(cs[i].msgs, chatMsg{Role: "user", Content: someWords(rng, 30)})
			var res chatResult
			if (i+turn)%2 == 0 {
				res = chatStream(client, url, cs[i].msgs, 8)
			} else {
				res = chatOnce(client, url, cs[i].msgs, 8)
			}
			if res.err != nil {
				t.Fatalf("conversation %d turn %d: %v", i, turn, res.err)
			}
			prompt, cached = prompt+res.prompt, cached+res.cached
			cs[i].msgs = append(cs[i].msgs, chatMsg{Role: "assistant", Content: res.reply})
		}
	}
	return float64(cached) / float64(prompt)
}

// The same multi-turn workload through kvroute serve and through the stand-in gateway
// with kvroute epp, each on a fresh kvsim fleet of 4 workers: the hit rates are within
// 2 points (the picker places requests with the router's own decision path).
func TestEPPHitRateMatchesServe(t *testing.T) {
	ss := startSimStack(t, 4, nil)
	serve := multiTurn(t, ss.url, 8, 4)
	es := startEPPStack(t, 4, nil)
	_, gw := newStandIn(t, es)
	picker := multiTurn(t, gw, 8, 4)
	t.Logf("hit rate: serve %.2f%%, epp through the stand-in gateway %.2f%%", 100*serve, 100*picker)
	if math.Abs(serve-picker) > 0.02 {
		t.Errorf("hit rates differ by more than 2 points: serve %.4f, epp %.4f", serve, picker)
	}
}

// BenchmarkEPPExchange measures what the endpoint picker adds to one request: the
// ext_proc exchange of a chat request (headers, a 2-chunk body, the destination and the
// body back, the response headers and a body chunk with usage echoed, the stream's
// end) on loopback gRPC, against a kvroute epp stack with 4 kvsim workers; p50 and p99
// of the exchange are reported in microseconds. The request is not forwarded (the
// picker never contacts the workers on the request path). Compare two runs with
// benchstat: go test -run '^$' -bench BenchmarkEPPExchange -count 6 ./cmd/stack | tee new.txt; benchstat old.txt new.txt.
func BenchmarkEPPExchange(b *testing.B) {
	es := startEPPStack(b, 4, nil)
	rng := rand.New(rand.NewPCG(9, 10))
	bodies := make([][]byte, 64)
	for i := range bodies {
		bodies[i] = []byte(`{"model":"m","stream":true,"messages":[{"role":"system","content":"` + someWords(rng, 200) + `"},{"role":"user","content":"` + someWords(rng, 30) + `"}]}`)
	}
	usage := []byte("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":300,\"prompt_tokens_details\":{\"cached_tokens\":256}}}\n\ndata: [DONE]\n\n")
	hdr := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{hv(":method", "POST"), hv(":path", "/v1/chat/completions")}}}}}
	respHdr := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{hv(":status", "200"), hv("content-type", "text/event-stream")}}}}}
	durs := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		body := bodies[i%len(bodies)]
		t0 := time.Now()
		s, err := es.proc.Process(b.Context())
		if err != nil {
			b.Fatal(err)
		}
		half := len(body) / 2
		for _, m := range []*extprocv3.ProcessingRequest{hdr,
			{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: body[:half]}}},
			{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: body[half:], EndOfStream: true}}}} {
			if err := s.Send(m); err != nil {
				b.Fatal(err)
			}
		}
		for {
			r, err := s.Recv()
			if err != nil {
				b.Fatal(err)
			}
			if r.GetImmediateResponse() != nil {
				b.Fatalf("immediate response %v", r)
			}
			if r.GetRequestBody().GetResponse().GetBodyMutation().GetStreamedResponse().GetEndOfStream() {
				break
			}
		}
		if err := s.Send(respHdr); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			b.Fatal(err)
		}
		if err := s.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{Body: usage, EndOfStream: true}}}); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			b.Fatal(err)
		}
		_ = s.CloseSend()
		_, _ = s.Recv()
		durs = append(durs, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(durs)
	b.ReportMetric(float64(durs[len(durs)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(durs[min(len(durs)-1, len(durs)*99/100)].Microseconds()), "p99-µs")
}
