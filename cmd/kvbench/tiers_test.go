package main

import (
	"maps"
	"testing"
)

func TestParseTierWeights(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]float64
		bad  bool
	}{
		{"", map[string]float64{}, false},
		{"cpu=0.5", map[string]float64{"cpu": 0.5}, false},
		{" cpu = 0.5 , disk=0.2,", map[string]float64{"cpu": 0.5, "disk": 0.2}, false},
		{"cpu", nil, true},
		{"cpu=fast", nil, true},
	} {
		got, err := parseTierWeights(tc.in)
		if (err != nil) != tc.bad || !tc.bad && !maps.Equal(got, tc.want) {
			t.Errorf("parseTierWeights(%q) = %v, %v; want %v (error %v)", tc.in, got, err, tc.want, tc.bad)
		}
	}
}
