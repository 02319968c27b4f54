package router

import (
	"slices"
	"testing"

	"github.com/valyala/fasthttp"
)

// stripHopByHop removes the hop-by-hop fields and those Connection names, in any case
// and wherever they sit, keeps the rest, and allocates a bounded amount.
func TestStripHopByHop(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   [][2]string
		keep []string
	}{
		{"none", [][2]string{{"X-A", "1"}, {"Content-Type", "application/json"}}, []string{"Content-Type", "X-A"}},
		{"static", [][2]string{{"Keep-Alive", "timeout=5"}, {"TE", "trailers"}, {"Upgrade", "h2c"}, {"X-A", "1"}}, []string{"X-A"}},
		{"named after", [][2]string{{"Connection", "keep-alive, X-Hop"}, {"X-Hop", "1"}, {"X-A", "1"}}, []string{"X-A"}},
		{"named before", [][2]string{{"x-hop", "1"}, {"X-A", "1"}, {"CONNECTION", " X-HOP ,,x-other"}, {"X-Other", "2"}}, []string{"X-A"}},
		{"duplicates", [][2]string{{"Proxy-Connection", "a"}, {"Proxy-Connection", "b"}, {"X-A", "1"}}, []string{"X-A"}},
	} {
		var h fasthttp.RequestHeader
		h.DisableNormalizing()
		for _, kv := range tc.in {
			h.Add(kv[0], kv[1])
		}
		var sc hopScratch
		stripHopByHop(&h, &sc)
		var got []string
		for k := range h.All() {
			if string(k) != "Content-Length" && string(k) != "User-Agent" {
				got = append(got, string(k))
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, tc.keep) {
			t.Errorf("%s: kept %q, want %q", tc.name, got, tc.keep)
		}
	}
	var h fasthttp.RequestHeader
	h.Add("Connection", "keep-alive, X-Hop")
	h.Add("X-A", "1")
	var sc hopScratch
	if n := testing.AllocsPerRun(100, func() { stripHopByHop(&h, &sc) }); n > 4 {
		t.Errorf("stripHopByHop: %v allocations, want at most 4", n)
	}
}
