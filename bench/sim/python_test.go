package sim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim/kvevents"
	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// python is Debian's interpreter, where scripts/deps.d/20-kvsim.sh installs python3-zmq
// and python3-msgpack.
const python = "/usr/bin/python3"

type pyEvent struct {
	Type        string            `json:"type"`
	BlockHashes []json.RawMessage `json:"block_hashes"`
	Parent      json.RawMessage   `json:"parent_block_hash"`
	TokenIDs    []uint32          `json:"token_ids"`
	BlockSize   int               `json:"block_size"`
	Medium      *string           `json:"medium"`
}

type pyBatch struct {
	Seq    uint64    `json:"seq"`
	TS     float64   `json:"ts"`
	Rank   *int      `json:"rank"`
	Events []pyEvent `json:"events"`
}

// pyHash maps a hash printed by the Python decoder back to the engine's uint64: a
// decimal int (uint64 or, for SGLang, int64) or the hex of a 32-byte digest.
func pyHash(raw json.RawMessage, digests map[string]uint64) (uint64, error) {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		h, ok := digests[s]
		if !ok {
			return 0, fmt.Errorf("unknown digest %s", s)
		}
		return h, nil
	}
	txt := string(raw)
	if u, err := strconv.ParseUint(txt, 10, 64); err == nil {
		return u, nil
	}
	i, err := strconv.ParseInt(txt, 10, 64)
	return uint64(i), err
}

// TestPythonDecoderMatchesCache runs every wire format through an independent decoder
// (Python, pyzmq + msgpack) and checks that the cache it reconstructs from the events
// equals the engine's cache, and that stored token ids are the prompt's.
func TestPythonDecoderMatchesCache(t *testing.T) {
	if err := exec.Command(python, "-c", "import zmq, msgpack").Run(); err != nil {
		t.Fatalf("%s with zmq and msgpack is required (run scripts/deps.sh): %v", python, err)
	}
	formats := []struct {
		engine, layout string
		digest         bool
	}{
		{"vllm", "array", false},
		{"vllm", "map", false},
		{"vllm", "map-batch", false},
		{"vllm", "array", true},
		{"sglang", "array", false},
	}
	for _, ft := range formats {
		t.Run(fmt.Sprintf("%s-%s-digest=%v", ft.engine, ft.layout, ft.digest), func(t *testing.T) {
			f := startFleet(t, 1, func(c *Config) {
				c.Engine, c.EventFormat, c.DigestHashes, c.KVBlocks = ft.engine, ft.layout, ft.digest, 10
			})
			w := f.Workers()[0]
			const batches = 5
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var stdout, stderr bytes.Buffer
			cmd := exec.CommandContext(ctx, python, "testdata/kvevents_sub.py", w.EventsEndpoint(), strconv.Itoa(batches), "15")
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			poll.CheckFor(t, 10*time.Second, "python subscription", w.EventsSubscribed)
			prompts := []string{words(0, 40), words(0, 70), words(500, 60), words(900, 60), words(1300, 40)}
			var toks [][]uint32
			for _, p := range prompts {
				toks = append(toks, tokenize(t, w, p))
				complete(t, w, map[string]any{"prompt": p, "max_tokens": 1})
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("python decoder: %v\n%s", err, stderr.String())
			}
			cached := w.CachedBlockHashes()
			digests := map[string]uint64{}
			for _, h := range append(cached, promptHashes(w, toks)...) {
				d := kvevents.Digest(h)
				digests[hex.EncodeToString(d[:])] = h
			}
			view := map[uint64]int{}
			sc := bufio.NewScanner(&stdout)
			sc.Buffer(nil, 1<<22)
			n := 0
			var stored [][]uint32
			removed := 0
			for sc.Scan() {
				var b pyBatch
				if err := json.Unmarshal(sc.Bytes(), &b); err != nil {
					t.Fatalf("%s: %v", sc.Text(), err)
				}
				if b.Seq != uint64(n) || b.Rank == nil || *b.Rank != 0 || b.TS < 1e9 {
					t.Fatalf("batch %d: %s", n, sc.Text())
				}
				n++
				for _, e := range b.Events {
					if ft.engine == "vllm" && (e.Medium == nil || *e.Medium != "GPU") {
						t.Fatalf("event without medium GPU: %s", sc.Text())
					}
					for _, raw := range e.BlockHashes {
						h, err := pyHash(raw, digests)
						if err != nil {
							t.Fatal(err)
						}
						switch e.Type {
						case "BlockStored":
							view[h]++
						case "BlockRemoved":
							removed++
							if view[h]--; view[h] == 0 {
								delete(view, h)
							}
						}
					}
					if e.Type == "BlockStored" {
						if e.BlockSize != 16 || len(e.TokenIDs) != 16*len(e.BlockHashes) {
							t.Fatalf("stored event %+v", e)
						}
						stored = append(stored, e.TokenIDs)
					}
				}
			}
			if removed == 0 {
				t.Fatal("no BlockRemoved: the 10-block cache should have evicted")
			}
			if n != batches {
				t.Fatalf("python decoded %d batches", n)
			}
			if !sameSet(keys(view), cached) {
				t.Fatalf("python view %v != engine cache %v", view, cached)
			}
			// Every stored block's tokens are a block of one of the prompts.
			for _, blk := range stored {
				for i := 0; i < len(blk); i += 16 {
					if !isPromptBlock(toks, blk[i:i+16]) {
						t.Fatalf("stored tokens %v are no prompt block", blk[i:i+16])
					}
				}
			}
		})
	}
}

func isPromptBlock(prompts [][]uint32, blk []uint32) bool {
	for _, p := range prompts {
		for i := 0; i+16 <= len(p); i += 16 {
			if slices.Equal(p[i:i+16], blk) {
				return true
			}
		}
	}
	return false
}

// promptHashes returns the engine hashes of the full blocks of the prompts, computed
// the way the engine does, to map the 32-byte digests of evicted blocks back to uint64s.
func promptHashes(w *Worker, prompts [][]uint32) []uint64 {
	w.ranks[0].eng.mu.Lock()
	defer w.ranks[0].eng.mu.Unlock()
	var out []uint64
	for _, p := range prompts {
		r := &request{tokens: p}
		w.ranks[0].eng.hashFull(r)
		out = append(out, r.hashes...)
	}
	return out
}
