package configs

import (
	"path/filepath"
	"time"
)

// Index configures the prefix index's persistence. The index itself (size, prediction
// TTL) is configured under cache_aware.
type Index struct {
	// SnapshotFile, when set, is where serve and indexer keep a snapshot of the index
	// (the format of GET /api/index/snapshot): read at start, before the event feeds
	// connect, so a lone router restarts warm; written every SnapshotInterval and at
	// shutdown (to a temporary file in the same directory, synced, then renamed over
	// it). A missing file at start is a cold start; an unreadable one is logged and
	// ignored. The first batch of each worker's event feed still drops that worker's
	// restored event-backed entries (the feed says nothing of what happened while the
	// router was down) and rebuilds them from the feed's replay; the restored
	// predictions stay until their expiry. Default "" (no snapshot).
	SnapshotFile string `yaml:"snapshot_file"`
	// SnapshotInterval is how often the snapshot file is rewritten while running; at
	// least 1s. Default 60s.
	SnapshotInterval time.Duration `yaml:"snapshot_interval"`
}

func defaultIndex() Index { return Index{SnapshotInterval: 60 * time.Second} }

// validate appends the index settings' problems with bad.
func (ix *Index) validate(bad func(format string, args ...any)) {
	if ix.SnapshotInterval < time.Second {
		bad("index.snapshot_interval: %q must be at least 1s", ix.SnapshotInterval.String())
	}
	if f := ix.SnapshotFile; f != "" && (filepath.Base(f) == "." || filepath.Base(f) == string(filepath.Separator) || f[len(f)-1] == '/') {
		bad("index.snapshot_file: %q must name a file, not a directory", f)
	}
}
