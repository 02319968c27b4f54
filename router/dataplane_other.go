//go:build !linux

package router

import (
	"context"
	"errors"
	"net"
)

// dataPlane is the event-loop data plane, Linux only (configs refuses it elsewhere).
type dataPlane struct{}

func newDataPlane(*Server) (*dataPlane, error) {
	return nil, errors.New("data_plane: event_loop runs on Linux only")
}

func (*dataPlane) serve(net.Listener) error       { return errors.New("no event loop") }
func (*dataPlane) shutdown(context.Context) error { return nil }
func (*dataPlane) threads() []int                 { return nil }
