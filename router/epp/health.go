package epp

import (
	"context"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The gRPC health services of the endpoint picker protocol's health checking section.
const (
	// LivenessService is SERVING while the process answers.
	LivenessService = "liveness"
	// ReadinessService, and ServiceName, are SERVING while the picker can place
	// requests (ready reports true).
	ReadinessService = "readiness"
)

// Health is the grpc.health.v1 server of the picker: liveness, readiness and the
// ext_proc service (ServiceName). Register its Server on a gRPC server.
type Health struct {
	Server *health.Server
	ready  func() bool
}

// NewHealth returns the health services; ready says whether requests can be placed
// (the router is not draining and some worker is available). Readiness starts
// NOT_SERVING until [Health.Run] has looked.
func NewHealth(ready func() bool) *Health {
	h := &Health{Server: health.NewServer(), ready: ready}
	h.Server.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	h.Server.SetServingStatus(LivenessService, healthpb.HealthCheckResponse_SERVING)
	h.set(false)
	return h
}

func (h *Health) set(ready bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ready {
		st = healthpb.HealthCheckResponse_SERVING
	}
	h.Server.SetServingStatus(ReadinessService, st)
	h.Server.SetServingStatus(ServiceName, st)
}

// Run updates readiness every interval until ctx ends, then marks every service
// NOT_SERVING (a draining picker must not be sent new streams).
func (h *Health) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		h.set(h.ready())
		select {
		case <-ctx.Done():
			h.Server.Shutdown()
			return
		case <-t.C:
		}
	}
}
