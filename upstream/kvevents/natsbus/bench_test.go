package natsbus_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/upstream/kvevents/natsbus"
)

type countSink struct{ batches, events atomic.Int64 }

func (s *countSink) Apply(_ proto.WorkerKey, _ string, b *proto.Batch) {
	s.events.Add(int64(len(b.Events)))
	s.batches.Add(1)
}
func (s *countSink) Reset(proto.WorkerKey, string) {}

// BenchmarkNATSRoundTrip measures Publisher -> embedded nats-server (core NATS) ->
// Consumer -> sink for batches of 12 events (8 stores of 4 blocks with 64 tokens, 4
// removals), on loopback. Reports batches/s and events/s. Compare two runs with:
//
//	go test -run '^$' -bench NATSRoundTrip -count 5 ./upstream/kvevents/natsbus/ > new.txt && benchstat old.txt new.txt
func BenchmarkNATSRoundTrip(b *testing.B) {
	e, err := natsbus.StartEmbedded(natsbus.EmbeddedOptions{NoJetStream: true})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Shutdown()
	ncP, err := nats.Connect(e.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer ncP.Close()
	ncC, err := nats.Connect(e.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer ncC.Close()
	sink := &countSink{}
	c, err := natsbus.NewConsumer(ncC, sink, natsbus.ConsumerOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.Run(ctx) }()
	<-c.Ready()
	p := natsbus.NewPublisher(ncP, natsbus.PublisherOptions{})
	batch := benchBatch()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		batch.Seq = uint64(i)
		p.Apply(w1, "m", &batch)
	}
	poll.CheckFor(b, time.Minute, "all batches applied", func() bool { return sink.batches.Load() == int64(b.N) })
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "batches/s")
	b.ReportMetric(float64(sink.events.Load())/b.Elapsed().Seconds(), "events/s")
	if st := c.States(); len(st) != 1 || st[0].Gaps != 0 {
		b.Fatalf("states %+v: messages lost", st)
	}
}

func benchBatch() proto.Batch {
	b := proto.Batch{TS: 1.75e9, DPRank: 0}
	tokens := make([]uint32, 64)
	for i := range tokens {
		tokens[i] = uint32(1000 + i*37)
	}
	for i := range 8 {
		h := proto.EngineHash(uint64(i) * 0x9E3779B97F4A7C15)
		b.Events = append(b.Events, proto.Event{Kind: proto.BlockStored, BlockHashes: []proto.EngineHash{h, h + 1, h + 2, h + 3},
			HasParent: i > 0, ParentHash: h - 1, TokenIDs: tokens, BlockSize: 16, Medium: "GPU"})
	}
	for i := range 4 {
		h := proto.EngineHash(uint64(i) * 0x9E3779B97F4A7C15)
		b.Events = append(b.Events, proto.Event{Kind: proto.BlockRemoved, BlockHashes: []proto.EngineHash{h, h + 1, h + 2, h + 3}, Medium: "GPU"})
	}
	return b
}
