package indexer

import (
	"context"
	"runtime/pprof"
	"testing"

	"github.com/kvroute/kvroute/proto"
)

// BenchmarkIngestFloor measures what the least an index of this shape must do costs on
// the machine at hand, for the stream of BenchmarkApplyMooncake/steady: per stored block
// its chained hash, an insert into the worker's engine-hash table and an update of the
// block's holders in a block table; per removed block a lookup and delete in the
// engine-hash table and an update in the block table. Nothing else: no runs, holder
// sets, tiers, reference counts, predictions, eviction, bounds, locks or metrics. Both
// tables are minimal linear-probing tables of 16-byte entries kept at most half full
// (power-of-two sizes, sized once, backward-shift deletion), warmed in groups of 32 as
// Apply does. Its rate is an upper bound for the design, not a design: the distance
// between it and BenchmarkApplyMooncake/steady is the cost of the index's features and
// of its code; the floor itself is set by the hash and the memory system.
//
// "engine-table-only" drops the block table: the hash and the per-worker engine-hash
// tables alone, a bound for any design that resolves BlockRemoved through such a map,
// as the design does.
//
//	GOMAXPROCS=1 go test -run x -bench 'IngestFloor|ApplyMooncake/steady' -benchtime 3x ./indexer
func BenchmarkIngestFloor(b *testing.B) {
	s := loadMooncake(b, 4000, 2000)
	b.Run("two-tables", func(b *testing.B) { benchIngestFloor(b, s, false) })
	// Only the hash and the engine-hash tables: what a per-worker engine-hash map (which
	// BlockRemoved needs) costs before any index of holders.
	b.Run("engine-table-only", func(b *testing.B) { benchIngestFloor(b, s, true) })
}

func benchIngestFloor(b *testing.B, s *mooncakeStream, engOnly bool) {
	timeFloor(b, s, func() floorApplier { return newFloorIndex(len(s.workers), 1<<21, 1<<18, engOnly) })
}

// floorApplier is a floor index under measurement.
type floorApplier interface {
	apply(w int, bt *proto.Batch)
	droppedBlocks() int
}

// timeFloor warms a new floor index from newF with the stream's warm-up batches, then
// times the steady batches, per CPU-second, b.N times.
func timeFloor(b *testing.B, s *mooncakeStream, newF func() floorApplier) {
	b.ResetTimer()
	b.ReportAllocs()
	var cpu float64
	for range b.N {
		b.StopTimer()
		f := newF()
		for w, bs := range s.warm {
			for _, bt := range bs {
				f.apply(w, bt)
			}
		}
		b.StartTimer()
		c0 := cpuTime()
		pprof.Do(context.Background(), pprof.Labels("phase", "timed"), func(context.Context) {
			for w, bs := range s.batches {
				for _, bt := range bs {
					f.apply(w, bt)
				}
			}
		})
		cpu += (cpuTime() - c0).Seconds()
		if n := f.droppedBlocks(); n != 0 {
			b.Fatalf("%d blocks not found", n)
		}
	}
	b.ReportMetric(float64(s.ops)*float64(b.N)/cpu, "block-ops/cpu-s")
}

// floorTable is a linear-probing table of nonzero uint64 keys to uint64 values.
type floorTable struct {
	e    []floorEntry
	mask uint64
}

type floorEntry struct{ k, v uint64 }

func newFloorTable(size int) *floorTable {
	t := &floorTable{e: make([]floorEntry, size), mask: uint64(size - 1)}
	return t
}

func (t *floorTable) home(k uint64) uint64 { return (k * 0x9E3779B97F4A7C15) >> 20 & t.mask }

// slot returns the entry of k or the empty entry where it would go.
func (t *floorTable) slot(k uint64) *floorEntry {
	i := t.home(k)
	for t.e[i].k != 0 && t.e[i].k != k {
		i = (i + 1) & t.mask
	}
	return &t.e[i]
}

func (t *floorTable) del(k uint64) {
	i := t.home(k)
	for t.e[i].k != k {
		i = (i + 1) & t.mask
	}
	// Backward-shift deletion: move later entries of the cluster that may move back.
	for j := (i + 1) & t.mask; t.e[j].k != 0; j = (j + 1) & t.mask {
		h := t.home(t.e[j].k)
		if (j-h)&t.mask >= (j-i)&t.mask {
			t.e[i] = t.e[j]
			i = j
		}
	}
	t.e[i] = floorEntry{}
}

type floorIndex struct {
	eng     []*floorTable // per worker: engine hash -> own hash
	nodes   *floorTable   // own hash -> holder bitmask
	engOnly bool          // skip the block table
	dropped int
}

func newFloorIndex(workers, nodeSlots, engSlots int, engOnly bool) *floorIndex {
	f := &floorIndex{nodes: newFloorTable(nodeSlots), engOnly: engOnly}
	for range workers {
		f.eng = append(f.eng, newFloorTable(engSlots))
	}
	return f
}

func (f *floorIndex) droppedBlocks() int { return f.dropped }

func (f *floorIndex) apply(w int, bt *proto.Batch) {
	et, bit := f.eng[w], uint64(1)<<w
	var own [warmGroup]uint64
	var warm uint64
	var found [warmGroup]bool
	for i := range bt.Events {
		ev := &bt.Events[i]
		switch ev.Kind {
		case proto.BlockStored:
			var parent proto.BlockHash
			if ev.HasParent {
				parent = proto.BlockHash(et.slot(uint64(ev.ParentHash)).v)
			}
			bs := len(ev.TokenIDs) / len(ev.BlockHashes)
			for g := 0; g < len(ev.BlockHashes); g += warmGroup {
				hs := ev.BlockHashes[g:min(g+warmGroup, len(ev.BlockHashes))]
				for j := range hs {
					parent = proto.ChainBlock(parent, ev.TokenIDs[(g+j)*bs:(g+j+1)*bs])
					own[j] = uint64(parent)
				}
				if f.engOnly {
					for _, eh := range hs {
						warm += et.e[et.home(uint64(eh))].k
					}
					for j, eh := range hs {
						*et.slot(uint64(eh)) = floorEntry{uint64(eh), own[j]}
					}
					continue
				}
				for j, eh := range hs {
					warm += f.nodes.e[f.nodes.home(own[j])].k + et.e[et.home(uint64(eh))].k
				}
				for j, eh := range hs {
					*et.slot(uint64(eh)) = floorEntry{uint64(eh), own[j]}
					n := f.nodes.slot(own[j])
					n.k = own[j]
					n.v |= bit
				}
			}
		case proto.BlockRemoved:
			for g := 0; g < len(ev.BlockHashes); g += warmGroup {
				hs := ev.BlockHashes[g:min(g+warmGroup, len(ev.BlockHashes))]
				for _, eh := range hs {
					warm += et.e[et.home(uint64(eh))].k
				}
				// Resolve the group's own hashes, then warm their block entries.
				for j, eh := range hs {
					e := et.slot(uint64(eh))
					own[j], found[j] = e.v, e.k != 0
					warm += f.nodes.e[f.nodes.home(own[j])].k
				}
				for j, eh := range hs {
					if !found[j] {
						f.dropped++
						continue
					}
					et.del(uint64(eh))
					if f.engOnly {
						continue
					}
					n := f.nodes.slot(own[j])
					if n.k == 0 {
						f.dropped++
						continue
					}
					if n.v &^= bit; n.v == 0 {
						f.nodes.del(own[j])
					}
				}
			}
		}
	}
	if warm == 1 {
		f.dropped-- // keeps the warming loads alive
	}
}
