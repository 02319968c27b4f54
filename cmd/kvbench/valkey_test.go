package main

import (
	"testing"

	"github.com/kvroute/kvroute/indexer/valkeyindex/valkeytest"
	"github.com/valkey-io/valkey-go"
)

// kvbench run --valkey runs each policy on the in-memory index and then on the index
// kept in a real redis/valkey server, two routers sharing it: both runs serve every
// request, and the shared one finds cached prefixes too.
func TestRunValkey(t *testing.T) {
	srv := valkeytest.Start(t)
	_, s := runReport(t, "| cache_aware_valkey |", "run", "--valkey", srv.URL(), "--replicas", "2", "--workload", "shared-prefix",
		"--groups", "2", "--prompts", "6", "--system", "256", "--question", "16", "--output", "4", "--rate", "30",
		"--workers", "3", "--profile", "test", "--policies", "cache_aware")
	if len(s.Results) != 2 || s.Results[0].Index != "" || !s.Results[0].ReplicaSync || s.Results[1].Index != "valkey" || s.Results[1].ReplicaSync {
		t.Fatalf("results %+v, want memory with NATS sync, then valkey without", s.Results)
	}
	for _, r := range s.Results {
		if r.Errors != 0 {
			t.Errorf("%s: %d errors, first: %s", r.Label(), r.Errors, r.FirstError)
		}
		// Two groups of six prompts sharing a 256-token system prompt: most find it cached.
		if r.HitRate <= 0.3 {
			t.Errorf("%s: hit rate %.3f, want above 0.3", r.Label(), r.HitRate)
		}
	}
	// The valkey run wrote its index there, under a kvbench prefix.
	c, err := valkey.NewClient(valkey.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	keys, err := c.Do(t.Context(), c.B().Keys().Pattern("kvbench:*").Build()).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) < 10 {
		t.Errorf("%d keys under kvbench:* on the server, want the run's index", len(keys))
	}
}
