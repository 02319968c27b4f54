package indexer

import (
	"context"
	"time"
)

// Run sweeps expired predictions every interval (1 s when interval <= 0) until ctx ends,
// so that predictions expire on time even when no events or predictions arrive. Apply and
// Predict sweep on their own; without Run, an idle index reports expired predictions until
// its next write.
func (ix *Index) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			ix.Sweep()
		}
	}
}
