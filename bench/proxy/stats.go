package proxy

import (
	"math"
	"slices"
	"time"
)

// Percentiles summarise a set of latencies, in microseconds. They are exact
// nearest-rank percentiles of the recorded samples (a sorted slice, no histogram): the
// p-th percentile is the smallest sample such that at least p% of the samples are less
// than or equal to it.
type Percentiles struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50_us"`
	P90  float64 `json:"p90_us"`
	P99  float64 `json:"p99_us"`
	Max  float64 `json:"max_us"`
	Mean float64 `json:"mean_us"`
}

// percentiles computes the summary of d; it sorts d in place. An empty d gives zeros.
func percentiles(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	slices.Sort(d)
	var sum float64
	for _, v := range d {
		sum += us(v)
	}
	return Percentiles{
		N:    len(d),
		P50:  us(rank(d, 0.50)),
		P90:  us(rank(d, 0.90)),
		P99:  us(rank(d, 0.99)),
		Max:  us(d[len(d)-1]),
		Mean: sum / float64(len(d)),
	}
}

// rank returns the nearest-rank p-quantile of the sorted, non-empty d.
func rank(d []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p*float64(len(d)))) - 1
	return d[min(max(i, 0), len(d)-1)]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
