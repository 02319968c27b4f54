package replica

import (
	"errors"
	"reflect"
	"testing"

	"github.com/kvroute/kvroute/proto"
)

func sampleMessages() []Message {
	return []Message{
		{Sender: "r-1", Incarnation: 42, Seq: 1, Sent: 1_700_000_000_000_000_000, Full: true,
			Loads: []WorkerLoad{{Worker: "gpu-0", Load: Load{InFlight: 3, PrefillTokens: 4096, Blocks: 700}}, {Worker: "gpu-1"}}},
		{Sender: "router-b", Incarnation: 1 << 63, Seq: 99, Sent: 5,
			Loads:       []WorkerLoad{{Worker: "10.0.0.1:8000", Load: Load{InFlight: 1, Blocks: 12}}},
			Predictions: []Prediction{{Worker: "10.0.0.1:8000", Hashes: []proto.BlockHash{1, 2, 1 << 60}}, {Worker: "gpu-2", Hashes: []proto.BlockHash{7}}}},
		{Sender: "x", Seq: 2, Predictions: []Prediction{{Worker: "w"}}},
		{Sender: "resp", Seq: 4, Responses: []StoredResponse{{ID: "resp_1", Worker: "gpu-0", Model: "m"}, {ID: "resp_2", Worker: "gpu-1"}}},
		{Sender: "neg", Seq: 3, Loads: []WorkerLoad{{Worker: "w", Load: Load{InFlight: -1, PrefillTokens: -5, Blocks: -2}}}},
	}
}

// normalize makes nil and empty slices compare equal.
func normalize(m Message) Message {
	if len(m.Loads) == 0 {
		m.Loads = nil
	}
	if len(m.Predictions) == 0 {
		m.Predictions = nil
	}
	if len(m.Responses) == 0 {
		m.Responses = nil
	}
	for i := range m.Predictions {
		if len(m.Predictions[i].Hashes) == 0 {
			m.Predictions[i].Hashes = nil
		}
	}
	return m
}

func TestMessageRoundTrip(t *testing.T) {
	var got Message
	for i, m := range sampleMessages() {
		if err := DecodeMessage(AppendMessage(nil, &m), &got); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !reflect.DeepEqual(normalize(got), normalize(m)) {
			t.Errorf("message %d: got %+v, want %+v", i, got, m)
		}
	}
}

func TestDecodeMessageErrors(t *testing.T) {
	good := AppendMessage(nil, &sampleMessages()[1])
	cases := map[string][]byte{
		"empty":         nil,
		"bad magic":     append([]byte("XX"), good[2:]...),
		"bad version":   append([]byte{'K', 'R', 9}, good[3:]...),
		"truncated":     good[:len(good)-3],
		"trailing":      append(append([]byte(nil), good...), 0),
		"empty sender":  AppendMessage(nil, &Message{Seq: 1}),
		"unknown flags": func() []byte { b := AppendMessage(nil, &Message{Sender: "a"}); b[len(b)-3] = 0x80; return b }(),
		// A count of 2^20 load records in a few bytes must fail before allocating.
		"huge count": append(appendHeader(nil, &Message{Sender: "a"}), 0x80, 0x80, 0x40, 0),
		"long id":    AppendMessage(nil, &Message{Sender: string(make([]byte, maxIDLen+1))}),
	}
	for name, b := range cases {
		var m Message
		err := DecodeMessage(b, &m)
		if !errors.Is(err, ErrBadMessage) {
			t.Errorf("%s: err %v, want ErrBadMessage", name, err)
		}
	}
}

func TestChunkRoundTrip(t *testing.T) {
	b := appendChunk(nil, 300, true, []byte("KVRIDX\x01\x00"))
	i, last, p, err := decodeChunk(b)
	if err != nil || i != 300 || !last || string(p) != "KVRIDX\x01\x00" {
		t.Fatalf("decodeChunk = %d %v %q %v", i, last, p, err)
	}
	for _, bad := range [][]byte{nil, []byte("KD"), []byte("KD\x02\x00\x00"), []byte("KD\x01\x00\x02"), []byte("KR\x01\x00\x00")} {
		if _, _, _, err := decodeChunk(bad); !errors.Is(err, ErrBadMessage) {
			t.Errorf("decodeChunk(%q): %v, want ErrBadMessage", bad, err)
		}
	}
}

// FuzzDecodeMessage: any input decodes or fails with ErrBadMessage, never panics, and
// what decodes re-encodes to the same message.
func FuzzDecodeMessage(f *testing.F) {
	for _, m := range sampleMessages() {
		f.Add(AppendMessage(nil, &m))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var m Message
		if err := DecodeMessage(data, &m); err != nil {
			if !errors.Is(err, ErrBadMessage) {
				t.Fatalf("error %v does not wrap ErrBadMessage", err)
			}
			return
		}
		var back Message
		if err := DecodeMessage(AppendMessage(nil, &m), &back); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if !reflect.DeepEqual(normalize(back), normalize(m)) {
			t.Fatalf("round trip: %+v, want %+v", back, m)
		}
	})
}

// FuzzDecodeChunk: any input decodes or fails with ErrBadMessage, never panics.
func FuzzDecodeChunk(f *testing.F) {
	f.Add(appendChunk(nil, 0, false, []byte("KVRIDX\x01")))
	f.Add(appendChunk(nil, 7, true, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		i, last, p, err := decodeChunk(data)
		if err != nil {
			if !errors.Is(err, ErrBadMessage) {
				t.Fatalf("error %v does not wrap ErrBadMessage", err)
			}
			return
		}
		if i2, last2, p2, err := decodeChunk(appendChunk(nil, i, last, p)); err != nil || i2 != i || last2 != last || string(p2) != string(p) {
			t.Fatalf("round trip of %d %v %q: %d %v %q %v", i, last, p, i2, last2, p2, err)
		}
	})
}
