package router

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestSeriesCache: the kept children are the vectors' own, a child appears only once
// updated, and a forgotten worker's sets are made anew (its series were deleted).
func TestSeriesCache(t *testing.T) {
	m, err := newMetrics(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{metrics: m}
	set := s.series("w1", "m")
	if set != s.series("w1", "m") {
		t.Fatal("a second lookup made a new set")
	}
	set.okCounter().Inc()
	set.okCounter().Inc()
	set.durationObserver().Observe(0.5)
	if got := testutil.ToFloat64(m.requests.WithLabelValues("w1", "m", "200")); got != 2 {
		t.Fatalf("requests_total{w1,m,200} = %v, want 2", got)
	}
	if n := testutil.CollectAndCount(m.promptTokens); n != 0 {
		t.Fatalf("%d prompt_tokens series before any update, want 0", n)
	}
	if n := testutil.CollectAndCount(m.duration); n != 1 {
		t.Fatalf("%d duration series, want 1", n)
	}
	s.seriesCache.forget("w1")
	if s.series("w1", "m") == set {
		t.Fatal("the set of a forgotten worker was kept")
	}
}

// BenchmarkRequestSeries compares the metric updates of one routed non-streaming
// request through label lookups and through the kept children.
func BenchmarkRequestSeries(b *testing.B) {
	m, err := newMetrics(nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	s := &Server{metrics: m}
	b.Run("labels", func(b *testing.B) {
		for b.Loop() {
			m.overlapRatio.WithLabelValues("model").Observe(0.5)
			m.promptTokens.WithLabelValues("worker-1", "model").Add(512)
			m.predictedHit.WithLabelValues("model").Add(256)
			m.ttfb.WithLabelValues("model").Observe(0.01)
			m.requests.WithLabelValues("worker-1", "model", statusLabel(200)).Inc()
			m.duration.WithLabelValues("model").Observe(0.01)
		}
	})
	b.Run("kept", func(b *testing.B) {
		for b.Loop() {
			set := s.series("worker-1", "model")
			set.overlapObserver().Observe(0.5)
			set.promptTokensCounter().Add(512)
			set.predictedHitCounter().Add(256)
			s.series("worker-1", "model").ttfbObserver().Observe(0.01)
			set = s.series("worker-1", "model")
			set.okCounter().Inc()
			set.durationObserver().Observe(0.01)
		}
	})
}
