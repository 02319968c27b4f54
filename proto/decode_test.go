package proto_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest"
)

// styles lists the wire variants engines have shipped; every test and fuzz seed covers
// each of them.
var styles = map[string]prototest.Style{
	"vllm-array":               {},
	"vllm-array-norank":        {NoRank: true},
	"vllm-array-v0.9":          {StoredFields: 5, RemovedFields: 1}, // lora_id, no medium
	"vllm-array-v0.10":         {StoredFields: 6, RemovedFields: 2}, // + medium
	"vllm-array-v0.11":         {StoredFields: 7},                   // + lora_name
	"vllm-array-digest":        {Digest: true},                      // 32-byte hashes
	"vllm-array-unknown":       {Unknown: true},                     // future fields
	"vllm-map-events":          {MapEvents: true},                   // PR #42892
	"vllm-map-batch":           {MapEvents: true, MapBatch: true},   // newest
	"vllm-map-old-fields":      {MapEvents: true, MapBatch: true, StoredFields: 6},
	"vllm-map-digest-unknown":  {MapEvents: true, MapBatch: true, Digest: true, Unknown: true},
	"vllm-map-batch-norank":    {MapEvents: true, MapBatch: true, NoRank: true},
	"sglang-array":             {SGLang: true, StoredFields: 6},
	"sglang-map":               {SGLang: true, MapEvents: true, MapBatch: true},
	"sglang-array-unknown":     {SGLang: true, Unknown: true},
	"vllm-array-events-mapbat": {MapBatch: true},
}

func TestDecodeBatchStyles(t *testing.T) {
	for name, st := range styles {
		t.Run(name, func(t *testing.T) {
			for seed := range uint64(3) {
				in := prototest.Sample(seed)
				payload := prototest.EncodeBatch(&in, st)
				var got proto.Batch
				if err := proto.DecodeBatch(payload, &got); err != nil {
					t.Fatalf("decode: %v", err)
				}
				want := prototest.Normalize(&in, st)
				if d := prototest.Diff(&got, &want); d != "" {
					t.Fatalf("seed %d: %s", seed, d)
				}
			}
		})
	}
}

// TestDecodeBatchReuse decodes different batches into one Batch and checks nothing
// leaks from one into the next (slices are reused, values must not be).
func TestDecodeBatchReuse(t *testing.T) {
	var b proto.Batch
	seq := []prototest.Style{{}, {MapEvents: true, MapBatch: true, StoredFields: 4}, {Digest: true}, {SGLang: true, StoredFields: 5}}
	for i, st := range seq {
		in := prototest.Sample(uint64(i + 10))
		if i%2 == 1 {
			in.Events = in.Events[3:] // fewer events than the previous batch
		}
		if err := proto.DecodeBatch(prototest.EncodeBatch(&in, st), &b); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		want := prototest.Normalize(&in, st)
		if d := prototest.Diff(&b, &want); d != "" {
			t.Fatalf("step %d: %s", i, d)
		}
	}
}

// TestDecodeHandWritten checks hand-assembled payloads byte by byte, independently of
// any msgpack library: an old array-form BlockStored with a uint64 hash above
// MaxInt64, and a map-form BlockRemoved with the type key last.
func TestDecodeHandWritten(t *testing.T) {
	big := []byte{0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe} // 2^64-2
	arr := []byte{0x93, 0xcb}
	arr = binary.BigEndian.AppendUint64(arr, math.Float64bits(12.5))
	arr = append(arr, 0x91, // events: 1
		0x96, 0xab, 'B', 'l', 'o', 'c', 'k', 'S', 't', 'o', 'r', 'e', 'd', // tag
		0x91) // block_hashes: [big]
	arr = append(arr, big...)
	arr = append(arr, 0xc0, // parent nil
		0x92, 0x01, 0xcd, 0x01, 0x00, // tokens [1, 256]
		0x02, // block_size 2
		0xc0, // lora_id nil
		0x02) // rank 2
	var b proto.Batch
	if err := proto.DecodeBatch(arr, &b); err != nil {
		t.Fatal(err)
	}
	want := proto.Batch{TS: 12.5, DPRank: 2, Events: []proto.Event{{
		Kind: proto.BlockStored, BlockHashes: []proto.EngineHash{math.MaxUint64 - 1},
		TokenIDs: []uint32{1, 256}, BlockSize: 2, Medium: "GPU",
	}}}
	if d := prototest.Diff(&b, &want); d != "" {
		t.Fatal(d)
	}

	m := []byte{0x82, 0xa2, 't', 's', 0x05, 0xa6, 'e', 'v', 'e', 'n', 't', 's', 0x91,
		0x83,
		0xac, 'b', 'l', 'o', 'c', 'k', '_', 'h', 'a', 's', 'h', 'e', 's', 0x91, 0xd3,
		0x80, 0, 0, 0, 0, 0, 0, 1, // int64 min+1 (SGLang signed hash)
		0xa6, 'm', 'e', 'd', 'i', 'u', 'm', 0xa3, 'C', 'P', 'U',
		0xa4, 't', 'y', 'p', 'e', 0xac, 'B', 'l', 'o', 'c', 'k', 'R', 'e', 'm', 'o', 'v', 'e', 'd'}
	if err := proto.DecodeBatch(m, &b); err != nil {
		t.Fatal(err)
	}
	want = proto.Batch{TS: 5, DPRank: -1, Events: []proto.Event{{
		Kind: proto.BlockRemoved, BlockHashes: []proto.EngineHash{1<<63 + 1}, Medium: "CPU",
	}}}
	if d := prototest.Diff(&b, &want); d != "" {
		t.Fatal(d)
	}
}

func TestDecodeBatchErrors(t *testing.T) {
	good := prototest.Sample(1)
	payload := prototest.EncodeBatch(&good, prototest.Style{})
	cases := map[string][]byte{
		"empty":             nil,
		"not a container":   {0x05},
		"short array":       {0x91, 0x01},
		"map no events":     {0x81, 0xa2, 't', 's', 0x01},
		"event not array":   {0x92, 0x01, 0x91, 0x05},
		"map event no type": {0x92, 0x01, 0x91, 0x80},
		"empty event":       {0x92, 0x01, 0x91, 0x90},
		"token negative":    {0x92, 0x01, 0x91, 0x94, 0xab, 'B', 'l', 'o', 'c', 'k', 'S', 't', 'o', 'r', 'e', 'd', 0x90, 0xc0, 0x91, 0xff},
		"huge array len":    {0x92, 0x01, 0xdd, 0xff, 0xff, 0xff, 0xff},
		"truncated":         payload[:len(payload)/2],
	}
	for name, in := range cases {
		var b proto.Batch
		if err := proto.DecodeBatch(in, &b); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	// Deep nesting in an unknown field is bounded, not a stack overflow.
	deep := []byte{0x93, 0x01, 0x90}
	for range 100_000 {
		deep = append(deep, 0x91)
	}
	var b proto.Batch
	if err := proto.DecodeBatch(deep, &b); err == nil {
		t.Error("deep nesting: no error")
	}
	if !errors.Is(proto.DecodeBatch(payload[:3], &b), proto.ErrTruncated) {
		t.Error("truncated payload is not ErrTruncated")
	}
}

func TestUnknownEventSkipped(t *testing.T) {
	in := prototest.Sample(2)
	in.Events = append([]proto.Event{{Kind: 99}}, in.Events...)
	for name, st := range styles {
		var b proto.Batch
		if err := proto.DecodeBatch(prototest.EncodeBatch(&in, st), &b); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := prototest.Normalize(&in, st)
		if d := prototest.Diff(&b, &want); d != "" {
			t.Fatalf("%s: %s", name, d)
		}
	}
}

func TestFrames(t *testing.T) {
	topic, seq, payload, err := proto.DecodeFrames([][]byte{[]byte("kv"), proto.SeqBytes(1 << 40), {0x90}})
	if err != nil || string(topic) != "kv" || seq != 1<<40 || len(payload) != 1 {
		t.Fatalf("got %q %d %v %v", topic, seq, payload, err)
	}
	for _, bad := range [][][]byte{nil, {{}, {1, 2}, {}}, {{}, make([]byte, 8)}} {
		if _, _, _, err := proto.DecodeFrames(bad); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
	req := proto.ReplayRequest(42)
	if len(req) != 2 || len(req[0]) != 0 || binary.BigEndian.Uint64(req[1]) != 42 {
		t.Fatalf("replay request %v", req)
	}
	end := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff} // (-1).to_bytes(8, "big", signed=True)
	for _, fr := range [][][]byte{{{}, end, {}}, {end, {}}} {
		_, isEnd, _, err := proto.DecodeReplayFrames(fr)
		if err != nil || !isEnd {
			t.Fatalf("end marker %v: end=%v err=%v", fr, isEnd, err)
		}
	}
	s, isEnd, p, err := proto.DecodeReplayFrames([][]byte{{}, proto.SeqBytes(7), {1}})
	if err != nil || isEnd || s != 7 || len(p) != 1 {
		t.Fatalf("reply: %d %v %v %v", s, isEnd, p, err)
	}
	for _, bad := range [][][]byte{nil, {{1}, end, {}}, {{1, 2}, {}}, {{}, {}, {}, {}}} {
		if _, _, _, err := proto.DecodeReplayFrames(bad); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}

func ExampleDecodeBatch() {
	in := proto.Batch{TS: 1, DPRank: 0, Events: []proto.Event{
		{Kind: proto.BlockStored, BlockHashes: []proto.EngineHash{7}, TokenIDs: []uint32{1, 2}, BlockSize: 2, Medium: "GPU"},
	}}
	payload := prototest.EncodeBatch(&in, prototest.Style{MapEvents: true, MapBatch: true})
	var b proto.Batch
	if err := proto.DecodeBatch(payload, &b); err != nil {
		panic(err)
	}
	fmt.Println(b.Events[0].Kind, b.Events[0].BlockHashes, b.Events[0].TokenIDs, b.Events[0].Medium)
	// Output: BlockStored [7] [1 2] GPU
}
