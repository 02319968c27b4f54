package indexer

import (
	"bufio"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/kvroute/kvroute/proto"
)

// Dump format, version 1 (all integers little endian; uv = unsigned varint, sv = signed
// varint):
//
//	"KVRIDX" uv(version)
//	per worker: 0x01 uv(len) id sv(dp_rank)
//	            uv(n) n x { u64 engine_fingerprint<<16 | refs (4 bits per tier), u64 own_hash }
//	            uv(m) m x { u64 own_hash, sv(expiry unix ns) }
//	0x00
//
// Only the per-worker state is written; the node table, holder sets and counts are
// derived from it on Restore.
const (
	dumpMagic   = "KVRIDX"
	dumpVersion = 1
	// maxDumpID bounds a worker id read by Restore.
	maxDumpID = 4096
)

// ErrBadDump is wrapped by every error Restore returns for malformed input.
var ErrBadDump = errors.New("malformed index dump")

// Dump writes every worker's engine-hash entries and live predictions to w, so that a
// restarted router can Restore them instead of starting cold (Dynamo #1056). Each worker
// is copied under the read lock and written without it, so Dump blocks neither ingest
// nor Match for long; the dump is consistent per worker, not across workers.
func (ix *Index) Dump(w io.Writer) error {
	bw := bufio.NewWriter(w)
	_, _ = bw.WriteString(dumpMagic)
	var tmp [binary.MaxVarintLen64]byte
	_, _ = bw.Write(tmp[:binary.PutUvarint(tmp[:], dumpVersion)])
	ix.mu.RLock()
	keys := make([]proto.WorkerKey, 0, len(ix.byKey))
	for k := range ix.byKey {
		keys = append(keys, k)
	}
	ix.mu.RUnlock()
	var buf []byte
	for _, k := range keys {
		buf = ix.dumpWorker(buf[:0], k)
		if _, err := bw.Write(buf); err != nil {
			return fmt.Errorf("write index dump: %w", err)
		}
	}
	_ = bw.WriteByte(0)
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write index dump: %w", err)
	}
	return nil
}

func (ix *Index) dumpWorker(buf []byte, k proto.WorkerKey) []byte {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	ws := ix.byKey[k]
	if ws == nil {
		return buf
	}
	buf = append(buf, 1)
	buf = binary.AppendUvarint(buf, uint64(len(k.ID)))
	buf = append(buf, k.ID...)
	buf = binary.AppendVarint(buf, int64(k.DPRank))
	// Entries and predictions go out in node-table order (chain order within each run),
	// so that Restore, inserting them in that order, rebuilds the runs instead of one
	// run per block.
	ents := make([]posEntry, 0, ws.eng.len())
	for _, e := range ws.eng.slots {
		if e.tag != 0 {
			ents = append(ents, posEntry{pos: ix.nodePos(e.own), e: e})
		}
	}
	sortByPos(ents)
	buf = binary.AppendUvarint(buf, uint64(len(ents)))
	for _, pe := range ents {
		buf = binary.LittleEndian.AppendUint64(buf, pe.e.tag)
		buf = binary.LittleEndian.AppendUint64(buf, uint64(pe.e.own))
	}
	ents = ents[:0]
	for own, exp := range ws.pred.all() {
		ents = append(ents, posEntry{pos: ix.nodePos(own), e: engEntry{own: own}, exp: exp})
	}
	sortByPos(ents)
	buf = binary.AppendUvarint(buf, uint64(len(ents)))
	for _, pe := range ents {
		buf = binary.LittleEndian.AppendUint64(buf, uint64(pe.e.own))
		buf = binary.AppendVarint(buf, pe.exp)
	}
	return buf
}

// posEntry is an engine entry or prediction with the node-table position of its block.
type posEntry struct {
	pos uint64
	e   engEntry
	exp int64
}

func sortByPos(ents []posEntry) {
	slices.SortFunc(ents, func(a, b posEntry) int { return cmp.Compare(a.pos, b.pos) })
}

// nodePos returns own's node-table position, or the largest value for an evicted block.
// mu must be held.
func (ix *Index) nodePos(own proto.BlockHash) uint64 {
	if p, ok := ix.nodes.Pos(uint64(own)); ok {
		return p
	}
	return math.MaxUint64
}

// Restore reads a dump written by Dump and installs it: each dumped worker's state
// replaces what the index holds for that worker (other workers are untouched); expired
// predictions are skipped; the bounds of Options apply. Malformed input returns an error
// wrapping ErrBadDump and leaves the index unchanged: the whole dump is decoded (into
// memory, about 24 bytes per entry) before any worker is installed. A dump of another
// version is refused.
func (ix *Index) Restore(r io.Reader) error {
	br := bufio.NewReader(r)
	magic := make([]byte, len(dumpMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != dumpMagic {
		return fmt.Errorf("restore index: %w: missing magic", ErrBadDump)
	}
	v, err := binary.ReadUvarint(br)
	if err != nil || v != dumpVersion {
		return fmt.Errorf("restore index: %w: unsupported version %d", ErrBadDump, v)
	}
	var workers []dumpedWorker
	for n := 0; ; n++ {
		tag, err := br.ReadByte()
		if err != nil {
			return fmt.Errorf("restore index: %w: worker %d: %w", ErrBadDump, n, err)
		}
		switch tag {
		case 0:
			for i := range workers {
				ix.installWorker(&workers[i])
			}
			return nil
		case 1:
			dw, err := decodeWorker(br)
			if err != nil {
				return fmt.Errorf("restore index: %w: worker %d: %w", ErrBadDump, n, err)
			}
			workers = append(workers, dw)
		default:
			return fmt.Errorf("restore index: %w: worker %d: tag %d", ErrBadDump, n, tag)
		}
	}
}

// dumpedWorker is one worker's state as decoded from a dump, not yet installed.
type dumpedWorker struct {
	key            proto.WorkerKey
	entries, preds []restoreEntry
}

// restoreEntry is one decoded engine entry or prediction.
type restoreEntry struct {
	e   engEntry
	exp int64 // predictions
}

// decodeWorker reads one worker's record (after its tag) without touching the index.
func decodeWorker(br *bufio.Reader) (dumpedWorker, error) {
	var dw dumpedWorker
	idLen, err := binary.ReadUvarint(br)
	if err != nil {
		return dw, err
	}
	if idLen > maxDumpID {
		return dw, fmt.Errorf("worker id of %d bytes", idLen)
	}
	id := make([]byte, idLen)
	if _, err := io.ReadFull(br, id); err != nil {
		return dw, err
	}
	rank, err := binary.ReadVarint(br)
	if err != nil {
		return dw, err
	}
	if rank < 0 || rank > 1<<20 {
		return dw, fmt.Errorf("dp rank %d", rank)
	}
	key := proto.WorkerKey{ID: string(id), DPRank: int(rank)}
	// Decode fully before touching the index; never trust a count for allocation.
	var entries, preds []restoreEntry
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return dw, err
	}
	var rec [16]byte
	for i := uint64(0); i < n; i++ {
		if _, err := io.ReadFull(br, rec[:]); err != nil {
			return dw, err
		}
		var re restoreEntry
		re.e.tag = binary.LittleEndian.Uint64(rec[0:])
		re.e.own = proto.BlockHash(binary.LittleEndian.Uint64(rec[8:]))
		if re.e.empty() || re.e.fp() == 0 {
			return dw, fmt.Errorf("engine entry %d without references or fingerprint", i)
		}
		entries = append(entries, re)
	}
	m, err := binary.ReadUvarint(br)
	if err != nil {
		return dw, err
	}
	for i := uint64(0); i < m; i++ {
		if _, err := io.ReadFull(br, rec[:8]); err != nil {
			return dw, err
		}
		exp, err := binary.ReadVarint(br)
		if err != nil {
			return dw, err
		}
		preds = append(preds, restoreEntry{e: engEntry{own: proto.BlockHash(binary.LittleEndian.Uint64(rec[:8]))}, exp: exp})
	}
	dw.key, dw.entries, dw.preds = key, entries, preds
	return dw, nil
}

// installWorker replaces the state of dw's worker with dw.
func (ix *Index) installWorker(dw *dumpedWorker) {
	key, entries, preds := dw.key, dw.entries, dw.preds
	ix.ClearWorker(key)
	now, tick := ix.nowTick()
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ws := ix.worker(key, true)
	ops := 0
	// Dump writes blocks in chain order: each is offered the previous one as its parent,
	// which rebuilds the runs (a wrong guess costs nothing but a lookup).
	var prev proto.BlockHash
	for _, re := range entries {
		for t := Tier(0); t < numTiers; t++ {
			for range re.e.ref(t) {
				if ws.removed() {
					return
				}
				ix.store(ws, re.e.fp(), re.e.own, ix.nodes.Hash(uint64(re.e.own)), prev, t, tick)
			}
			ix.yield(&ops)
		}
		prev = re.e.own
	}
	if ws.removed() {
		return
	}
	nowNS := now.UnixNano()
	prev = 0
	for _, p := range preds {
		if p.exp <= nowNS {
			continue
		}
		ix.predictLocked(ws, p.e.own, prev, p.exp, tick)
		prev = p.e.own
	}
	ix.maintain(now, tick)
}
