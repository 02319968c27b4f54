package proxy

import (
	"testing"
	"time"
)

func TestPercentiles(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // reversed: percentiles must sort
	}
	for _, tc := range []struct {
		name               string
		in                 []time.Duration
		p50, p90, p99, max float64 // ms
	}{
		{"empty", nil, 0, 0, 0, 0},
		{"one", ms(7), 7, 7, 7, 7},
		{"two", ms(2, 1), 1, 2, 2, 2},
		{"ten", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 5, 9, 10, 10},
		{"hundred", ms(hundred...), 50, 90, 99, 100},
	} {
		p := percentiles(tc.in)
		if p.N != len(tc.in) || p.P50 != tc.p50*1000 || p.P90 != tc.p90*1000 || p.P99 != tc.p99*1000 || p.Max != tc.max*1000 {
			t.Errorf("%s: got %+v, want p50 %v p90 %v p99 %v max %v ms", tc.name, p, tc.p50, tc.p90, tc.p99, tc.max)
		}
	}
}
