package kvevents

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/vmihailenco/msgpack/v5"
)

func decode(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := msgpack.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode payload: %v", err)
	}
	return v
}

var big = uint64(math.MaxInt64) + 12345 // above int64 max: must stay a uint64

var sample = []Event{
	{Kind: proto.BlockStored, Hashes: []uint64{big, 7}, Tokens: []uint32{1, 2, 3, 4}, BlockSize: 2},
	{Kind: proto.BlockStored, Hashes: []uint64{9}, Parent: 7, HasParent: true, Tokens: []uint32{5, 6}, BlockSize: 2},
	{Kind: proto.BlockRemoved, Hashes: []uint64{big}},
	{Kind: proto.AllBlocksCleared},
}

func TestEncodeLayouts(t *testing.T) {
	tests := []struct {
		f    Format
		rank int
		want any
	}{
		{Format{Engine: EngineVLLM, Layout: LayoutArray}, 0, []any{1.5, []any{
			[]any{"BlockStored", []any{big, uint64(7)}, nil, []any{uint64(1), uint64(2), uint64(3), uint64(4)}, uint64(2), nil, "GPU", nil},
			[]any{"BlockStored", []any{uint64(9)}, uint64(7), []any{uint64(5), uint64(6)}, uint64(2), nil, "GPU", nil},
			[]any{"BlockRemoved", []any{big}, "GPU"},
			[]any{"AllBlocksCleared"},
		}, uint64(0)}},
		{Format{Engine: EngineVLLM, Layout: LayoutMapBatch}, -1, map[string]any{"ts": 1.5, "events": []any{
			map[string]any{"type": "BlockStored", "block_hashes": []any{big, uint64(7)}, "parent_block_hash": nil, "token_ids": []any{uint64(1), uint64(2), uint64(3), uint64(4)}, "block_size": uint64(2), "lora_id": nil, "medium": "GPU", "lora_name": nil},
			map[string]any{"type": "BlockStored", "block_hashes": []any{uint64(9)}, "parent_block_hash": uint64(7), "token_ids": []any{uint64(5), uint64(6)}, "block_size": uint64(2), "lora_id": nil, "medium": "GPU", "lora_name": nil},
			map[string]any{"type": "BlockRemoved", "block_hashes": []any{big}, "medium": "GPU"},
			map[string]any{"type": "AllBlocksCleared"},
		}}},
		{Format{Engine: EngineSGLang, Layout: LayoutArray}, 3, []any{1.5, []any{
			[]any{"BlockStored", []any{int64(big)}, nil, []any{uint64(1), uint64(2)}, uint64(2), nil},
			[]any{"BlockStored", []any{uint64(7)}, int64(big), []any{uint64(3), uint64(4)}, uint64(2), nil},
			[]any{"BlockStored", []any{uint64(9)}, uint64(7), []any{uint64(5), uint64(6)}, uint64(2), nil},
			[]any{"BlockRemoved", []any{int64(big)}},
			[]any{"AllBlocksCleared"},
		}, uint64(3)}},
	}
	for _, tt := range tests {
		t.Run(string(tt.f.Engine)+"/"+string(tt.f.Layout), func(t *testing.T) {
			if err := tt.f.Validate(); err != nil {
				t.Fatal(err)
			}
			got := decode(t, NewEncoder(tt.f).Encode(1.5, tt.rank, sample))
			if !reflect.DeepEqual(normalize(got), normalize(tt.want)) {
				t.Fatalf("got  %#v\nwant %#v", got, tt.want)
			}
		})
	}
}

// normalize maps every integer to int64 or uint64 the way the msgpack decoder reports
// them (it decodes small positive ints as uint64 or int64 depending on the code), so that
// the comparison checks values, plus the signedness of values above int64 max.
func normalize(v any) any {
	switch x := v.(type) {
	case []any:
		out := make([]any, len(x))
		for i := range x {
			out[i] = normalize(x[i])
		}
		return out
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			out[k] = normalize(e)
		}
		return out
	case int8:
		return int64(x)
	case int16:
		return int64(x)
	case int32:
		return int64(x)
	case uint8:
		return int64(x)
	case uint16:
		return int64(x)
	case uint32:
		return int64(x)
	case uint64:
		if x <= math.MaxInt64 {
			return int64(x)
		}
		return x
	}
	return v
}

func TestUint64AboveInt64MaxOnWire(t *testing.T) {
	b := NewEncoder(Format{Engine: EngineVLLM, Layout: LayoutArray}).Encode(0, -1,
		[]Event{{Kind: proto.BlockRemoved, Hashes: []uint64{big}}})
	var want [9]byte
	want[0] = 0xcf // msgpack uint 64
	binary.BigEndian.PutUint64(want[1:], big)
	if !bytes.Contains(b, want[:]) {
		t.Fatalf("payload % x lacks uint64 % x", b, want)
	}
	d := NewEncoder(Format{Engine: EngineVLLM, Layout: LayoutArray, DigestHashes: true}).Encode(0, -1,
		[]Event{{Kind: proto.BlockRemoved, Hashes: []uint64{big}}})
	dg := Digest(big)
	if !bytes.Contains(d, append([]byte{0xc4, 32}, dg[:]...)) {
		t.Fatalf("payload % x lacks the 32-byte digest", d)
	}
}

func TestPublishSubscribeReplay(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, err := Listen(ctx, Config{Endpoint: "tcp://127.0.0.1:0", ReplayEndpoint: "tcp://127.0.0.1:0", Topic: "kv", BufferSteps: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	sub := zmq4.NewSub(ctx)
	defer sub.Close()
	if err := sub.Dial(p.Endpoint()); err != nil {
		t.Fatal(err)
	}
	if err := sub.SetOption(zmq4.OptionSubscribe, "kv"); err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, 5*time.Second, "subscription", p.Subscribed)

	p.DropNext(1)
	for i := range 5 {
		p.Publish([]byte{byte(i)})
	}
	// seq 0 was dropped from the stream; 1..4 arrive in order.
	for want := uint64(1); want <= 4; want++ {
		msg, err := sub.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(msg.Frames) != 3 || string(msg.Frames[0]) != "kv" {
			t.Fatalf("frames %q", msg.Frames)
		}
		if got := binary.BigEndian.Uint64(msg.Frames[1]); got != want || msg.Frames[2][0] != byte(want) {
			t.Fatalf("seq %d payload %v, want %d", got, msg.Frames[2], want)
		}
	}
	if next, sent, dropped := p.Stats(); next != 5 || sent != 4 || dropped != 1 {
		t.Fatalf("stats next=%d sent=%d dropped=%d", next, sent, dropped)
	}

	// Replay from 0: the ring keeps 3 batches (2, 3, 4), then the end marker.
	dealer := zmq4.NewDealer(ctx)
	defer dealer.Close()
	if err := dealer.Dial(p.ReplayEndpoint()); err != nil {
		t.Fatal(err)
	}
	got := replay(t, dealer, 0)
	if !reflect.DeepEqual(got, []uint64{2, 3, 4}) {
		t.Fatalf("replay from 0 = %v", got)
	}
	if got := replay(t, dealer, 4); !reflect.DeepEqual(got, []uint64{4}) {
		t.Fatalf("replay from 4 = %v", got)
	}

	p.Restart()
	if seq := p.Publish([]byte{9}); seq != 0 {
		t.Fatalf("seq after restart = %d", seq)
	}
	if got := replay(t, dealer, 0); !reflect.DeepEqual(got, []uint64{0}) {
		t.Fatalf("replay after restart = %v", got)
	}
}

// replay asks for batches from start and returns their seqs, checking the end marker.
func replay(t *testing.T, d zmq4.Socket, start uint64) []uint64 {
	t.Helper()
	var sb [8]byte
	binary.BigEndian.PutUint64(sb[:], start)
	if err := d.SendMulti(zmq4.NewMsgFrom(nil, sb[:])); err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for {
		msg, err := d.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(msg.Frames) != 3 || len(msg.Frames[0]) != 0 {
			t.Fatalf("replay frames %q", msg.Frames)
		}
		if bytes.Equal(msg.Frames[1], endMarker) {
			if len(msg.Frames[2]) != 0 {
				t.Fatalf("end marker with payload %q", msg.Frames[2])
			}
			return seqs
		}
		seqs = append(seqs, binary.BigEndian.Uint64(msg.Frames[1]))
	}
}

func TestRebind(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, err := Listen(ctx, Config{Endpoint: "tcp://127.0.0.1:0", ReplayEndpoint: "tcp://127.0.0.1:0", BufferSteps: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ep, rep := p.Endpoint(), p.ReplayEndpoint()
	p.Publish([]byte{1})
	p.Publish([]byte{2})
	if err := p.Rebind(); err != nil {
		t.Fatal(err)
	}
	if p.Endpoint() != ep || p.ReplayEndpoint() != rep {
		t.Fatalf("endpoints moved: %s %s -> %s %s", ep, rep, p.Endpoint(), p.ReplayEndpoint())
	}
	// A subscriber connecting to the rebound socket sees the new stream from seq 0.
	sub := zmq4.NewSub(ctx)
	defer sub.Close()
	if err := sub.Dial(ep); err != nil {
		t.Fatal(err)
	}
	if err := sub.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, 5*time.Second, "subscription after rebind", p.Subscribed)
	if seq := p.Publish([]byte{3}); seq != 0 {
		t.Fatalf("seq after rebind = %d", seq)
	}
	msg, err := sub.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if got := binary.BigEndian.Uint64(msg.Frames[1]); got != 0 || msg.Frames[2][0] != 3 {
		t.Fatalf("got seq %d payload %v", got, msg.Frames[2])
	}
	dealer := zmq4.NewDealer(ctx)
	defer dealer.Close()
	if err := dealer.Dial(rep); err != nil {
		t.Fatal(err)
	}
	if got := replay(t, dealer, 0); !reflect.DeepEqual(got, []uint64{0}) {
		t.Fatalf("replay after rebind = %v", got)
	}
}

// BenchmarkEncode measures encoding one engine step's batch: 8 BlockStored events of 4
// blocks (16 tokens each) and 8 BlockRemoved, in each layout.
//
//	go test -run '^$' -bench Encode -count 10 ./bench/sim/kvevents | tee new.txt
//	benchstat old.txt new.txt
func BenchmarkEncode(b *testing.B) {
	var events []Event
	toks := make([]uint32, 64)
	for i := range toks {
		toks[i] = uint32(1000 + i)
	}
	for i := range 8 {
		events = append(events,
			Event{Kind: proto.BlockStored, Hashes: []uint64{big + uint64(i), 2, 3, 4}, Parent: 1, HasParent: true, Tokens: toks, BlockSize: 16},
			Event{Kind: proto.BlockRemoved, Hashes: []uint64{uint64(i)}})
	}
	for _, f := range []Format{
		{Engine: EngineVLLM, Layout: LayoutArray},
		{Engine: EngineVLLM, Layout: LayoutMapBatch},
		{Engine: EngineSGLang, Layout: LayoutArray},
	} {
		b.Run(string(f.Engine)+"-"+string(f.Layout), func(b *testing.B) {
			b.ReportAllocs()
			enc := NewEncoder(f)
			for b.Loop() {
				if len(enc.Encode(1.5, 0, events)) == 0 {
					b.Fatal("empty payload")
				}
			}
		})
	}
}
