package stack

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// This file runs a Stack as a standalone indexer (kvroute indexer): the pool (discovery
// and models), the event feeds into the index, the scraper (block sizes) and the
// snapshot file, with one HTTP listener serving only the index API (query, snapshot,
// restore: router/admin), /metrics and /health. Nothing is proxied; the router's
// Server is built only for its hashing path (QueryIndex), never served.

// RunIndexer serves the index API on ln until ctx ends, then shuts the listener down
// (within Config.Timeouts.Shutdown) and stops the background loops. ready, if not nil,
// is called once the listener is serving. The listener follows the admin API's token
// rules: beyond loopback every path but /health needs the admin token, and restore
// always does.
func (st *Stack) RunIndexer(ctx context.Context, ln net.Listener, ready func()) error {
	cfg, log := st.Config, st.log
	goRun, stop := st.background()
	defer stop()
	api, err := st.adminHandler(ln.Addr())
	if err != nil {
		return err
	}
	if err := st.startBackground(ctx, goRun); err != nil {
		return err
	}
	h := indexerHandler(api, promhttp.HandlerFor(st.Registry, promhttp.HandlerOpts{}))
	lim := cfg.Limits
	srv := &http.Server{Handler: h, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ReadHeaderTimeout: lim.HeaderTimeout, ReadTimeout: lim.HeaderTimeout + lim.BodyTimeout,
		WriteTimeout: lim.WriteTimeout, IdleTimeout: lim.IdleTimeout, MaxHeaderBytes: lim.MaxHeaderBytes}
	if tc := st.Server.TLSConfig(); tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("kvroute indexer serving", "listen", ln.Addr().String(), "tokenize", cfg.Tokenize.Mode,
		"events", cfg.Events.Source, "workers", len(cfg.Workers))
	if ready != nil {
		ready()
	}
	select {
	case err := <-served:
		return fmt.Errorf("indexer: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Timeouts.Shutdown)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("indexer shutdown: %w", err)
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("indexer: %w", err)
	}
	return nil
}

// indexerHandler serves /health, /metrics (behind the admin API's token rules, as api
// applies them) and the /api/index/ paths of api; every other path is a JSON 404.
func indexerHandler(api, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	})
	mux.Handle("/api/index/", api)
	mux.Handle("GET /metrics", metricsBehind(api, metrics))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = fmt.Fprintf(w, `{"error":{"message":%q,"type":"invalid_request_error","param":null,"code":"not_found"}}`,
			"the indexer serves only /api/index/query, /api/index/snapshot, /api/index/restore, /metrics and /health; not "+strings.ReplaceAll(r.URL.Path, `"`, ""))
	})
	return mux
}

// metricsBehind serves metrics to the requests the admin handler api would let read:
// it asks api for GET /api/index/ping (a JSON 404 when allowed, 401 when the token is
// missing) with the request's credentials.
func metricsBehind(api, metrics http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		probe := r.Clone(r.Context())
		probe.URL.Path, probe.URL.RawPath = "/api/index/ping", ""
		rec := &statusRecorder{}
		api.ServeHTTP(rec, probe)
		if rec.status == http.StatusUnauthorized {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("WWW-Authenticate", `Bearer realm="kvroute admin"`)
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":{"message":"/metrics needs the admin token: send it as Authorization: Bearer <token>","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`))
			return
		}
		metrics.ServeHTTP(w, r)
	})
}

// statusRecorder is a ResponseWriter that keeps only the status.
type statusRecorder struct {
	h      http.Header
	status int
}

func (s *statusRecorder) Header() http.Header {
	if s.h == nil {
		s.h = http.Header{}
	}
	return s.h
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return len(b), nil
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
}
