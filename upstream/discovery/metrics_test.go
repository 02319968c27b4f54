package discovery

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Two sources registering on one registry share the collectors; a nil *Metrics and a
// nil registerer are both usable.
func TestMetricsShared(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	a, err := NewMetrics(reg)
	if err != nil {
		t.Fatalf("first NewMetrics: %v", err)
	}
	b, err := NewMetrics(reg)
	if err != nil {
		t.Fatalf("second NewMetrics on the same registry: %v", err)
	}
	a.Lookup("dns", true)
	a.Lookup("dns", false)
	b.Lookup("kubernetes", true)
	a.Members("dns", 3)
	b.Members("kubernetes", 5)
	b.Rejected("kubernetes", RejectInvalidWorker)
	a.Rejected("dns", RejectBadAddress)
	a.Rejected("dns", RejectBadAddress)

	for _, tc := range []struct {
		what string
		c    prometheus.Collector
		want float64
	}{
		{"dns ok lookups", b.lookups.WithLabelValues("dns", "ok"), 1},
		{"dns error lookups", b.lookups.WithLabelValues("dns", "error"), 1},
		{"kubernetes ok lookups", a.lookups.WithLabelValues("kubernetes", "ok"), 1},
		{"dns members", b.members.WithLabelValues("dns"), 3},
		{"kubernetes members", a.members.WithLabelValues("kubernetes"), 5},
		{"dns bad_address", b.rejected.WithLabelValues("dns", RejectBadAddress), 2},
		{"kubernetes invalid_worker", a.rejected.WithLabelValues("kubernetes", RejectInvalidWorker), 1},
	} {
		if got := testutil.ToFloat64(tc.c); got != tc.want {
			t.Errorf("%s = %v, want %v", tc.what, got, tc.want)
		}
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 7 {
		t.Errorf("gathered %d series (err %v), want 7", n, err)
	}

	var none *Metrics
	none.Lookup("dns", true)
	none.Members("dns", 1)
	none.Rejected("dns", RejectBadPort)
	if m, err := NewMetrics(nil); err != nil || m == nil {
		t.Errorf("NewMetrics(nil) = %v, %v; want unregistered metrics", m, err)
	}
}
