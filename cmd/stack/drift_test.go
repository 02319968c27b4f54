package stack

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// With a deliberately wrong block size, the router cannot see the engine's cache: a
// router that starts next to a warm engine (as after a restart) predicts no hits where
// the engine reports them, and the drift detector fires within 60 s. With the right
// block size it stays quiet.
func TestDriftDetectorFiresOnWrongBlockSize(t *testing.T) {
	for _, tc := range []struct {
		name       string
		blockSize  int
		wantDrift  bool
		wantRepHit bool
	}{
		{"wrong block size", 32, true, true},
		{"right block size", 16, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ss := startSimStack(t, 1, func(fc *sim.FleetConfig, cfg *configs.Config) {
				fc.Worker.BlockSize = 16
				cfg.CacheAware.BlockSize = tc.blockSize
			})
			worker := ss.fleet.Infos()[0]
			rng := rand.New(rand.NewPCG(3, 4))
			var convs [][]chatMsg
			for i := range 12 {
				convs = append(convs, []chatMsg{{Role: "system", Content: fmt.Sprintf("Assistant %d. %s", i, someWords(rng, 300))},
					{Role: "user", Content: someWords(rng, 10)}})
			}
			for _, c := range convs { // warm the engine without the router
				if r := chatOnce(http.DefaultClient, worker.URL, c, 1); r.err != nil {
					t.Fatal(r.err)
				}
			}
			start := time.Now()
			fired := false
			for i := 0; time.Since(start) < 60*time.Second && !fired; i++ {
				r := chatOnce(http.DefaultClient, ss.url, convs[i%len(convs)], 1)
				if r.err != nil {
					t.Fatal(r.err)
				}
				if tc.wantRepHit && r.cached == 0 {
					t.Fatalf("the warm engine reported no cached tokens: %+v", r)
				}
				fired = metricSum(t, ss.stack.Registry, "kvroute_router_prediction_drift") > 0
				if !tc.wantDrift && i >= 2*len(convs) {
					break
				}
			}
			if fired != tc.wantDrift {
				t.Fatalf("drift fired %v after %s, want %v", fired, time.Since(start).Round(time.Millisecond), tc.wantDrift)
			}
			if fired {
				t.Logf("drift detected %s after the first request", time.Since(start).Round(time.Millisecond))
			}
			if !tc.wantDrift { // with events and the right block size, the two rates agree
				rep := ss.stack.Server.Traffic().Windows[0].Global.Reported
				if rep.PredictedRate == nil || rep.ReportedRate == nil {
					t.Fatalf("no reported figures: %+v", rep)
				}
				t.Logf("predicted %.3f, reported %.3f over %d answers", *rep.PredictedRate, *rep.ReportedRate, rep.Answers)
				if d := *rep.PredictedRate - *rep.ReportedRate; d > 0.02 || d < -0.02 {
					t.Errorf("predicted %.3f and reported %.3f hit rates differ by more than 2 points", *rep.PredictedRate, *rep.ReportedRate)
				}
			}
			poll.CheckFor(t, 10*time.Second, "the engine's own prefix-cache counters exported", func() bool {
				return metricSum(t, ss.stack.Registry, "kvroute_engine_prefix_cache_hits_tokens_total") > 0 &&
					metricSum(t, ss.stack.Registry, "kvroute_engine_prefix_cache_queries_tokens_total") > 0
			})
			poll.CheckFor(t, 5*time.Second, "reported figures in the API", func() bool {
				d := ss.stack.Server.Decisions(1)
				return len(d) == 1 && d[0].Reported != nil && d[0].Reported.CachedTokens > 0
			})
		})
	}
}
