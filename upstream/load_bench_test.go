package upstream

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkSettleSweep is one sweep of a worker's estimated first tokens, which
// [Worker.PendingPrefillTokens] runs at most once a millisecond per worker while
// non-streamed requests are in flight: 16 loads open, as under 16 closed-loop clients,
// after a burst of 0 or 10,000 loads open at once (an overload), which the sweep must
// not keep paying for.
//
//	go test -run '^$' -bench BenchmarkSettleSweep ./upstream
func BenchmarkSettleSweep(b *testing.B) {
	for _, burst := range []int{0, 10_000} {
		b.Run(fmt.Sprintf("burst=%d", burst), func(b *testing.B) {
			w := &Worker{ID: "w"}
			w.prefillNsPerToken.Store(defaultPrefillNsPerToken)
			var open []*Load
			for range burst {
				open = append(open, w.Begin(500, 4, time.Minute))
			}
			for _, l := range open {
				l.End()
			}
			for range 16 {
				w.Begin(500, 4, time.Minute).EstimateFirstToken()
			}
			now := time.Now().UnixNano() // before every estimate: nothing settles
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				w.settleEstimates(now)
			}
		})
	}
}
