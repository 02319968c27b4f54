package router

import (
	"errors"
	"fmt"
	"net"

	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/upstream"
)

// Errors a client can see. statusOf maps each to its HTTP status and OpenAI error type.
var (
	// ErrNoHealthyWorker means no available worker serves the requested model.
	ErrNoHealthyWorker = errors.New("no healthy worker serves the model")
	// ErrUnknownModel means no configured or discovered worker serves the model.
	ErrUnknownModel = errors.New("model not found")

	errInvalidJSON  = errors.New("invalid JSON body")
	errInvalidField = errors.New("invalid request")
	errBodyTooLarge = errors.New("request body too large")
	errMethod       = errors.New("method not allowed")
	errNotFound     = errors.New("not found")
	errShuttingDown = errors.New("router is shutting down")
	errClientGone   = errors.New("client disconnected")
	// errStreamTimeout is a timeout in upstream.IsTimeout's sense, so the pool probes a
	// worker whose stream stalled (see health.generation_probe).
	errStreamTimeout error = timeoutError("upstream stream timed out")

	// Refusals of the inbound gate (auth.go, limits.go).
	errMissingKey     = errors.New("missing API key: send it as Authorization: Bearer <key>")
	errInvalidKey     = errors.New("invalid API key")
	errMetricsToken   = errors.New("/metrics needs the admin token: send it as Authorization: Bearer <token>")
	errRateLimited    = errors.New("rate limit exceeded: retry after the time in the Retry-After header")
	errHeaderTooLarge = errors.New("request headers too large")
	errRequestTimeout = errors.New("request not received in time")
	errTooManyConns   = errors.New("too many connections to the router")
	errTooManyConnsIP = errors.New("too many connections from this address")
	errBodyBudget     = errors.New("too many request bodies in flight: retry after the time in the Retry-After header")
)

// apiStatus is how an error is shown to a client.
type apiStatus struct {
	code    int    // HTTP status
	typ     string // OpenAI error type
	errCode string // OpenAI error code
}

// statusOf maps an error to what the client sees. It is the only place that does.
func statusOf(err error) apiStatus {
	var ne net.Error
	switch {
	case errors.Is(err, errMissingKey), errors.Is(err, errInvalidKey), errors.Is(err, errMetricsToken):
		return apiStatus{fasthttp.StatusUnauthorized, "invalid_request_error", "invalid_api_key"}
	case errors.Is(err, errQueueFull), errors.Is(err, errQueueTimeout):
		return apiStatus{fasthttp.StatusTooManyRequests, "server_error", "server_overloaded"}
	case errors.Is(err, errPriority):
		return apiStatus{fasthttp.StatusBadRequest, "invalid_request_error", "invalid_priority"}
	case errors.Is(err, errRateLimited):
		return apiStatus{fasthttp.StatusTooManyRequests, "requests", "rate_limit_exceeded"}
	case errors.Is(err, errTooManyConnsIP):
		return apiStatus{fasthttp.StatusTooManyRequests, "requests", "too_many_connections"}
	case errors.Is(err, errBodyBudget):
		return apiStatus{fasthttp.StatusServiceUnavailable, "service_unavailable", "server_busy"}
	case errors.Is(err, errTooManyConns):
		return apiStatus{fasthttp.StatusServiceUnavailable, "service_unavailable", "too_many_connections"}
	case errors.Is(err, errHeaderTooLarge):
		return apiStatus{fasthttp.StatusRequestHeaderFieldsTooLarge, "invalid_request_error", "request_header_too_large"}
	case errors.Is(err, errRequestTimeout):
		return apiStatus{fasthttp.StatusRequestTimeout, "invalid_request_error", "request_timeout"}
	case errors.Is(err, errInvalidJSON):
		return apiStatus{fasthttp.StatusBadRequest, "invalid_request_error", "invalid_json"}
	case errors.Is(err, errInvalidField), errors.Is(err, errMalformed):
		return apiStatus{fasthttp.StatusBadRequest, "invalid_request_error", "invalid_request"}
	case errors.Is(err, errResponseNotFound):
		return apiStatus{fasthttp.StatusNotFound, "invalid_request_error", "response_not_found"}
	case errors.Is(err, errResponseWorkerDown):
		return apiStatus{fasthttp.StatusServiceUnavailable, "service_unavailable", "response_worker_unavailable"}
	case errors.Is(err, ErrUnknownModel):
		return apiStatus{fasthttp.StatusNotFound, "invalid_request_error", "model_not_found"}
	case errors.Is(err, errNotFound):
		return apiStatus{fasthttp.StatusNotFound, "invalid_request_error", "not_found"}
	case errors.Is(err, errMethod):
		return apiStatus{fasthttp.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed"}
	case errors.Is(err, errBodyTooLarge), errors.Is(err, fasthttp.ErrBodyTooLarge):
		return apiStatus{fasthttp.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large"}
	case errors.Is(err, ErrNoHealthyWorker):
		return apiStatus{fasthttp.StatusServiceUnavailable, "service_unavailable", "no_healthy_worker"}
	case errors.Is(err, errShuttingDown):
		return apiStatus{fasthttp.StatusServiceUnavailable, "service_unavailable", "shutting_down"}
	case errors.Is(err, errStreamTimeout), errors.Is(err, fasthttp.ErrTimeout),
		errors.As(err, &ne) && ne.Timeout():
		return apiStatus{fasthttp.StatusGatewayTimeout, "upstream_error", "upstream_timeout"}
	default:
		return apiStatus{fasthttp.StatusBadGateway, "upstream_error", "upstream_error"}
	}
}

// errorKind names an upstream failure for the kvroute_router_upstream_errors_total
// metric: a bounded set of values.
func errorKind(err error) string {
	var de *upstream.DialError
	var ne net.Error
	switch {
	case errors.As(err, &de):
		return "connect"
	case upstream.IsTLSError(err):
		return "tls"
	case errors.Is(err, errStreamTimeout), errors.Is(err, fasthttp.ErrTimeout), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, errStatus5xx):
		return "status_5xx"
	case errors.Is(err, errStatus429):
		return "status_429"
	default:
		return "io"
	}
}

var (
	errStatus5xx = errors.New("worker answered 5xx")
	errStatus429 = errors.New("worker answered 429")
)

// timeoutError is an error whose Timeout method (as net.Error's) reports true.
type timeoutError string

func (e timeoutError) Error() string { return string(e) }

// Timeout reports true: the error is a timeout.
func (e timeoutError) Timeout() bool { return true }

// writeError writes err as an OpenAI-shaped JSON error. 503s carry Retry-After.
func writeError(ctx *fasthttp.RequestCtx, err error) {
	st := statusOf(err)
	ctx.Response.ResetBody()
	ctx.SetStatusCode(st.code)
	ctx.SetContentType("application/json")
	if st.code == fasthttp.StatusServiceUnavailable {
		ctx.Response.Header.Set("Retry-After", "1")
	}
	ctx.SetBody(appendErrorJSON(nil, err.Error(), st))
}

// appendErrorJSON appends {"error":{"message","type","param","code"}} to dst.
func appendErrorJSON(dst []byte, msg string, st apiStatus) []byte {
	dst = append(dst, `{"error":{"message":`...)
	dst = appendJSONString(dst, msg)
	dst = fmt.Appendf(dst, `,"type":%q,"param":null,"code":%q}}`, st.typ, st.errCode)
	return dst
}
