package proto_test

import (
	"bytes"
	"testing"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest"
)

// FuzzDecodeBatch feeds arbitrary payloads to DecodeBatch, seeded with every real wire
// variant. It checks: no panic; a decoded batch is well-formed; decoding into a dirty,
// reused Batch gives the same result as into a fresh one.
func FuzzDecodeBatch(f *testing.F) {
	for _, st := range styles {
		for seed := range uint64(2) {
			in := prototest.Sample(seed)
			f.Add(prototest.EncodeBatch(&in, st))
		}
	}
	dirty := prototest.Sample(9)
	f.Fuzz(func(t *testing.T, payload []byte) {
		var fresh proto.Batch
		err := proto.DecodeBatch(payload, &fresh)
		reused := deepCopy(&dirty)
		err2 := proto.DecodeBatch(payload, &reused)
		if (err == nil) != (err2 == nil) {
			t.Fatalf("fresh err %v, reused err %v", err, err2)
		}
		if err != nil {
			return
		}
		if d := prototest.Diff(&reused, &fresh); d != "" {
			t.Fatalf("reused batch differs: %s", d)
		}
		for i, ev := range fresh.Events {
			if ev.Kind < proto.BlockStored || ev.Kind > proto.AllBlocksCleared || ev.Medium == "" {
				t.Fatalf("event %d malformed: %+v", i, ev)
			}
		}
		// A decoded batch survives the NATS envelope unchanged.
		env := proto.Envelope{Kind: proto.EnvelopeBatch, Worker: "w", DPRank: -1, Batch: fresh}
		var back proto.Envelope
		if err := proto.DecodeEnvelope(proto.AppendEnvelope(nil, &env), &back); err != nil {
			t.Fatalf("envelope of a decoded batch: %v", err)
		}
		if d := prototest.Diff(&back.Batch, &fresh); d != "" {
			t.Fatalf("envelope round trip: %s", d)
		}
	})
}

// FuzzDecodeFrames splits the input into frames at 0x00 0x00 and decodes them as a PUB
// message and as a replay reply: no panic, and a decoded seq equals the frame's bytes.
func FuzzDecodeFrames(f *testing.F) {
	in := prototest.Sample(1)
	payload := prototest.EncodeBatch(&in, prototest.Style{})
	join := func(fr ...[]byte) []byte { return bytes.Join(fr, []byte{0, 0}) }
	f.Add(join([]byte("kv@tcp"), proto.SeqBytes(3), payload))
	f.Add(join(nil, proto.SeqBytes(proto.ReplayEndSeq), nil))
	f.Add(join(nil, proto.SeqBytes(12), payload))
	f.Fuzz(func(t *testing.T, data []byte) {
		frames := bytes.Split(data, []byte{0, 0})
		if _, seq, _, err := proto.DecodeFrames(frames); err == nil && !bytes.Equal(proto.SeqBytes(seq), frames[1]) {
			t.Fatalf("seq %d does not match frame %x", seq, frames[1])
		}
		if seq, end, _, err := proto.DecodeReplayFrames(frames); err == nil && end != (seq == proto.ReplayEndSeq) {
			t.Fatalf("end %v for seq %d", end, seq)
		}
	})
}

// FuzzDecodeEnvelope feeds arbitrary bytes to DecodeEnvelope, seeded with encoded
// batches and resets. A decoded envelope must re-encode to bytes that decode to the same
// envelope (the encoding is canonical up to string reuse).
func FuzzDecodeEnvelope(f *testing.F) {
	for seed := range uint64(3) {
		env := proto.Envelope{Kind: proto.EnvelopeBatch, Worker: "http://10.0.0.1:8000", Model: "m", DPRank: int(seed) - 1, Batch: prototest.Sample(seed)}
		env.Batch.Seq = seed * 1000
		f.Add(proto.AppendEnvelope(nil, &env))
	}
	f.Add(proto.AppendEnvelope(nil, &proto.Envelope{Kind: proto.EnvelopeReset, Worker: "w", DPRank: 2, Reason: "gap"}))
	f.Add(proto.AppendEnvelope(nil, &proto.Envelope{Kind: proto.EnvelopeHeartbeat, Worker: "http://w:8000", Model: "m", DPRank: 0}))
	f.Fuzz(func(t *testing.T, data []byte) {
		var e proto.Envelope
		if err := proto.DecodeEnvelope(data, &e); err != nil {
			return
		}
		enc := proto.AppendEnvelope(nil, &e)
		var back proto.Envelope
		if err := proto.DecodeEnvelope(enc, &back); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if back.Kind != e.Kind || back.Worker != e.Worker || back.Model != e.Model || back.DPRank != e.DPRank || back.Reason != e.Reason {
			t.Fatalf("header %+v, want %+v", back, e)
		}
		if d := prototest.Diff(&back.Batch, &e.Batch); d != "" {
			t.Fatal(d)
		}
	})
}

// deepCopy returns b with every slice copied, so reusing it cannot write into b.
func deepCopy(b *proto.Batch) proto.Batch {
	out := *b
	out.Events = make([]proto.Event, len(b.Events))
	for i, ev := range b.Events {
		ev.BlockHashes = append([]proto.EngineHash(nil), ev.BlockHashes...)
		ev.TokenIDs = append([]uint32(nil), ev.TokenIDs...)
		ev.ExtraKeys = append([][]string(nil), ev.ExtraKeys...)
		out.Events[i] = ev
	}
	return out
}
