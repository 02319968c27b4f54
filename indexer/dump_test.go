package indexer

import (
	"bytes"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/kvroute/kvroute/proto"
)

// dumpFixture builds an index with shared chains, duplicates, two tiers, a second
// engine id for the same content, a DP rank and live predictions.
func dumpFixture(t testing.TB) (*Index, *fakeClock, [][]proto.BlockHash) {
	qa := cat(doc(1, 4), doc(2, 3))
	qb := cat(doc(1, 4), doc(3, 3))
	ix, clk := newIndex(t, Options{TierWeights: &[NumTiers]float64{TierGPU: 1, TierCPU: 0.5}})
	ix.Apply(wA, "m", batch(stored(1, qa, 0, 7, "GPU", ""), stored(1, qa, 0, 3, "GPU", ""), stored(1, qa, 0, 2, "CPU", "")))
	ix.Apply(wB, "m", batch(stored(2, qb, 0, 7, "GPU", ""), stored(9, qb, 0, 2, "GPU", "")))
	ix.Apply(wA1, "m", batch(stored(3, qb, 0, 5, "CPU", "lora")))
	ix.Predict(wB, chain("", qa), time.Minute)
	return ix, clk, [][]proto.BlockHash{chain("", qa), chain("", qb), chain("lora", qb)}
}

func TestDumpRestoreRoundTrip(t *testing.T) {
	ix, clk, reqs := dumpFixture(t)
	var buf bytes.Buffer
	if err := ix.Dump(&buf); err != nil {
		t.Fatalf("Dump: %v", err)
	}
	clk.Advance(time.Second)
	ix2, err := New(Options{Now: clk.Now, TierWeights: &[NumTiers]float64{TierGPU: 1, TierCPU: 0.5}})
	if err != nil {
		t.Fatal(err)
	}
	// A stale state for a dumped worker must be replaced, not merged.
	ix2.Apply(wA, "m", batch(stored(1, doc(8, 3), 0, 3, "GPU", "")))
	if err := ix2.Restore(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	for i, req := range reqs {
		if got, want := matchMap(ix2, req), matchMap(ix, req); !maps.Equal(got, want) {
			t.Errorf("request %d: restored Match = %v, original %v", i, got, want)
		}
	}
	s1, s2 := ix.Stats(), ix2.Stats()
	if s1.Blocks != s2.Blocks || len(s1.Workers) != len(s2.Workers) {
		t.Fatalf("restored %d blocks %d workers, original %d and %d", s2.Blocks, len(s2.Workers), s1.Blocks, len(s1.Workers))
	}
	for i := range s1.Workers {
		a, b := s1.Workers[i], s2.Workers[i]
		if a != b {
			t.Errorf("worker %d: restored %+v, original %+v", i, b, a)
		}
	}
	checkInvariants(t, ix2)
	// Removes after restore still resolve (engine map and refcounts came back).
	ix2.Apply(wA, "m", batch(removed(1, cat(doc(1, 4), doc(2, 3)), 0, 1, "GPU")))
	if got := matchMap(ix2, reqs[0])["a"]; got != [2]int{7, 7} {
		t.Errorf("after one of two removes of a duplicated block: a = %v, want 7/7", got)
	}
	// Predictions expire on the original schedule.
	clk.Advance(time.Minute)
	ix2.Sweep()
	if s := ix2.Stats(); s.PredictedEntries != 0 {
		t.Errorf("%d predictions outlived their expiry", s.PredictedEntries)
	}
}

func TestRestoreRejectsBadInput(t *testing.T) {
	ix, _, _ := dumpFixture(t)
	var buf bytes.Buffer
	if err := ix.Dump(&buf); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	for name, in := range map[string][]byte{
		"empty":       nil,
		"bad magic":   []byte("NOPE\x01\x00"),
		"bad version": []byte("KVRIDX\x09\x00"),
		"truncated":   good[:len(good)/2],
		"no end":      good[:len(good)-1],
		"bad tag":     []byte("KVRIDX\x01\x07"),
		"zero refs":   append([]byte("KVRIDX\x01\x01\x01a\x00\x01"), make([]byte, 16)...),
		"huge id":     []byte("KVRIDX\x01\x01\xff\xff\xff\xff\x0f"),
	} {
		ix2, _ := newIndex(t, Options{})
		if err := ix2.Restore(bytes.NewReader(in)); !errors.Is(err, ErrBadDump) {
			t.Errorf("%s: Restore = %v, want ErrBadDump", name, err)
		}
	}
}

// FuzzRestore feeds arbitrary bytes (seeded with a real dump) to Restore: it must not
// panic, whatever it installs must keep the index consistent, and what it installed
// survives a Dump and Restore into another index unchanged (same blocks, predictions
// and per-worker counts).
func FuzzRestore(f *testing.F) {
	ix, _, _ := dumpFixture(f)
	var buf bytes.Buffer
	if err := ix.Dump(&buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte("KVRIDX\x01\x00"))
	f.Fuzz(func(t *testing.T, in []byte) {
		ix2, _ := newIndex(t, Options{MaxBlocks: 1000, MaxBlocksPerWorker: 500})
		err := ix2.Restore(bytes.NewReader(in))
		if err != nil && !errors.Is(err, ErrBadDump) {
			t.Fatalf("error not wrapping ErrBadDump: %v", err)
		}
		checkInvariants(t, ix2)
		if err != nil {
			return
		}
		var dump bytes.Buffer
		if err := ix2.Dump(&dump); err != nil {
			t.Fatalf("Dump of a restored index: %v", err)
		}
		ix3, _ := newIndex(t, Options{MaxBlocks: 1000, MaxBlocksPerWorker: 500})
		if err := ix3.Restore(&dump); err != nil {
			t.Fatalf("Restore of the restored index's dump: %v", err)
		}
		checkInvariants(t, ix3)
		s2, s3 := ix2.Stats(), ix3.Stats()
		if s2.Blocks != s3.Blocks || s2.PredictedEntries != s3.PredictedEntries || !slices.Equal(s2.Workers, s3.Workers) {
			t.Fatalf("dump round trip: %d blocks, %d predicted, workers %+v; then %d, %d, %+v",
				s2.Blocks, s2.PredictedEntries, s2.Workers, s3.Blocks, s3.PredictedEntries, s3.Workers)
		}
	})
}

// TestRestoreRebuildsRuns: Dump writes blocks in chain order, so a restored index stores
// chains in as few runs as the original (one lookup per run in Match), not one per block.
func TestRestoreRebuildsRuns(t *testing.T) {
	ix, _ := newIndex(t, Options{})
	toks := cat(doc(1, 150), doc(2, 150))
	ix.Apply(wA, "m", batch(stored(1, toks, 0, 300, "GPU", "")))
	ix.Apply(wB, "m", batch(stored(2, toks, 0, 200, "GPU", "")))
	ix.Predict(wA1, chain("", toks)[:100], time.Minute)
	var buf bytes.Buffer
	if err := ix.Dump(&buf); err != nil {
		t.Fatalf("Dump: %v", err)
	}
	ix2, _ := newIndex(t, Options{})
	if err := ix2.Restore(&buf); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	s1, s2 := ix.Stats(), ix2.Stats()
	if s1.Runs != 3 || s2.Runs != s1.Runs || s2.Blocks != s1.Blocks {
		t.Errorf("restored %d blocks in %d runs, original %d in %d (want 3 runs: blocks 0-99, 100-199, 200-299)", s2.Blocks, s2.Runs, s1.Blocks, s1.Runs)
	}
	req := chain("", toks)
	if got, want := matchMap(ix2, req), matchMap(ix, req); !maps.Equal(got, want) {
		t.Errorf("restored Match = %v, original %v", got, want)
	}
	checkInvariants(t, ix2)
}

// A dump that turns out malformed after some good workers installs none of them: the
// index is left as it was.
func TestRestoreMalformedLeavesIndexUnchanged(t *testing.T) {
	ix, _, reqs := dumpFixture(t)
	var buf bytes.Buffer
	if err := ix.Dump(&buf); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	for name, in := range map[string][]byte{
		"truncated":     good[:len(good)-3],
		"no end":        good[:len(good)-1],
		"bad tag after": append(slices.Clone(good[:len(good)-1]), 7),
	} {
		ix2, _ := newIndex(t, Options{})
		ix2.Apply(wA, "m", batch(stored(1, doc(8, 3), 0, 3, "GPU", "")))
		before := ix2.Stats()
		if err := ix2.Restore(bytes.NewReader(in)); !errors.Is(err, ErrBadDump) {
			t.Fatalf("%s: Restore = %v, want ErrBadDump", name, err)
		}
		if after := ix2.Stats(); after.Blocks != before.Blocks || !slices.Equal(after.Workers, before.Workers) {
			t.Errorf("%s: a refused dump changed the index: %+v, was %+v", name, after.Workers, before.Workers)
		}
		for i, req := range reqs {
			if got := matchMap(ix2, req); len(got) != 0 {
				t.Errorf("%s: request %d matches %v after a refused dump", name, i, got)
			}
		}
		checkInvariants(t, ix2)
	}
}
