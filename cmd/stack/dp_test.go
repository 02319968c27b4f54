package stack

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// A worker with two data-parallel ranks publishes each rank's events on its own port
// (events port + rank); with dp_ranks: 2 the router follows both, and the index holds
// blocks under both ranks.
func TestDataParallelRanksAreFollowed(t *testing.T) {
	base := freePortRun(t, 5) // HTTP, 2 event ports, 2 replay ports: rank r on port+r, as vLLM
	ss := startSimStack(t, 1, func(fc *sim.FleetConfig, _ *configs.Config) {
		fc.Worker.DataParallelSize = 2
		fc.BasePort = base
	})
	client := &http.Client{Timeout: 30 * time.Second}
	rng := rand.New(rand.NewPCG(5, 6))
	poll.CheckFor(t, 20*time.Second, "blocks indexed under both ranks", func() bool {
		msgs := []chatMsg{{Role: "user", Content: someWords(rng, 100)}}
		// Two requests at once, so kvsim's least-loaded dispatch uses both ranks.
		done := make(chan chatResult, 2)
		for range 2 {
			go func() { done <- chatOnce(client, ss.url, msgs, 32) }()
		}
		for range 2 {
			if r := <-done; r.err != nil {
				t.Fatal(r.err)
			}
		}
		ranks := map[int]bool{}
		for _, ws := range ss.stack.Index.Stats().Workers {
			if ws.Blocks[0] > 0 {
				ranks[ws.Worker.DPRank] = true
			}
		}
		return ranks[0] && ranks[1]
	})
}

// freePortRun returns the first of n consecutive free loopback ports below Linux's
// ephemeral range (so no outgoing connection takes one meanwhile).
func freePortRun(t *testing.T, n int) int {
	t.Helper()
	for try := 0; try < 100; try++ {
		base := 20000 + rand.IntN(10000)
		var lns []net.Listener
		for i := 0; i < n; i++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
			if err != nil {
				break
			}
			lns = append(lns, ln)
		}
		for _, ln := range lns {
			ln.Close()
		}
		if len(lns) == n {
			return base
		}
	}
	t.Fatal("no run of free ports")
	return 0
}
