package proto_test

import (
	"testing"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	var back proto.Envelope
	for seed := range uint64(4) {
		in := proto.Envelope{Kind: proto.EnvelopeBatch, Worker: "http://h:8000", Model: "meta-llama/Llama-3.1-8B", DPRank: int(seed % 3), Batch: prototest.Sample(seed)}
		in.Batch.Seq = 1<<63 + seed
		if err := proto.DecodeEnvelope(proto.AppendEnvelope(nil, &in), &back); err != nil {
			t.Fatal(err)
		}
		if back.Kind != in.Kind || back.Worker != in.Worker || back.Model != in.Model || back.DPRank != in.DPRank {
			t.Fatalf("header %+v", back)
		}
		if d := prototest.Diff(&back.Batch, &in.Batch); d != "" {
			t.Fatal(d)
		}
	}
	reset := proto.Envelope{Kind: proto.EnvelopeReset, Worker: "w", DPRank: -1, Reason: "engine restarted"}
	if err := proto.DecodeEnvelope(proto.AppendEnvelope(nil, &reset), &back); err != nil {
		t.Fatal(err)
	}
	if back.Kind != proto.EnvelopeReset || back.Reason != reset.Reason || back.DPRank != -1 || len(back.Batch.Events) != 0 {
		t.Fatalf("reset decoded as %+v", back)
	}
	hb := proto.Envelope{Kind: proto.EnvelopeHeartbeat, Worker: "w", Model: "m", DPRank: 1}
	if err := proto.DecodeEnvelope(proto.AppendEnvelope(nil, &hb), &back); err != nil {
		t.Fatal(err)
	}
	if back.Kind != proto.EnvelopeHeartbeat || back.Worker != "w" || back.Model != "m" || back.DPRank != 1 || back.Reason != "" {
		t.Fatalf("heartbeat decoded as %+v", back)
	}
}

func TestEnvelopeErrors(t *testing.T) {
	good := proto.AppendEnvelope(nil, &proto.Envelope{Kind: proto.EnvelopeBatch, Worker: "w", Batch: prototest.Sample(1)})
	bad := map[string][]byte{
		"empty":     nil,
		"version":   append([]byte{2}, good[1:]...),
		"kind":      append([]byte{proto.EnvelopeVersion, 9}, good[2:]...),
		"trailing":  append(append([]byte(nil), good...), 0),
		"truncated": good[:len(good)-3],
		"no worker": proto.AppendEnvelope(nil, &proto.Envelope{Kind: proto.EnvelopeReset}),
		"huge count": {proto.EnvelopeVersion, byte(proto.EnvelopeBatch), 1, 'w', 0, 0, 0,
			0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f},
	}
	for name, in := range bad {
		var e proto.Envelope
		if err := proto.DecodeEnvelope(in, &e); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
