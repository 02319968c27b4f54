package sim

import (
	"context"
	"errors"
	"fmt"
)

// Fleet is a set of workers started together.
type Fleet struct {
	workers []*Worker
}

// StartFleet validates cfg and starts cfg.Workers workers with ids "w0", "w1", ... (the
// prefix is cfg.IDPrefix, "w" when empty);
// worker i's seed is cfg.Worker.Seed+i. On error the workers already started are closed.
func StartFleet(ctx context.Context, cfg FleetConfig) (*Fleet, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("start fleet: %w", err)
	}
	f := &Fleet{}
	for i := range cfg.Workers {
		wc := cfg.Worker
		wc.Seed += int64(i)
		if wc.BootstrapPort > 0 && wc.role() == RolePrefill {
			wc.BootstrapPort += i // decode workers share it: the default pull port
		}
		var hp, ep, rp int
		if cfg.BasePort > 0 {
			base, dp := cfg.BasePort+cfg.portStride()*i, cfg.Worker.DataParallelSize
			hp, ep, rp = base, base+1, base+1+dp
		}
		prefix := cfg.IDPrefix
		if prefix == "" {
			prefix = "w"
		}
		w, err := StartWorker(ctx, fmt.Sprintf("%s%d", prefix, i), wc, cfg.Host, hp, ep, rp)
		if err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("start fleet: %w", err)
		}
		f.workers = append(f.workers, w)
	}
	return f, nil
}

// Workers returns the fleet's workers in id order. The slice must not be modified.
func (f *Fleet) Workers() []*Worker { return f.workers }

// Infos returns every worker's id and endpoints.
func (f *Fleet) Infos() []Info {
	out := make([]Info, len(f.workers))
	for i, w := range f.workers {
		out[i] = w.Info()
	}
	return out
}

// Close stops every worker at once.
func (f *Fleet) Close() error {
	var err error
	for _, w := range f.workers {
		err = errors.Join(err, w.Close())
	}
	return err
}

// Shutdown stops every worker gracefully: no new requests, in-flight ones finish unless
// ctx ends first.
func (f *Fleet) Shutdown(ctx context.Context) error {
	errs := make(chan error, len(f.workers))
	for _, w := range f.workers {
		go func() { errs <- w.Shutdown(ctx) }()
	}
	var err error
	for range f.workers {
		err = errors.Join(err, <-errs)
	}
	return err
}
