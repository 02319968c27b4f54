package upstream

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkSettleSweep is one settle of a worker's estimated first tokens, which
// [Worker.PendingPrefillTokens] runs at most once a millisecond per worker while
// non-streamed requests are in flight, none due: 16 loads open, as under 16
// closed-loop clients, after a burst of 0 or 10,000 loads open at once (an overload
// that has passed, which a settle must not keep paying for), and 4,096 loads open (an
// overload under way, as with kvbench's open loop at nginx's half peak).
//
//	go test -run '^$' -bench BenchmarkSettleSweep ./upstream
func BenchmarkSettleSweep(b *testing.B) {
	for _, c := range []struct{ burst, open int }{{0, 16}, {10_000, 16}, {0, 4096}} {
		b.Run(fmt.Sprintf("burst=%d/open=%d", c.burst, c.open), func(b *testing.B) {
			w := &Worker{ID: "w"}
			w.prefillNsPerToken.Store(defaultPrefillNsPerToken)
			var burst []*Load
			for range c.burst {
				burst = append(burst, w.Begin(500, 4, time.Minute))
			}
			for _, l := range burst {
				l.End()
			}
			for range c.open {
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

// BenchmarkLoadLifecycle is a non-streamed request's bookkeeping on its worker, with 16
// other requests open with estimates: Begin, EstimateFirstToken (at the response's
// headers) and End.
//
//	go test -run '^$' -bench BenchmarkLoadLifecycle ./upstream
func BenchmarkLoadLifecycle(b *testing.B) {
	w := &Worker{ID: "w"}
	w.prefillNsPerToken.Store(defaultPrefillNsPerToken)
	for range 16 {
		w.Begin(500, 4, time.Minute).EstimateFirstToken()
	}
	b.ReportAllocs()
	for b.Loop() {
		l := w.Begin(500, 4, time.Minute)
		l.EstimateFirstToken()
		l.End()
	}
}
