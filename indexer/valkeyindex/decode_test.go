package valkeyindex

import (
	"encoding/binary"
	"errors"
	"math"
	"strconv"
	"testing"

	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
)

// entry encodes one block-value entry independently of the write script (the layout
// of the package doc): the events epoch only with tier flags, the prediction only with
// an expiry.
func entry(slot uint16, flags uint8, ev, pe uint16, exp uint32) string {
	b := binary.BigEndian.AppendUint16(nil, slot)
	fl := flags
	if exp != 0 {
		fl |= 0x80
	}
	b = append(b, fl)
	if flags != 0 {
		b = binary.BigEndian.AppendUint16(b, ev)
	}
	if exp != 0 {
		b = binary.BigEndian.AppendUint16(b, pe)
		b = binary.BigEndian.AppendUint32(b, exp)
	}
	return string(b)
}

// epochs encodes the epochs string: (events, prediction) per slot.
func epochs(e ...[2]uint16) string {
	var b []byte
	for _, p := range e {
		b = binary.BigEndian.AppendUint16(b, p[0])
		b = binary.BigEndian.AppendUint16(b, p[1])
	}
	return string(b)
}

func testMatcher(maxWorkers int) matcher {
	weights := [indexer.NumTiers]float64{indexer.TierGPU: 1, indexer.TierCPU: 0.5}
	ix, err := indexer.New(indexer.Options{TierWeights: &weights, PredictedWeight: 0.75})
	if err != nil {
		panic(err)
	}
	count, conf := ix.MatchMasks()
	return newMatcher(count, conf, ix.BlockWeight, maxWorkers)
}

// testNames names slots 0..n-1 "w<slot>", except those in skip.
func testNames(n int, skip ...int) *slotNames {
	var pairs []string
	for s := range n {
		named := true
		for _, k := range skip {
			named = named && k != s
		}
		if named {
			pairs = append(pairs, strconv.Itoa(s), "0:w"+strconv.Itoa(s))
		}
	}
	names, err := parseNames("1", pairs)
	if err != nil {
		panic(err)
	}
	return names
}

const (
	gpu = 1 << indexer.TierGPU
	cpu = 1 << indexer.TierCPU
)

func TestDecode(t *testing.T) {
	const nowMS = 1_700_000_000_500 // expiries at or before 1,700,000,000 s no longer count
	// Slot 3 is retired (epochs 0), slot 4 unnamed, slots from 5 on past the string.
	ep := epochs([2]uint16{1, 1}, [2]uint16{3, 2}, [2]uint16{1, 1}, [2]uint16{0, 0}, [2]uint16{1, 1})
	w := func(s int) proto.WorkerKey { return proto.WorkerKey{ID: "w" + strconv.Itoa(s)} }
	type want struct {
		slot, blocks, confirmed int
		score                   float64
	}
	for _, c := range []struct {
		name   string
		blocks []string
		want   []want
		err    bool
	}{
		{"empty request", nil, nil, false},
		{"first block missing", []string{"", entry(0, gpu, 1, 1, 0)}, nil, false},
		{"gpu chains of two workers", []string{
			entry(0, gpu, 1, 1, 0) + entry(2, gpu, 1, 1, 0),
			entry(2, gpu, 1, 1, 0) + entry(0, gpu, 1, 1, 0),
			entry(0, gpu, 1, 1, 0),
			entry(0, gpu, 1, 1, 0),
			"",
			entry(2, gpu, 1, 1, 0),
		}, []want{{0, 4, 4, 4}, {2, 2, 2, 2}}, false},
		{"stale events epoch, current one", []string{
			entry(1, gpu, 2, 2, 0) + entry(0, gpu, 1, 1, 0),
			entry(1, gpu, 3, 2, 0) + entry(0, gpu, 1, 1, 0),
		}, []want{{0, 2, 2, 2}}, false},
		{"cpu then gpu, then a live prediction, then an expired one", []string{
			entry(1, cpu, 3, 2, 0),
			entry(1, gpu|cpu, 3, 2, 0),
			entry(1, 0, 3, 2, 1_700_000_001),
			entry(1, 0, 3, 2, 1_700_000_000),
		}, []want{{1, 3, 2, 0.5 + 1 + 0.75}}, false},
		{"prediction of a stale epoch", []string{
			entry(1, 0, 3, 1, 1_800_000_000),
		}, nil, false},
		{"prediction then confirmed: confirmed stops at the first predicted block", []string{
			entry(0, 0, 1, 1, 1_800_000_000),
			entry(0, gpu, 1, 1, 0),
		}, []want{{0, 2, 0, 1.75}}, false},
		{"unnamed slot, retired slot (epochs 0), slot past the epochs string", []string{
			entry(4, gpu, 1, 1, 0) + entry(3, gpu, 0, 0, 0) + entry(9, gpu, 1, 1, 0),
		}, nil, false},
		{"duplicate slot: the first entry that counts", []string{
			entry(0, 0, 9, 9, 0) + entry(0, gpu, 1, 1, 0) + entry(0, cpu, 1, 1, 0),
			entry(0, cpu, 1, 1, 0) + entry(0, gpu, 1, 1, 0),
		}, []want{{0, 2, 2, 1.5}}, false},
		{"malformed block", []string{entry(0, gpu, 1, 1, 0) + "x"}, nil, true},
		{"entry cut short", []string{entry(0, gpu, 1, 1, 0), entry(0, gpu, 1, 1, 5)[:8]}, nil, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := testMatcher(16)
			names := testNames(10, 4)
			got, err := m.decode(nowMS, ep, c.blocks, names, nil)
			if c.err {
				if !errors.Is(err, errReply) {
					t.Fatalf("err %v, want errReply", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
			for i, wt := range c.want {
				g := got[i]
				if g.Worker != w(wt.slot) || g.Blocks != wt.blocks || g.Confirmed != wt.confirmed || math.Abs(g.Score-wt.score) > 1e-9 {
					t.Fatalf("got %+v, want %+v", got, c.want)
				}
			}
		})
	}
	m := testMatcher(16)
	if _, err := m.decode(0, "abc", nil, testNames(1), nil); !errors.Is(err, errReply) {
		t.Fatalf("epochs of 3 bytes: err %v", err)
	}
}

func TestParseNames(t *testing.T) {
	for _, bad := range [][]string{{"1"}, {"x", "0:w"}, {"-1", "0:w"}, {"65536", "0:w"}, {"1", "w"}, {"1", "-1:w"}} {
		if _, err := parseNames("1", bad); !errors.Is(err, errReply) {
			t.Errorf("%q: err %v", bad, err)
		}
	}
	n, err := parseNames("7", []string{"3", "2:a:b", "0", "0:c"})
	if err != nil {
		t.Fatal(err)
	}
	if w, ok := n.worker(3); !ok || w != (proto.WorkerKey{ID: "a:b", DPRank: 2}) {
		t.Fatalf("slot 3: %v %v", w, ok)
	}
	if _, ok := n.worker(1); ok {
		t.Fatal("slot 1 named")
	}
	if _, ok := n.worker(70000); ok {
		t.Fatal("slot 70000 named")
	}
}

// naiveEntry is an entry as naiveParse reads it.
type naiveEntry struct {
	slot          int
	tiers         uint8
	ev, pe        uint16
	exp           int64
	hasEv, hasExp bool
}

// naiveParse splits a block value into entries, false when it does not end on an
// entry's end.
func naiveParse(b []byte) ([]naiveEntry, bool) {
	var out []naiveEntry
	for len(b) > 0 {
		if len(b) < 3 {
			return nil, false
		}
		e := naiveEntry{slot: int(binary.BigEndian.Uint16(b)), tiers: b[2] & 0x0f, hasEv: b[2]&0x0f != 0, hasExp: b[2]&0x80 != 0}
		b = b[3:]
		if e.hasEv {
			if len(b) < 2 {
				return nil, false
			}
			e.ev, b = binary.BigEndian.Uint16(b), b[2:]
		}
		if e.hasExp {
			if len(b) < 6 {
				return nil, false
			}
			e.pe, e.exp, b = binary.BigEndian.Uint16(b), int64(binary.BigEndian.Uint32(b[2:])), b[6:]
		}
		out = append(out, e)
	}
	return out, true
}

// naiveDecode is the reference the fuzz target compares decode with: per candidate
// and block, the first entry of its slot that counts, block by block; nil, false when a
// block value is malformed.
func naiveDecode(m *matcher, nowMS int64, ep []byte, blocks []string, names *slotNames) ([]indexer.WorkerMatch, bool) {
	nows := (nowMS - ((nowMS%1000)+1000)%1000) / 1000
	parsed := make([][]naiveEntry, len(blocks))
	for i, b := range blocks {
		var ok bool
		if parsed[i], ok = naiveParse([]byte(b)); !ok {
			return nil, false
		}
	}
	flags := func(e naiveEntry) uint8 {
		if e.slot >= len(ep)/4 {
			return 0
		}
		cev, cpe := binary.BigEndian.Uint16(ep[e.slot*4:]), binary.BigEndian.Uint16(ep[e.slot*4+2:])
		var f uint8
		if e.hasEv && e.ev == cev && cev != 0 {
			f = e.tiers
		}
		if e.hasExp && e.pe == cpe && cpe != 0 && e.exp > nows {
			f |= indexer.FlagPredicted
		}
		return f & m.count
	}
	at := func(es []naiveEntry, slot int) uint8 {
		for _, e := range es {
			if f := flags(e); e.slot == slot && f != 0 {
				return f
			}
		}
		return 0
	}
	if len(blocks) == 0 {
		return nil, true
	}
	var out []indexer.WorkerMatch
	var slots []int
	for _, e := range parsed[0] {
		f := flags(e)
		if f == 0 || len(out) >= m.maxWorkers {
			continue
		}
		w, ok := names.worker(e.slot)
		dup := false
		for _, k := range slots {
			dup = dup || k == e.slot
		}
		if !ok || dup {
			continue
		}
		slots = append(slots, e.slot)
		r := indexer.WorkerMatch{Worker: w}
		conf := true
		for i := range blocks {
			f := at(parsed[i], e.slot)
			if f == 0 {
				break
			}
			if conf && f&m.conf == 0 {
				conf = false
			}
			r.Blocks = i + 1
			if conf {
				r.Confirmed = i + 1
			}
			r.Score += m.weight[f]
		}
		out = append(out, r)
	}
	return out, true
}

// FuzzDecodeMatch feeds decode what a server might answer to a Match (the epochs
// string and block values of any bytes, any clock) and compares every answer with
// naiveDecode; malformed values must be rejected with errReply, never panic.
func FuzzDecodeMatch(f *testing.F) {
	e := func(es ...string) []byte {
		var b []byte
		for _, s := range es {
			b = append(b, byte(len(s)))
			b = append(b, s...)
		}
		return b
	}
	ep := []byte(epochs([2]uint16{1, 1}, [2]uint16{3, 2}, [2]uint16{1, 1}, [2]uint16{0, 0}))
	f.Add(ep, e(entry(0, gpu, 1, 1, 0)+entry(2, gpu, 1, 1, 0), entry(2, gpu, 1, 1, 0), entry(2, gpu, 1, 1, 0)+entry(0, gpu, 1, 1, 0)), int64(1_700_000_000_500), uint16(0xffff))
	f.Add(ep, e(entry(1, cpu, 3, 2, 0), entry(1, gpu|cpu, 3, 2, 0), entry(1, 0, 3, 2, 1_700_000_001), entry(1, 0, 3, 2, 1_700_000_001)), int64(1_700_000_000_500), uint16(0xfffb))
	f.Add(ep, e(entry(0, 0, 1, 1, 1_800_000_000), entry(0, gpu, 1, 1, 0), "", entry(0, gpu, 1, 1, 0)), int64(-1500), uint16(1))
	f.Add([]byte("abc"), []byte{3, 1, 2, 3}, int64(0), uint16(0))
	f.Add(ep, []byte{4, 0, 0, 0x81, 0}, int64(0), uint16(1))
	f.Fuzz(func(t *testing.T, ep, raw []byte, nowMS int64, named uint16) {
		// raw is a sequence of blocks, each a length byte then its bytes.
		var blocks []string
		for len(raw) > 0 {
			n := min(int(raw[0]), len(raw)-1)
			blocks = append(blocks, string(raw[1:1+n]))
			raw = raw[1+n:]
		}
		var pairs []string
		for s := range 16 {
			if named&(1<<s) != 0 {
				pairs = append(pairs, strconv.Itoa(s), "0:w"+strconv.Itoa(s))
			}
		}
		names, err := parseNames("1", pairs)
		if err != nil {
			t.Fatal(err)
		}
		m := testMatcher(4)
		got, err := m.decode(nowMS, string(ep), blocks, names, nil)
		want, ok := naiveDecode(&m, nowMS, ep, blocks, names)
		if !ok || len(ep)%epochSize != 0 {
			if !errors.Is(err, errReply) {
				t.Fatalf("malformed input: err %v", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("decode %+v, naive %+v", got, want)
		}
		for i := range want {
			g, w := got[i], want[i]
			if g.Worker != w.Worker || g.Blocks != w.Blocks || g.Confirmed != w.Confirmed || math.Abs(g.Score-w.Score) > 1e-9 {
				t.Fatalf("decode %+v, naive %+v", got, want)
			}
			if g.Blocks < 1 || g.Confirmed > g.Blocks || g.Blocks > len(blocks) || g.Score > float64(g.Blocks)+1e-9 {
				t.Fatalf("out of range: %+v", g)
			}
		}
	})
}

// TestReplyBlocks: a Match asks for fewer blocks the more slots are in use, so the
// reply stays under maxReplyBytes.
func TestReplyBlocks(t *testing.T) {
	v := &Index{}
	if n := v.replyBlocks(); n != maxReplyBytes/entrySize {
		t.Fatalf("no slot table: %d", n)
	}
	for _, c := range []struct{ slots, want int }{{64, 23831}, {186, 8200}, {4096, 372}, {maxSlots, 23}} {
		v.names.Store(testNames(c.slots))
		if n := v.replyBlocks(); n != c.want || n*entrySize*c.slots > maxReplyBytes {
			t.Errorf("%d slots: %d blocks, want %d", c.slots, n, c.want)
		}
	}
}
