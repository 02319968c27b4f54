package kvevents_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	ingest "github.com/kvroute/kvroute/upstream/kvevents"
	"github.com/kvroute/kvroute/upstream/kvevents/kvtest"
)

// countSink counts applied batches and events; it keeps nothing.
type countSink struct{ batches, events atomic.Int64 }

func (s *countSink) Apply(_ proto.WorkerKey, _ string, b *proto.Batch) {
	s.events.Add(int64(len(b.Events)))
	s.batches.Add(1)
}
func (s *countSink) Reset(proto.WorkerKey, string) {}

// BenchmarkTrackerInOrder measures the sequence state machine alone on in-order batches
// (the steady state): no sockets, no decoding. Compare two runs with:
//
//	go test -run '^$' -bench TrackerInOrder -count 10 ./upstream/kvevents/ > new.txt && benchstat old.txt new.txt
func BenchmarkTrackerInOrder(b *testing.B) {
	sink := &countSink{}
	tr := ingest.NewTracker(w1, sink, ingest.TrackerOptions{Model: "m"})
	batch := prototest.Sample(1)
	ctx := context.Background()
	b.ReportAllocs()
	var seq uint64
	for b.Loop() {
		batch.Seq = seq
		seq++
		tr.Batch(ctx, &batch)
	}
}

// BenchmarkZMQIngest measures end-to-end ingest through a real loopback ZMQ socket: a
// zmq4 PUB sends pre-encoded vLLM map-format batches of 12 events (8 stores of 4 blocks,
// 4 removals), and the source decodes and applies them in order. Reports batches/s and
// events/s. Compare two runs with:
//
//	go test -run '^$' -bench ZMQIngest -count 5 ./upstream/kvevents/ > new.txt && benchstat old.txt new.txt
func BenchmarkZMQIngest(b *testing.B) {
	port := kvtest.FreePort(b)
	ep := "tcp://127.0.0.1:" + strconv.Itoa(port)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pub := zmq4.NewPub(ctx)
	if err := pub.Listen(ep); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = pub.Close() }()
	sink := &countSink{}
	m, err := ingest.NewManager(ingest.Options{Sink: sink, DeadAfter: -1})
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Add(ingest.WorkerConfig{Worker: "w", Endpoint: ep}); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = m.Run(ctx)
	}()
	tp := pub.(zmq4.Topics)
	poll.CheckFor(b, 10*time.Second, "subscription", func() bool { return len(tp.Topics()) > 0 })

	in := benchBatch()
	payload := prototest.EncodeBatch(&in, prototest.Style{MapEvents: true})
	b.ReportAllocs()
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	for i := range b.N {
		if err := pub.SendMulti(zmq4.NewMsgFrom(nil, proto.SeqBytes(uint64(i)), payload)); err != nil {
			b.Fatal(err)
		}
	}
	poll.CheckFor(b, time.Minute, "all batches applied", func() bool { return sink.batches.Load() == int64(b.N) })
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "batches/s")
	b.ReportMetric(float64(sink.events.Load())/b.Elapsed().Seconds(), "events/s")
	if st := m.States(); st[0].Gaps != 0 {
		b.Fatalf("%d gaps: the benchmark lost messages", st[0].Gaps)
	}
	cancel()
	<-done
}

// benchBatch is a realistic engine step: 8 BlockStored events of 4 blocks of 16 tokens
// and 4 BlockRemoved events of 4 blocks.
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
