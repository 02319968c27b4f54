package sim

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// wireEvent is an event decoded from the wire by the tests' own decoder.
type wireEvent struct {
	Kind      string
	Hashes    []uint64
	Parent    *uint64
	Tokens    []uint32
	BlockSize int
}

type wireBatch struct {
	Seq    uint64
	TS     float64
	Rank   any
	Events []wireEvent
}

// toU64 converts a decoded msgpack integer to uint64 (int64 values keep their bits).
func toU64(v any) (uint64, error) {
	switch x := v.(type) {
	case int8:
		return uint64(x), nil
	case int16:
		return uint64(x), nil
	case int32:
		return uint64(x), nil
	case int64:
		return uint64(x), nil
	case uint8:
		return uint64(x), nil
	case uint16:
		return uint64(x), nil
	case uint32:
		return uint64(x), nil
	case uint64:
		return x, nil
	}
	return 0, fmt.Errorf("not an integer: %T %v", v, v)
}

// decodePayload decodes any of the formats kvsim writes, array or map.
func decodePayload(b []byte) (wireBatch, error) {
	var v any
	if err := msgpack.Unmarshal(b, &v); err != nil {
		return wireBatch{}, err
	}
	var wb wireBatch
	var evs []any
	switch x := v.(type) {
	case []any:
		if len(x) < 2 {
			return wb, fmt.Errorf("batch of %d fields", len(x))
		}
		wb.TS, _ = x[0].(float64)
		evs, _ = x[1].([]any)
		if len(x) > 2 {
			wb.Rank = x[2]
		}
	case map[string]any:
		wb.TS, _ = x["ts"].(float64)
		evs, _ = x["events"].([]any)
		wb.Rank = x["data_parallel_rank"]
	default:
		return wb, fmt.Errorf("batch is %T", v)
	}
	names := []string{"block_hashes", "parent_block_hash", "token_ids", "block_size"}
	for _, e := range evs {
		var fields []any
		var kind string
		switch x := e.(type) {
		case []any:
			kind, _ = x[0].(string)
			fields = x[1:]
		case map[string]any:
			kind, _ = x["type"].(string)
			for _, n := range names {
				if fv, ok := x[n]; ok {
					fields = append(fields, fv)
				}
			}
		}
		we := wireEvent{Kind: kind}
		if kind != "AllBlocksCleared" {
			hs, _ := fields[0].([]any)
			for _, h := range hs {
				u, err := toU64(h)
				if err != nil {
					return wb, err
				}
				we.Hashes = append(we.Hashes, u)
			}
		}
		if kind == "BlockStored" {
			if fields[1] != nil {
				u, err := toU64(fields[1])
				if err != nil {
					return wb, err
				}
				we.Parent = &u
			}
			ts, _ := fields[2].([]any)
			for _, tk := range ts {
				u, err := toU64(tk)
				if err != nil {
					return wb, err
				}
				we.Tokens = append(we.Tokens, uint32(u))
			}
			bs, err := toU64(fields[3])
			if err != nil {
				return wb, err
			}
			we.BlockSize = int(bs)
		}
		wb.Events = append(wb.Events, we)
	}
	return wb, nil
}

type eventSub struct {
	t    *testing.T
	sock zmq4.Socket
	ch   chan wireBatch
}

// subscribe connects a SUB socket to w and waits until the subscription is active.
func subscribe(t *testing.T, w *Worker) *eventSub {
	t.Helper()
	return subscribeTo(t, w.EventsEndpoint(), w.EventsSubscribed)
}

// subscribeTo connects a SUB socket to endpoint and waits until subscribed() holds.
func subscribeTo(t *testing.T, endpoint string, subscribed func() bool) *eventSub {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &eventSub{t: t, sock: zmq4.NewSub(ctx), ch: make(chan wireBatch, 1024)}
	t.Cleanup(func() { cancel(); _ = s.sock.Close() })
	if err := s.sock.Dial(endpoint); err != nil {
		t.Fatal(err)
	}
	if err := s.sock.SetOption(zmq4.OptionSubscribe, ""); err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, 5*time.Second, "subscription", subscribed)
	go func() {
		for {
			msg, err := s.sock.Recv()
			if err != nil {
				close(s.ch)
				return
			}
			if len(msg.Frames) != 3 || len(msg.Frames[1]) != 8 {
				t.Errorf("bad frames %q", msg.Frames)
				continue
			}
			b, err := decodePayload(msg.Frames[2])
			if err != nil {
				t.Errorf("decode: %v", err)
				continue
			}
			b.Seq = binary.BigEndian.Uint64(msg.Frames[1])
			s.ch <- b
		}
	}()
	return s
}

// next returns the next batch or fails after 5 s.
func (s *eventSub) next() wireBatch {
	s.t.Helper()
	select {
	case b := <-s.ch:
		return b
	case <-time.After(5 * time.Second):
		s.t.Fatal("no event batch within 5s")
	}
	return wireBatch{}
}

// drain returns every batch that arrives until none has for quiet.
func (s *eventSub) drain(quiet time.Duration) []wireBatch {
	var out []wireBatch
	for {
		select {
		case b := <-s.ch:
			out = append(out, b)
		case <-time.After(quiet):
			return out
		}
	}
}

// cacheFromEvents applies batches to a multiset of hashes, as a consumer would.
func cacheFromEvents(batches []wireBatch, into map[uint64]int) {
	for _, b := range batches {
		for _, e := range b.Events {
			switch e.Kind {
			case "BlockStored":
				for _, h := range e.Hashes {
					into[h]++
				}
			case "BlockRemoved":
				for _, h := range e.Hashes {
					into[h]--
					if into[h] == 0 {
						delete(into, h)
					}
				}
			case "AllBlocksCleared":
				clear(into)
			}
		}
	}
}

// replayFrom asks w's replay socket for batches from start and returns their seqs,
// failing unless the answer ends with the end marker.
func replayFrom(t *testing.T, w *Worker, start uint64) []wireBatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := zmq4.NewDealer(ctx)
	defer d.Close()
	if err := d.Dial(w.ReplayEndpoint()); err != nil {
		t.Fatal(err)
	}
	var sb [8]byte
	binary.BigEndian.PutUint64(sb[:], start)
	if err := d.SendMulti(zmq4.NewMsgFrom(nil, sb[:])); err != nil {
		t.Fatal(err)
	}
	var out []wireBatch
	for {
		msg, err := d.Recv()
		if err != nil {
			t.Fatalf("replay recv: %v", err)
		}
		if len(msg.Frames) != 3 || len(msg.Frames[0]) != 0 || len(msg.Frames[1]) != 8 {
			t.Fatalf("replay frames %q", msg.Frames)
		}
		if int64(binary.BigEndian.Uint64(msg.Frames[1])) == -1 {
			if len(msg.Frames[2]) != 0 {
				t.Fatal("end marker with a payload")
			}
			return out
		}
		b, err := decodePayload(msg.Frames[2])
		if err != nil {
			t.Fatal(err)
		}
		b.Seq = binary.BigEndian.Uint64(msg.Frames[1])
		out = append(out, b)
	}
}
