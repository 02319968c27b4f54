package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/upstream"
)

// Run serves cfg on ln until ctx ends, then drains: it stops accepting, lets in-flight
// requests finish for up to cfg.Timeouts.Shutdown, and returns. ready, if not nil, is
// called once the workers have been checked and the listener is serving. It is what
// `kvroute serve` runs.
func Run(ctx context.Context, cfg *configs.Config, ln net.Listener, log *slog.Logger, ready func(*Server)) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	pool, err := upstream.NewPool(cfg, reg)
	if err != nil {
		return err
	}
	srv, err := New(Options{Config: cfg, Pool: pool, Registerer: reg, Gatherer: reg, Logger: log})
	if err != nil {
		return err
	}
	poolCtx, stopPool := context.WithCancel(context.Background())
	defer stopPool()
	pool.Start(ctx)
	go pool.Run(poolCtx)
	for _, w := range pool.Workers() {
		st := w.State()
		log.Info("worker", "id", st.ID, "url", st.URL, "available", st.Available, "models", st.Models, "last_error", st.LastError)
	}

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("kvroute serving", "listen", ln.Addr().String(), "policy", cfg.Policy, "workers", len(cfg.Workers))
	if ready != nil {
		ready(srv)
	}
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info("draining", "deadline", cfg.Timeouts.Shutdown.String())
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Timeouts.Shutdown)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	} else if err != nil {
		return fmt.Errorf("drain did not finish within %s: %w", cfg.Timeouts.Shutdown, err)
	}
	if err := <-served; err != nil {
		return err
	}
	log.Info("drained")
	return nil
}
