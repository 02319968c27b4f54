package proto_test

import (
	"testing"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest"
)

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

// BenchmarkDecodeBatch measures decode throughput per wire variant; events/s is
// reported as a custom metric. Compare two runs with:
//
//	go test -run '^$' -bench DecodeBatch -count 10 ./proto/ > new.txt && benchstat old.txt new.txt
func BenchmarkDecodeBatch(b *testing.B) {
	in := benchBatch()
	for _, name := range []string{"vllm-array", "vllm-array-v0.9", "vllm-map-batch", "vllm-array-digest", "vllm-map-digest-unknown", "sglang-array"} {
		payload := prototest.EncodeBatch(&in, styles[name])
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(payload)))
			var out proto.Batch
			for b.Loop() {
				if err := proto.DecodeBatch(payload, &out); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(in.Events))*float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkEnvelope measures the NATS envelope encode and decode of the same batch.
// Compare two runs with:
//
//	go test -run '^$' -bench Envelope -count 10 ./proto/ > new.txt && benchstat old.txt new.txt
func BenchmarkEnvelope(b *testing.B) {
	env := proto.Envelope{Kind: proto.EnvelopeBatch, Worker: "http://10.0.0.1:8000", Model: "m", DPRank: 0, Batch: benchBatch()}
	data := proto.AppendEnvelope(nil, &env)
	b.Run("encode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		buf := make([]byte, 0, len(data))
		for b.Loop() {
			buf = proto.AppendEnvelope(buf[:0], &env)
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		var out proto.Envelope
		for b.Loop() {
			if err := proto.DecodeEnvelope(data, &out); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(env.Batch.Events))*float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
}
