package indexer

import (
	"testing"

	"github.com/kvroute/kvroute/proto"
)

// BenchmarkIngestFloorAtMemory is BenchmarkIngestFloor/two-tables with its two tables
// sized for the memory the issue allows the index (at most 48 bytes per (block, worker)
// entry, BenchmarkMemoryPerEntry) instead of kept half full: at the stream's full caches
// (1,048,576 blocks held by one worker each) the 16-byte entries fill 2/3 of both tables,
// 24 + 24 = 48 bytes per entry, where two-tables spends 32 + 32 = 64. Same stream, same
// work, same warming; sizes that are not powers of two take a multiply-shift home and a
// compare to wrap. The distance between two-tables and this case is what the floor's
// rate owes to its memory, not to doing less.
//
//	GOMAXPROCS=1 go test -run x -bench 'IngestFloor|ApplyMooncake/steady' -benchtime 3x ./indexer
func BenchmarkIngestFloorAtMemory(b *testing.B) {
	s := loadMooncake(b, 4000, 2000)
	b.Run("two-tables-48B", func(b *testing.B) {
		// 2/3 full at the fleet's capacity: 8 x 131,072 engine entries, as many blocks.
		timeFloor(b, s, func() floorApplier { return newFloorIndexN(len(s.workers), 3<<20/2, 3<<17/2) })
	})
}

// floorTableN is floorTable of any size, and floorIndexN floorIndex over it: a copy, not
// a generic floorIndex[T], because the floor must be the least work, and a method of a
// type parameter that is a pointer type is called through a dictionary in Go's
// implementation of generics; floorTable keeps its power-of-two mask so that
// BenchmarkIngestFloor's figures stay comparable with the earlier ones.
type floorTableN struct {
	e    []floorEntry
	size uint64
}

func newFloorTableN(size int) *floorTableN {
	return &floorTableN{e: make([]floorEntry, size), size: uint64(size)}
}

func (t *floorTableN) home(k uint64) uint64 {
	return (k * 0x9E3779B97F4A7C15 >> 32) * t.size >> 32
}

func (t *floorTableN) inc(i uint64) uint64 {
	if i++; i == t.size {
		return 0
	}
	return i
}

// dist returns how far slot i is past slot h, cyclically.
func (t *floorTableN) dist(i, h uint64) uint64 {
	if i >= h {
		return i - h
	}
	return i + t.size - h
}

func (t *floorTableN) slot(k uint64) *floorEntry {
	i := t.home(k)
	for t.e[i].k != 0 && t.e[i].k != k {
		i = t.inc(i)
	}
	return &t.e[i]
}

func (t *floorTableN) del(k uint64) {
	i := t.home(k)
	for t.e[i].k != k {
		i = t.inc(i)
	}
	for j := t.inc(i); t.e[j].k != 0; j = t.inc(j) {
		if t.dist(j, t.home(t.e[j].k)) >= t.dist(j, i) {
			t.e[i] = t.e[j]
			i = j
		}
	}
	t.e[i] = floorEntry{}
}

// floorIndexN is floorIndex (two tables) over floorTableN; apply is the same code.
type floorIndexN struct {
	eng     []*floorTableN
	nodes   *floorTableN
	dropped int
}

func newFloorIndexN(workers, nodeSlots, engSlots int) *floorIndexN {
	f := &floorIndexN{nodes: newFloorTableN(nodeSlots)}
	for range workers {
		f.eng = append(f.eng, newFloorTableN(engSlots))
	}
	return f
}

func (f *floorIndexN) droppedBlocks() int { return f.dropped }

func (f *floorIndexN) apply(w int, bt *proto.Batch) {
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
