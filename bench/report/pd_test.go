package report

import (
	"context"
	"strings"
	"testing"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/bench/workload"
)

// Compare refuses a P/D fleet without a prefill or a decode worker, or with an unknown
// protocol, before starting anything.
func TestComparePDRefusesBadConfig(t *testing.T) {
	w, err := workload.SharedPrefix(workload.SharedPrefixConfig{Groups: 1, Prompts: 1, System: 16, Question: 4, Output: 2, Rate: 10, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		pd   PD
		want string
	}{
		{PD{Prefill: 0, Decode: 1, Protocol: "vllm"}, "at least 1 of each"},
		{PD{Prefill: 1, Decode: 0, Protocol: "sglang"}, "at least 1 of each"},
		{PD{Prefill: 1, Decode: 1, Protocol: "nixl"}, `protocol "nixl" is not vllm or sglang`},
	} {
		pd := tc.pd
		res, err := Compare(context.Background(), w, Config{Fleet: sim.DefaultFleetConfig(), Policies: []string{"round_robin"}, PD: &pd})
		if err == nil || !strings.Contains(err.Error(), tc.want) || len(res) != 0 {
			t.Errorf("%+v: %d results, error %v; want none and %q", tc.pd, len(res), err, tc.want)
		}
	}
}
