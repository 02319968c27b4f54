package stack

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// This file keeps the index's snapshot file (index.snapshot_file): restored at start,
// rewritten every index.snapshot_interval and at shutdown.

// restoreSnapshot loads the snapshot file into the index, if one is configured and
// exists. Run calls it before the event feeds start: a feed's first batch then drops
// the restored event-backed entries of its worker (ReasonStart: ClearEvents) and its
// replay rebuilds them, so nothing the feed has changed since survives; the restored
// predictions stay until their expiry, which the snapshot carries. A missing file is a
// cold start; an unreadable or malformed one is logged and ignored (Restore leaves the
// index unchanged), never fatal: a router must start whatever is on its disk.
func (st *Stack) restoreSnapshot() {
	path := st.Config.Index.SnapshotFile
	if path == "" {
		return
	}
	start := time.Now()
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		st.log.Info("index snapshot: none yet, starting cold", "file", path)
		return
	}
	if err != nil {
		st.log.Error("index snapshot not restored", "file", path, "err", err)
		return
	}
	defer func() { _ = f.Close() }()
	if err := st.Backend().Restore(f); err != nil {
		st.log.Error("index snapshot not restored", "file", path, "err", err)
		return
	}
	s := st.Index.Stats()
	st.log.Info("index snapshot restored", "file", path, "blocks", s.Blocks, "workers", len(s.Workers),
		"predicted", s.PredictedEntries, "took", time.Since(start).Round(time.Millisecond).String())
}

// WriteSnapshot writes the index to the snapshot file: to a temporary file in the same
// directory, synced, then renamed over the file (and the directory synced), so a crash
// leaves the old snapshot or the new one, never a torn one. A no-op without
// index.snapshot_file.
func (st *Stack) WriteSnapshot() error {
	path := st.Config.Index.SnapshotFile
	if path == "" {
		return nil
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("index snapshot: %w", err)
	}
	done := false
	defer func() {
		if !done {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := st.Index.Dump(tmp); err != nil {
		return fmt.Errorf("index snapshot %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("index snapshot %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("index snapshot %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		_ = os.Remove(tmp.Name())
		done = true
		return fmt.Errorf("index snapshot: %w", err)
	}
	done = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // the rename itself; not every file system supports it
		_ = d.Close()
	}
	return nil
}

// runSnapshots rewrites the snapshot file every index.snapshot_interval until ctx ends,
// then once more: Run ends ctx after the drain, so the last write holds the routing
// decisions of the last requests.
func (st *Stack) runSnapshots(ctx context.Context) {
	if st.Config.Index.SnapshotFile == "" {
		return
	}
	write := func() {
		start := time.Now()
		if err := st.WriteSnapshot(); err != nil {
			st.log.Error("index snapshot not written", "err", err)
			return
		}
		st.log.Debug("index snapshot written", "file", st.Config.Index.SnapshotFile, "took", time.Since(start).String())
	}
	t := time.NewTicker(st.Config.Index.SnapshotInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			write()
			return
		case <-t.C:
			write()
		}
	}
}
