package configs

import (
	"net/url"
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
	// Backend is where Match looks: "memory" (this process's index only) or "valkey"
	// (an index kept in a Valkey or Redis server and shared by every router and
	// indexer pointed at it; package indexer/valkeyindex). Default "memory".
	Backend string `yaml:"backend"`
	// Valkey configures backend valkey.
	Valkey Valkey `yaml:"valkey"`
}

// Valkey configures the index kept in a Valkey or Redis server (index.backend: valkey).
type Valkey struct {
	// URL is the server: redis://[user:password@]host:port[/db], rediss:// for TLS
	// (valkey:// and valkeys:// too). Required with backend valkey.
	URL string `yaml:"url"`
	// Prefix starts every key kvroute writes; processes sharing one index use the same
	// prefix, and different fleets on one server different ones. Default "kvroute:".
	Prefix string `yaml:"prefix"`
	// Timeout bounds one Match round trip; past it (or on any error) the request is
	// matched on this process's own entries and the server is considered down until it
	// answers a ping. At least 1ms. Default 50ms.
	Timeout time.Duration `yaml:"timeout"`
}

func defaultIndex() Index {
	return Index{SnapshotInterval: 60 * time.Second, Backend: "memory",
		Valkey: Valkey{Prefix: "kvroute:", Timeout: 50 * time.Millisecond}}
}

// validate appends the index settings' problems with bad.
func (ix *Index) validate(bad func(format string, args ...any)) {
	if ix.SnapshotInterval < time.Second {
		bad("index.snapshot_interval: %q must be at least 1s", ix.SnapshotInterval.String())
	}
	if f := ix.SnapshotFile; f != "" && (filepath.Base(f) == "." || filepath.Base(f) == string(filepath.Separator) || f[len(f)-1] == '/') {
		bad("index.snapshot_file: %q must name a file, not a directory", f)
	}
	switch ix.Backend {
	case "memory":
	case "valkey":
		if ix.Valkey.URL == "" {
			bad("index.valkey.url: required with index.backend valkey (redis://HOST:PORT)")
		} else if u, err := url.Parse(ix.Valkey.URL); err != nil {
			bad("index.valkey.url: %q: %v", ix.Valkey.URL, err)
		} else if s := u.Scheme; s != "redis" && s != "rediss" && s != "valkey" && s != "valkeys" || u.Host == "" {
			bad("index.valkey.url: %q must be redis://HOST:PORT (or rediss://, valkey://, valkeys://)", ix.Valkey.URL)
		}
		if ix.Valkey.Timeout < time.Millisecond {
			bad("index.valkey.timeout: %q must be at least 1ms", ix.Valkey.Timeout.String())
		}
	default:
		bad("index.backend: %q must be memory or valkey", ix.Backend)
	}
}
