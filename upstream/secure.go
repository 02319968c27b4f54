package upstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/valyala/fasthttp"
)

// This file holds what the router needs to talk to its workers safely: each worker's
// API key on every request, its TLS settings, and an http.Client for the calls made
// with net/http (scrapes, /tokenize) that can only reach the pool's workers.

// headerAuthorization is the header carrying a worker's API key.
const headerAuthorization = "Authorization"

// HasAPIKey reports whether the router sends an API key to the worker.
func (w *Worker) HasAPIKey() bool { return w.auth != nil }

// Authorize sets the worker's "Authorization: Bearer <key>" on h when it has a key; it
// does nothing otherwise. It does not remove other spellings of the header (a client's
// "authorization"): a caller forwarding a client's headers removes them first.
func (w *Worker) Authorize(h *fasthttp.RequestHeader) {
	if w.auth != nil {
		h.SetBytesV(headerAuthorization, w.auth)
	}
}

// explainTLS adds a hint to TLS failures, which otherwise name only the certificate.
func (w *Worker) explainTLS(err error) error {
	if !w.tls || !isTLSError(err) {
		return err
	}
	return fmt.Errorf("TLS to %s (check upstream.tls or the worker's tls: ca_file, server_name): %w", w.host, err)
}

// isTLSError reports whether err is a failed TLS handshake or certificate check.
func isTLSError(err error) bool {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	var rh tls.RecordHeaderError
	var al tls.AlertError
	return errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci) ||
		errors.As(err, &rh) || errors.As(err, &al)
}

// IsTLSError reports whether err is a failed TLS handshake or certificate check with a
// worker, for error metrics.
func IsTLSError(err error) bool { return isTLSError(err) }

// newTransport returns the worker's net/http transport: direct (never an environment
// proxy), with the worker's TLS settings.
func (w *Worker) newTransport(connect time.Duration) *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     w.tlsConf.Clone(),
		TLSHandshakeTimeout: connect,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
}

// ErrNotAWorker is returned by the transport of [Pool.HTTPClient] for a URL that is not
// a worker of the pool.
var ErrNotAWorker = errors.New("not a configured worker")

// HTTPClient returns an http.Client for calls to the pool's workers (engine metrics,
// /tokenize). It adds each worker's API key and uses the worker's TLS settings; a
// request to any other host fails with ErrNotAWorker before a connection is made, and
// redirects are never followed, so a worker cannot send the router elsewhere. It has
// no timeout of its own: bound calls with their context.
func (p *Pool) HTTPClient() *http.Client {
	return &http.Client{
		Transport:     poolTransport{p},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// CloseIdleConnections closes the idle connections of the pool's net/http transports.
func (p *Pool) CloseIdleConnections() {
	for _, w := range p.Workers() {
		w.httpT.CloseIdleConnections()
	}
}

// poolTransport sends each request through its worker's transport.
type poolTransport struct{ p *Pool }

func (t poolTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	w := t.p.fleet.Load().byURL[req.URL.Scheme+"://"+req.URL.Host]
	if w == nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, fmt.Errorf("%w: %s://%s", ErrNotAWorker, req.URL.Scheme, req.URL.Host)
	}
	if w.auth != nil {
		req = req.Clone(req.Context()) // a RoundTripper must not modify its request
		req.Header.Set(headerAuthorization, string(w.auth))
	}
	resp, err := w.httpT.RoundTrip(req)
	if err != nil {
		return nil, w.explainTLS(err)
	}
	return resp, nil
}

// authHint explains a worker's 401 or 403 answer to the router's own requests.
func authHint(status int) string {
	if status == http.StatusUnauthorized || status == http.StatusForbidden {
		return " (the worker refused the router's credentials: check workers[].api_key or upstream.api_key)"
	}
	return ""
}
