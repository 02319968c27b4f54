package blockhash

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/kvroute/kvroute/proto"
)

// chatOfSize returns a multi-turn chat whose messages JSON is about size bytes.
func chatOfSize(tb testing.TB, size int) json.RawMessage {
	msgs := []msg{{"system", "You are a helpful assistant. Answer briefly and cite sources."}}
	for i := 0; ; i++ {
		b := rawJSON(tb, msgs)
		if len(b) >= size {
			return b
		}
		role := "user"
		if i%2 == 1 {
			role = "assistant"
		}
		msgs = append(msgs, msg{role, fmt.Sprintf("turn %d: %s \"quoted\" \u00e9\n", i, strings.Repeat("lorem ipsum dolor sit amet ", 8))})
	}
}

// Approx mode and the engine mode's cache hits allocate nothing when dst has room.
func TestZeroAllocs(t *testing.T) {
	req := &Request{Model: "m", BlockSize: 16, Messages: chatOfSize(t, 8<<10)}
	dst := make([]proto.BlockHash, 0, 1024)
	if n := testing.AllocsPerRun(50, func() {
		if _, err := (Approx{}).Hash(t.Context(), req, dst); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("approx chat: %v allocations per call", n)
	}
	srv := newTokServer(t)
	e := newEngine(t, srv.URL, nil)
	if _, err := e.Hash(t.Context(), req, nil); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(50, func() {
		if r, err := e.Hash(t.Context(), req, dst); err != nil || len(r.Hashes) == 0 {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("engine cache hit: %v allocations per call", n)
	}
	if srv.calls.Load() != 1 {
		t.Fatalf("%d calls", srv.calls.Load())
	}
}

// BenchmarkApprox hashes a chat in approx mode. Compare two runs with
//
//	go test -run '^$' -bench 'Approx|EngineCacheHit' -count 10 ./router/blockhash > new.txt
//	benchstat old.txt new.txt
func BenchmarkApprox(b *testing.B) {
	for _, size := range []int{2 << 10, 32 << 10} {
		b.Run(fmt.Sprintf("chat=%dKB", size>>10), func(b *testing.B) {
			req := &Request{Model: "m", BlockSize: 16, Messages: chatOfSize(b, size)}
			dst := make([]proto.BlockHash, 0, 1024)
			b.SetBytes(int64(len(req.Messages)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := (Approx{}).Hash(b.Context(), req, dst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkEngineCacheHit measures the engine mode for a request already tokenized: key
// hashing, the LRU lookup and copying the hashes. benchstat as for BenchmarkApprox.
func BenchmarkEngineCacheHit(b *testing.B) {
	for _, size := range []int{2 << 10, 32 << 10} {
		b.Run(fmt.Sprintf("chat=%dKB", size>>10), func(b *testing.B) {
			srv := newTokServer(b)
			e := newEngine(b, srv.URL, nil)
			req := &Request{Model: "m", BlockSize: 16, Messages: chatOfSize(b, size)}
			if _, err := e.Hash(b.Context(), req, nil); err != nil {
				b.Fatal(err)
			}
			dst := make([]proto.BlockHash, 0, 1024)
			b.SetBytes(int64(len(req.Messages)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.Hash(b.Context(), req, dst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTokenIDPrompt hashes a 4096-token completions prompt given as ids. benchstat
// as for BenchmarkApprox.
func BenchmarkTokenIDPrompt(b *testing.B) {
	ids := make([]uint32, 4096)
	for i := range ids {
		ids[i] = uint32(i * 7919 % 128256)
	}
	req := &Request{Model: "m", BlockSize: 16, Prompt: rawJSON(b, ids)}
	dst := make([]proto.BlockHash, 0, 512)
	b.SetBytes(int64(len(req.Prompt)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := (Approx{}).Hash(b.Context(), req, dst); err != nil {
			b.Fatal(err)
		}
	}
}
