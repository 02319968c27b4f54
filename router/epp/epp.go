package epp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kvroute/kvroute/router"
)

// The names of the endpoint picker protocol (docs/proposals/004-endpoint-picker-protocol
// in kubernetes-sigs/gateway-api-inference-extension).
const (
	// DestinationHeader is the request header, and the key in the DestinationNamespace
	// dynamic metadata, that names the picked endpoints, "ip:port[,ip:port...]".
	DestinationHeader = "x-gateway-destination-endpoint"
	// DestinationNamespace is the metadata namespace of the picked and served endpoints.
	DestinationNamespace = "envoy.lb"
	// ServedKey is the key in the DestinationNamespace metadata of a response naming the
	// endpoint that served it.
	ServedKey = "x-gateway-destination-endpoint-served"
	// SubsetNamespace and SubsetKey hold the data plane's subset hint: the endpoints the
	// pick is restricted to.
	SubsetNamespace = "envoy.lb.subset_hint"
	SubsetKey       = "x-gateway-destination-endpoint-subset"
	// ServiceName is the ext_proc service, also a gRPC health service name.
	ServiceName = "envoy.service.ext_proc.v3.ExternalProcessor"
)

// chunkLimit is the most body bytes sent back in one streamed body response: Envoy
// limits a streamed chunk to 64 KiB, and the reference implementation stays below it
// (pkg/common/envoy/chunking.go there).
const chunkLimit = 62000

// Picker places requests: the router's decision path (*router.Server).
type Picker interface {
	Pick(ctx context.Context, req *router.PickRequest) (*router.Pick, error)
}

// Options configure a Server.
type Options struct {
	// Picker places the requests; required.
	Picker Picker
	// MaxBodyBytes caps a request body the picker holds; a larger one ends the stream
	// with ResourceExhausted. Required (> 0).
	MaxBodyBytes int
	// Fallbacks is how many endpoints follow the pick in the destination header.
	Fallbacks int
	// SessionHeader names the request header holding the session key ("" for none).
	SessionHeader string
	// Registerer receives the kvroute_epp_* metrics; nil means none are registered.
	Registerer prometheus.Registerer
	// Logger receives debug logs of failed streams; nil means slog.Default().
	Logger *slog.Logger
}

// Server is the ext_proc ExternalProcessor of the endpoint picker protocol. Safe for
// concurrent use: each stream is handled by its own goroutine.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer
	opts    Options
	log     *slog.Logger
	streams *prometheus.CounterVec // outcome
	pickDur prometheus.Histogram
}

// New builds a Server.
func New(opts Options) (*Server, error) {
	if opts.Picker == nil || opts.MaxBodyBytes <= 0 {
		return nil, errors.New("epp: Picker and MaxBodyBytes are required")
	}
	s := &Server{opts: opts, log: opts.Logger}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.streams = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "kvroute_epp_requests_total",
		Help: "Requests the endpoint picker handled, by outcome: picked, rejected_<status> (an immediate response), stream_error (a malformed or cut ext_proc stream).",
	}, []string{"outcome"})
	s.pickDur = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "kvroute_epp_pick_duration_seconds",
		Help:    "Time from the request body's end to the destination answer, including any wait in the overload queue.",
		Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16),
	})
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{s.streams, s.pickDur} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("register epp metrics: %w", err)
			}
		}
	}
	return s, nil
}

// phase is where a stream is in the exchange.
type phase uint8

const (
	phaseStart    phase = iota // before the request headers
	phaseReqBody               // request headers read, body being read
	phasePicked                // destination sent, waiting for the response
	phaseRespBody              // response headers read, body being read
	phaseDone                  // the response ended (or an immediate response was sent)
)

// exchange is the state of one ext_proc stream: one HTTP request and its response.
type exchange struct {
	s       *Server
	stream  extprocv3.ExternalProcessor_ProcessServer
	phase   phase
	path    string
	reqID   string
	session string
	prio    string
	subset  []string
	hasSub  bool
	body    []byte
	pick    *router.Pick
	// echoResp is true when the response body is FULL_DUPLEX_STREAMED (every chunk is
	// sent back); false when it is only observed (STREAMED or no body mode announced).
	echoResp bool
}

// Process serves one ext_proc stream: the request headers and body (FULL_DUPLEX_STREAMED)
// are read, the request is placed when its body ends, the destination is sent as a
// header mutation with the same value in dynamic metadata and the body streamed back,
// then the response's headers and body are observed for the bookkeeping. A malformed
// stream ends with InvalidArgument (out-of-order or unknown messages) or
// ResourceExhausted (a body over MaxBodyBytes); it never panics.
func (s *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	x := &exchange{s: s, stream: stream}
	defer func() {
		if x.pick != nil {
			x.pick.Done() // a stream cut before the response's end still ends the load
		}
	}()
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		if err := x.handle(req); err != nil {
			s.streams.WithLabelValues("stream_error").Inc()
			s.log.Debug("ext_proc stream failed", "err", err)
			return err
		}
	}
}

func (x *exchange) handle(req *extprocv3.ProcessingRequest) error {
	if pc := req.GetProtocolConfig(); pc != nil {
		if m := pc.GetRequestBodyMode(); m != filterv3.ProcessingMode_NONE && m != filterv3.ProcessingMode_FULL_DUPLEX_STREAMED {
			return status.Errorf(codes.FailedPrecondition, "request_body_mode %s: the endpoint picker needs FULL_DUPLEX_STREAMED", m)
		}
		x.echoResp = pc.GetResponseBodyMode() == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED
	}
	switch r := req.Request.(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		if x.phase != phaseStart {
			return status.Error(codes.InvalidArgument, "request headers twice in one stream")
		}
		x.readRequestHeaders(req, r.RequestHeaders)
		x.phase = phaseReqBody
		if r.RequestHeaders.GetEndOfStream() {
			return x.place(nil)
		}
		return nil // FULL_DUPLEX_STREAMED: the headers are answered once the body has ended
	case *extprocv3.ProcessingRequest_RequestBody:
		if x.phase != phaseReqBody {
			return status.Errorf(codes.InvalidArgument, "request body %s", x.outOfOrder())
		}
		b := r.RequestBody.GetBody()
		if len(x.body)+len(b) > x.s.opts.MaxBodyBytes {
			return status.Errorf(codes.ResourceExhausted, "request body over the limit of %d bytes", x.s.opts.MaxBodyBytes)
		}
		x.body = append(x.body, b...)
		if r.RequestBody.GetEndOfStream() {
			return x.place(nil)
		}
		return nil
	case *extprocv3.ProcessingRequest_RequestTrailers:
		if x.phase != phaseReqBody {
			return status.Errorf(codes.InvalidArgument, "request trailers %s", x.outOfOrder())
		}
		// The body ended without end_of_stream: the trailers end it.
		return x.place(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{
			RequestTrailers: &extprocv3.TrailersResponse{}}})
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		if x.phase != phasePicked {
			return status.Errorf(codes.InvalidArgument, "response headers %s", x.outOfOrder())
		}
		x.readResponseHeaders(req, r.ResponseHeaders)
		if err := x.send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{
			ResponseHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{}}}}); err != nil {
			return err
		}
		x.phase = phaseRespBody
		if r.ResponseHeaders.GetEndOfStream() {
			x.finish()
		}
		return nil
	case *extprocv3.ProcessingRequest_ResponseBody:
		if x.phase != phaseRespBody {
			return status.Errorf(codes.InvalidArgument, "response body %s", x.outOfOrder())
		}
		b, eos := r.ResponseBody.GetBody(), r.ResponseBody.GetEndOfStream()
		x.pick.Chunk(b)
		var resp *extprocv3.ProcessingResponse
		if x.echoResp {
			resp = streamed(false, b, eos)
		} else {
			resp = &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{
				ResponseBody: &extprocv3.BodyResponse{Response: &extprocv3.CommonResponse{}}}}
		}
		if err := x.send(resp); err != nil {
			return err
		}
		if eos {
			x.finish()
		}
		return nil
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		if x.phase != phaseRespBody {
			return status.Errorf(codes.InvalidArgument, "response trailers %s", x.outOfOrder())
		}
		if err := x.send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{
			ResponseTrailers: &extprocv3.TrailersResponse{}}}); err != nil {
			return err
		}
		x.finish()
		return nil
	default:
		if req.GetClientWindowUpdate() != nil || req.GetFlowControlInit() != nil {
			return nil // flow control of the data plane's own window: nothing to answer
		}
		return status.Errorf(codes.InvalidArgument, "unknown ext_proc message %T", req.Request)
	}
}

// outOfOrder describes where the stream is, for an out-of-order message's error.
func (x *exchange) outOfOrder() string {
	switch x.phase {
	case phaseStart:
		return "before the request headers"
	case phaseReqBody:
		return "before the request ended"
	case phasePicked:
		return "before the response headers"
	case phaseRespBody:
		return "after the response headers"
	default:
		return "after the exchange ended"
	}
}

func (x *exchange) send(resp *extprocv3.ProcessingResponse) error {
	if err := x.stream.Send(resp); err != nil {
		return fmt.Errorf("send ext_proc response: %w", err)
	}
	return nil
}

// finish ends the exchange's bookkeeping once the response has ended.
func (x *exchange) finish() {
	x.phase = phaseDone
	if x.pick != nil {
		x.pick.Done()
		x.pick = nil
	}
}

// readRequestHeaders keeps what the pick needs from the request headers and the
// subset hint from the filter metadata.
func (x *exchange) readRequestHeaders(req *extprocv3.ProcessingRequest, h *extprocv3.HttpHeaders) {
	for _, hv := range h.GetHeaders().GetHeaders() {
		k := strings.ToLower(hv.GetKey())
		switch {
		case k == ":path":
			x.path = headerValue(hv)
		case k == "x-request-id":
			x.reqID = headerValue(hv)
		case k == "x-kvroute-priority":
			x.prio = headerValue(hv)
		case x.s.opts.SessionHeader != "" && strings.EqualFold(k, x.s.opts.SessionHeader):
			x.session = headerValue(hv)
		}
	}
	x.subset, x.hasSub = subsetHint(req.GetMetadataContext())
}

// headerValue returns a header's value: raw_value when set (Envoy sends it there),
// else value.
func headerValue(h *corev3.HeaderValue) string {
	if raw := h.GetRawValue(); len(raw) > 0 {
		return string(raw)
	}
	return h.GetValue()
}

// subsetHint reads the subset hint from the filter metadata: a list of endpoint
// strings or one comma-separated string, each entry possibly a comma-separated list
// (both shapes occur: a header copied to metadata is one string). ok is true when the
// key is present, even with an empty or unreadable value: nothing is then eligible.
func subsetHint(md *corev3.Metadata) (subset []string, ok bool) {
	ns := md.GetFilterMetadata()[SubsetNamespace]
	if ns == nil {
		return nil, false
	}
	v, found := ns.GetFields()[SubsetKey]
	if !found {
		return nil, false
	}
	subset = []string{} // present: non-nil even when empty
	add := func(s string) {
		for _, e := range strings.Split(s, ",") {
			if e = strings.TrimSpace(e); e != "" {
				subset = append(subset, e)
			}
		}
	}
	switch k := v.GetKind().(type) {
	case *structpb.Value_StringValue:
		add(k.StringValue)
	case *structpb.Value_ListValue:
		for _, e := range k.ListValue.GetValues() {
			add(e.GetStringValue())
		}
	}
	return subset, true
}

// servedEndpoint reads the endpoint that served the response from the metadata.
func servedEndpoint(md *corev3.Metadata) string {
	ns := md.GetFilterMetadata()[DestinationNamespace]
	return strings.TrimSpace(ns.GetFields()[ServedKey].GetStringValue())
}

// place picks the request's destination once its body has ended and answers: the
// request headers' response with the destination, then the body streamed back, then
// tail (the trailers' response, or nil). A request the router refuses gets an
// immediate response instead.
func (x *exchange) place(tail *extprocv3.ProcessingResponse) error {
	x.phase = phasePicked
	t0 := time.Now()
	pr := router.PickRequest{
		Path: x.path, Body: x.body, RequestID: x.reqID, Session: x.session, Priority: x.prio,
		Fallbacks: x.s.opts.Fallbacks,
	}
	if x.hasSub {
		pr.Subset = x.subset
	}
	p, err := x.s.opts.Picker.Pick(x.stream.Context(), &pr)
	x.s.pickDur.Observe(time.Since(t0).Seconds())
	if err != nil {
		code, body := router.PickStatus(err)
		x.s.streams.WithLabelValues("rejected_" + strconv.Itoa(code)).Inc()
		x.phase = phaseDone
		return x.send(immediate(code, body))
	}
	x.pick = p
	x.s.streams.WithLabelValues("picked").Inc()
	dest := strings.Join(p.Endpoints(), ",")
	hdr := &extprocv3.ProcessingResponse{
		Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
			Response: &extprocv3.CommonResponse{
				ClearRouteCache: true,
				HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
					setHeader(DestinationHeader, dest),
					setHeader("content-length", strconv.Itoa(len(x.body))),
				}},
			},
		}},
		DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			DestinationNamespace: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
				DestinationHeader: structpb.NewStringValue(dest),
			}}),
		}},
	}
	if err := x.send(hdr); err != nil {
		return err
	}
	// The body back, unchanged, in chunks the data plane accepts.
	body := x.body
	for first := true; first || len(body) > 0; first = false {
		n := min(len(body), chunkLimit)
		if err := x.send(streamed(true, body[:n], n == len(body) && tail == nil)); err != nil {
			return err
		}
		body = body[n:]
	}
	if tail != nil {
		return x.send(tail)
	}
	return nil
}

// readResponseHeaders tells the pick which endpoint answered, with what status and
// content type.
func (x *exchange) readResponseHeaders(req *extprocv3.ProcessingRequest, h *extprocv3.HttpHeaders) {
	code, sse := 0, false
	for _, hv := range h.GetHeaders().GetHeaders() {
		switch strings.ToLower(hv.GetKey()) {
		case ":status":
			code, _ = strconv.Atoi(headerValue(hv))
		case "content-type":
			sse = strings.HasPrefix(strings.ToLower(headerValue(hv)), "text/event-stream")
		}
	}
	x.pick.Responded(servedEndpoint(req.GetMetadataContext()), code, sse)
}

func setHeader(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: k, RawValue: []byte(v)},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

// streamed is a FULL_DUPLEX_STREAMED body chunk sent back to the data plane, of the
// request (request true) or of the response.
func streamed(request bool, b []byte, eos bool) *extprocv3.ProcessingResponse {
	br := &extprocv3.BodyResponse{Response: &extprocv3.CommonResponse{
		BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_StreamedResponse{
			StreamedResponse: &extprocv3.StreamedBodyResponse{Body: b, EndOfStream: eos},
		}},
	}}
	if request {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: br}}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: br}}
}

// immediate is an ImmediateResponse: status code with an OpenAI-shaped JSON body.
func immediate(code int, body []byte) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
		ImmediateResponse: &extprocv3.ImmediateResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode(code)},
			Headers: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
				setHeader("content-type", "application/json"),
			}},
			Body:    body,
			Details: "kvroute_epp_" + strconv.Itoa(code),
		},
	}}
}

var _ extprocv3.ExternalProcessorServer = (*Server)(nil)
