package sim

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/kvroute/kvroute/bench/sim/kvevents"
)

// Rank is one data-parallel engine of a worker: its own scheduler, KV cache and event
// publisher, as each DP rank of a vLLM server is (a worker has data_parallel_size ranks,
// one by default). Its methods are safe for concurrent use. It must not be copied.
type Rank struct {
	index int
	eng   *engine
	pub   *kvevents.Publisher
	stats engineStats
	m     *rankMetrics
	done  chan struct{} // closed when the engine loop returned
	// blocks is the KV-cache capacity in blocks.
	blocks int
}

// startRank binds rank i's event sockets and starts its engine loop.
func startRank(ctx context.Context, w *Worker, i int, host string, eventsPort, replayPort, capacity int) (*Rank, error) {
	shift := func(port int) int {
		if port == 0 {
			return 0
		}
		return port + i // vLLM shifts both ports by the DP rank
	}
	pub, err := kvevents.Listen(ctx, kvevents.Config{
		Endpoint:       fmt.Sprintf("tcp://%s:%d", host, shift(eventsPort)),
		ReplayEndpoint: fmt.Sprintf("tcp://%s:%d", host, shift(replayPort)),
		Topic:          w.cfg.Topic,
		BufferSteps:    w.cfg.BufferSteps,
	})
	if err != nil {
		return nil, fmt.Errorf("dp rank %d: %w", i, err)
	}
	rk := &Rank{index: i, pub: pub, done: make(chan struct{}), blocks: capacity}
	seed := xxhash.Sum64String("kvsim-engine-seed/" + strconv.FormatInt(w.cfg.Seed, 10) + "/" + strconv.Itoa(i))
	dpRank := -1
	if w.cfg.DPRank >= 0 {
		dpRank = w.cfg.DPRank + i
	}
	rk.eng = newEngine(&w.cfg, w.prof, capacity, pub, seed, dpRank, &rk.stats)
	rk.m = w.metrics.rank(i, &rk.stats)
	go func() {
		defer close(rk.done)
		rk.eng.run(ctx)
	}()
	return rk, nil
}

// close waits for the engine loop (its context must have ended) and closes the sockets.
func (rk *Rank) close() error {
	<-rk.done
	return rk.pub.Close()
}

// Index returns the rank's data-parallel index, from 0.
func (rk *Rank) Index() int { return rk.index }

// EventsEndpoint returns the rank's KV-event PUB endpoint, "tcp://127.0.0.1:port".
func (rk *Rank) EventsEndpoint() string { return rk.pub.Endpoint() }

// ReplayEndpoint returns the rank's KV-event replay ROUTER endpoint.
func (rk *Rank) ReplayEndpoint() string { return rk.pub.ReplayEndpoint() }

// EventsSubscribed reports whether a subscription matching the topic has reached the
// rank's PUB socket (ZMQ drops messages published before that).
func (rk *Rank) EventsSubscribed() bool { return rk.pub.Subscribed() }

// CachedBlockHashes returns the engine hashes of every block in the rank's prefix cache
// (once per cached copy), in no particular order.
func (rk *Rank) CachedBlockHashes() []uint64 { return rk.eng.cachedHashes() }

// Stats returns a snapshot of the rank's engine and event counters (the fault counters
// are the worker's and stay zero here).
func (rk *Rank) Stats() Stats {
	st := &rk.stats
	next, sent, dropped := rk.pub.Stats()
	return Stats{
		Requests: st.requests.Load(), Finished: st.finished.Load(), Aborted: st.aborted.Load(),
		PromptTokens: st.promptTokens.Load(), CachedTokens: st.cachedTokens.Load(),
		GeneratedTokens: st.generatedTokens.Load(), Preemptions: st.preemptions.Load(),
		Steps: st.steps.Load(), BusyTime: time.Duration(st.busyNanos.Load()),
		LagTime: time.Duration(st.lagNanos.Load()),
		Running: int(st.running.Load()), Waiting: int(st.waiting.Load()),
		UsedBlocks: int(st.usedBlocks.Load()), CachedBlocks: int(st.cachedBlocks.Load()),
		TotalBlocks: rk.blocks, CPULoadedTokens: st.cpuLoadedTokens.Load(), CPUBlocks: int(st.cpuBlocks.Load()),
		NextSeq: next, EventBatchesSent: sent, EventBatchesDropped: dropped,
	}
}

// load is vLLM's data-parallel load-balancing score (waiting*4 + running).
func (rk *Rank) load() int64 { return 4*rk.stats.waiting.Load() + rk.stats.running.Load() }

// add sums o into s (counters and gauges; used to aggregate ranks).
func (s *Stats) add(o Stats) {
	s.Requests += o.Requests
	s.Finished += o.Finished
	s.Aborted += o.Aborted
	s.PromptTokens += o.PromptTokens
	s.CachedTokens += o.CachedTokens
	s.GeneratedTokens += o.GeneratedTokens
	s.Preemptions += o.Preemptions
	s.Steps += o.Steps
	s.BusyTime += o.BusyTime
	s.LagTime += o.LagTime
	s.Running += o.Running
	s.Waiting += o.Waiting
	s.UsedBlocks += o.UsedBlocks
	s.CachedBlocks += o.CachedBlocks
	s.TotalBlocks += o.TotalBlocks
	s.CPULoadedTokens += o.CPULoadedTokens
	s.CPUBlocks += o.CPUBlocks
	s.NextSeq += o.NextSeq
	s.EventBatchesSent += o.EventBatchesSent
	s.EventBatchesDropped += o.EventBatchesDropped
}

// closeRanks closes every started rank.
func closeRanks(ranks []*Rank) error {
	var err error
	for _, rk := range ranks {
		err = errors.Join(err, rk.close())
	}
	return err
}
