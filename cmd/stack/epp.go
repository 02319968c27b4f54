package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kvroute/kvroute/router/epp"
)

// This file runs a Stack as a Gateway API Inference Extension endpoint picker (kvroute
// epp): everything serve runs (pool, discovery, event feeds, index, admin API,
// dashboard and the HTTP listener with /metrics), plus the ext_proc gRPC server
// (router/epp) on its own listener and the grpc.health.v1 services on another. The
// picker places requests with the same router.Server the HTTP listener uses, so both
// share the load, predictions and statistics.

// healthInterval is how often the readiness services follow the router's readiness.
const healthInterval = 500 * time.Millisecond

// RunEPP serves the HTTP listener ln (as Run does), the ext_proc service on grpcLn and
// the health services on healthLn until ctx ends; then the gRPC servers stop (open
// streams get until timeouts.shutdown) while the HTTP listener drains. ready, if not
// nil, is called once everything is serving.
func (st *Stack) RunEPP(ctx context.Context, ln, grpcLn, healthLn net.Listener, ready func()) error {
	cfg := st.Config
	x, err := epp.New(epp.Options{
		Picker: st.Server, MaxBodyBytes: cfg.EPPBodyLimit(), Fallbacks: cfg.EPP.Fallbacks,
		SessionHeader: cfg.Session.Header, Registerer: st.Registry, Logger: st.log,
	})
	if err != nil {
		return err
	}
	var opts []grpc.ServerOption
	tc, err := cfg.EPP.TLS.ServerConfig()
	if err != nil {
		return fmt.Errorf("epp.%w", err)
	}
	if tc != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	procSrv, healthSrv := grpc.NewServer(opts...), grpc.NewServer(opts...)
	extprocv3.RegisterExternalProcessorServer(procSrv, x)
	h := epp.NewHealth(st.Server.Ready)
	healthpb.RegisterHealthServer(healthSrv, h.Server)
	healthpb.RegisterHealthServer(procSrv, h.Server) // also on the ext_proc port, as gateways probe there too

	gctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, s := range []struct {
		srv *grpc.Server
		ln  net.Listener
	}{{procSrv, grpcLn}, {healthSrv, healthLn}} {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				errs <- fmt.Errorf("epp grpc %s: %w", s.ln.Addr(), err)
				cancel()
			}
		}()
		go func() {
			defer wg.Done()
			<-gctx.Done()
			stopGRPC(s.srv, cfg.Timeouts.Shutdown)
		}()
	}
	wg.Add(1)
	go func() { defer wg.Done(); h.Run(gctx, healthInterval) }()
	st.log.Info("kvroute epp serving", "ext_proc", grpcLn.Addr().String(), "health", healthLn.Addr().String(), "tls", tc != nil)
	err = st.Run(gctx, ln, ready)
	cancel()
	wg.Wait()
	select {
	case gerr := <-errs:
		return errors.Join(err, gerr)
	default:
		return err
	}
}

// stopGRPC stops srv gracefully, and at once after timeout.
func stopGRPC(srv *grpc.Server, timeout time.Duration) {
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		srv.Stop()
		<-done
	}
}
