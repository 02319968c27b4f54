package valkeyindex

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/valkey-io/valkey-go"

	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
)

// The meta keys, in the order the write script takes them as KEYS.
const (
	keyWorkerSlot = iota // hash: worker -> slot
	keySlotWorker        // hash: slot -> worker
	keyEpochs            // string: epochSize bytes per slot
	keyVersion           // string: a new value whenever the slot table changes
	keyFree              // list: freed slots
	keyNext              // string: the next fresh slot
	keyVersionN          // string: counter part of the version
	numMetaKeys
)

// metaKeys are the meta keys of a prefix.
type metaKeys [numMetaKeys]string

func newMetaKeys(prefix string) metaKeys {
	return metaKeys{prefix + "slot", prefix + "slotw", prefix + "epochs", prefix + "slotver", prefix + "slotfree", prefix + "slotnext", prefix + "slotvern"}
}

// predSeconds is a prediction's expiry (unix ns) as the server stores it: unix seconds,
// rounded up so a prediction never counts for less time than it lives; at least 1.
func predSeconds(exp int64) int64 {
	return max((exp+int64(1e9)-1)/int64(1e9), 1)
}

// slotNames is the slot table as read at one version: the worker of each slot in use.
// It is immutable once built.
type slotNames struct {
	ver   string
	names []proto.WorkerKey // by slot
	used  []bool            // by slot: names[slot] is a worker
}

// worker returns the worker of slot s.
func (n *slotNames) worker(s int) (proto.WorkerKey, bool) {
	if s >= len(n.used) || !n.used[s] {
		return proto.WorkerKey{}, false
	}
	return n.names[s], true
}

// parseNames decodes the slot -> worker pairs of namesScript. It rejects slots out of
// range and malformed worker fields, so what it allocates is bounded by maxSlots.
func parseNames(ver string, pairs []string) (*slotNames, error) {
	if len(pairs)%2 != 0 || len(pairs) > 2*maxSlots {
		return nil, fmt.Errorf("%w: slot table of %d values", errReply, len(pairs))
	}
	top := -1
	for i := 0; i < len(pairs); i += 2 {
		s, err := strconv.Atoi(pairs[i])
		if err != nil || s < 0 || s >= maxSlots {
			return nil, fmt.Errorf("%w: slot %q", errReply, pairs[i])
		}
		top = max(top, s)
	}
	n := &slotNames{ver: ver, names: make([]proto.WorkerKey, top+1), used: make([]bool, top+1)}
	for i := 0; i < len(pairs); i += 2 {
		s, _ := strconv.Atoi(pairs[i])
		w, ok := parseWorkerField(pairs[i+1])
		if !ok {
			return nil, fmt.Errorf("%w: worker %q", errReply, pairs[i+1])
		}
		n.names[s], n.used[s] = w, true
	}
	return n, nil
}

// errReply is a reply that does not have the shape the layout prescribes.
var errReply = errors.New("valkeyindex: malformed match reply")

// matcher computes per-worker overlaps from the raw block values. It is immutable.
type matcher struct {
	count, conf uint8
	weight      [256]float64 // by masked flags
	maxWorkers  int
}

func newMatcher(count, conf uint8, weight func(uint8) float64, maxWorkers int) matcher {
	m := matcher{count: count, conf: conf, maxWorkers: maxWorkers}
	for f := range 256 {
		if uint8(f)&^count == 0 {
			m.weight[f] = weight(uint8(f))
		}
	}
	return m
}

// cand is one worker holding the request's first block, during a decode.
type cand struct {
	w         proto.WorkerKey
	f         uint8 // masked flags of the current run
	start     int   // first block of the current run
	seen      int   // last block that held the worker
	open      bool
	confOpen  bool
	blocks    int
	confirmed int
	score     float64
}

// entry decodes the entry of block value b at offset o under the slot epochs ep: its
// slot, its masked flags (0 when nothing in it counts) and its size; ok is false when it
// is cut short.
func (m *matcher) entry(b string, o int, ep string, nows int64) (slot int, f uint8, n int, ok bool) {
	if o+3 > len(b) {
		return 0, 0, 0, false
	}
	slot, fl := int(b[o])<<8|int(b[o+1]), b[o+2]
	n = 3
	if fl&entryTiers != 0 {
		n += 2
	}
	if fl&entryPred != 0 {
		n += 6
	}
	if o+n > len(b) {
		return 0, 0, 0, false
	}
	if (slot+1)*epochSize > len(ep) {
		return slot, 0, n, true
	}
	cev := uint16(ep[slot*4])<<8 | uint16(ep[slot*4+1])
	cpe := uint16(ep[slot*4+2])<<8 | uint16(ep[slot*4+3])
	p := o + 3
	if fl&entryTiers != 0 {
		if ev := uint16(b[p])<<8 | uint16(b[p+1]); ev == cev && cev != 0 {
			f = fl & entryTiers & indexer.TierFlags
		}
		p += 2
	}
	if fl&entryPred != 0 {
		pe := uint16(b[p])<<8 | uint16(b[p+1])
		ex := int64(b[p+2])<<24 | int64(b[p+3])<<16 | int64(b[p+4])<<8 | int64(b[p+5])
		if pe == cpe && cpe != 0 && ex > nows {
			f |= indexer.FlagPredicted
		}
	}
	return slot, f & m.count, n, true
}

// valid reports whether block value b is a whole sequence of entries.
func valid(b string) bool {
	for o := 0; o < len(b); {
		if o+3 > len(b) {
			return false
		}
		n := 3
		if b[o+2]&entryTiers != 0 {
			n += 2
		}
		if b[o+2]&entryPred != 0 {
			n += 6
		}
		o += n
		if o > len(b) {
			return false
		}
	}
	return true
}

// decode computes the overlaps of the request whose block values (in request order; ""
// for a missing key) are blocks, under the slot epochs ep and the slot table names, at
// now (unix ms), appending them to dst: the same answer the in-memory index gives for
// the same entries. Of several entries of one slot in a block value (the writer never
// makes them) the first that counts is used. It never allocates more than its input's
// size bounds (candidates are at most maxWorkers) and rejects a malformed value.
func (m *matcher) decode(nowMS int64, ep string, blocks []string, names *slotNames, dst []indexer.WorkerMatch) ([]indexer.WorkerMatch, error) {
	if len(ep)%epochSize != 0 || len(ep) > epochSize*maxSlots {
		return dst, fmt.Errorf("%w: epochs of %d bytes", errReply, len(ep))
	}
	for i, b := range blocks {
		if len(b) > entrySize*maxSlots || (i == 0 || b != blocks[i-1]) && !valid(b) {
			return dst, fmt.Errorf("%w: block %d of %d bytes", errReply, i, len(b))
		}
	}
	if len(blocks) == 0 || len(blocks[0]) == 0 {
		return dst, nil
	}
	nows := nowMS / 1000
	if nowMS < 0 && nowMS%1000 != 0 {
		nows-- // floor: an expiry counts while expiry*1000 > now
	}
	var cs []cand
	// bySlot maps a slot to its candidate + 1 (0: none); an entry of a slot past the
	// epochs string never counts, so len(ep)/epochSize bounds it.
	bySlot := make([]int32, len(ep)/epochSize)
	for o := 0; o < len(blocks[0]); {
		s, f, n, _ := m.entry(blocks[0], o, ep, nows)
		o += n
		if f == 0 || len(cs) >= m.maxWorkers || bySlot[s] != 0 {
			continue
		}
		w, ok := names.worker(s)
		if !ok {
			continue
		}
		cs = append(cs, cand{w: w, f: f, open: true, confOpen: f&m.conf != 0})
		bySlot[s] = int32(len(cs))
	}
	open := len(cs)
	shut := func(c *cand, i int) {
		c.score += float64(i-c.start) * m.weight[c.f]
		c.blocks, c.open = i, false
		if c.confOpen {
			c.confirmed, c.confOpen = i, false
		}
		open--
	}
	i := 1
	for ; i < len(blocks) && open > 0; i++ {
		b := blocks[i]
		if b == blocks[i-1] {
			// The same entries as the block before (a chain stored or predicted in one
			// go): every open worker holds it with the same flags, nothing changes.
			continue
		}
		seen := 0
		for o := 0; o < len(b); {
			s, f, n, _ := m.entry(b, o, ep, nows)
			o += n
			if f == 0 || s >= len(bySlot) || bySlot[s] == 0 {
				continue
			}
			c := &cs[bySlot[s]-1]
			if !c.open || c.seen == i {
				continue
			}
			c.seen = i
			seen++
			if f != c.f {
				c.score += float64(i-c.start) * m.weight[c.f]
				c.f, c.start = f, i
			}
			if c.confOpen && f&m.conf == 0 {
				c.confirmed, c.confOpen = i, false
			}
		}
		if seen == open {
			continue
		}
		for k := range cs {
			if c := &cs[k]; c.open && c.seen != i {
				shut(c, i)
			}
		}
	}
	for k := range cs {
		if c := &cs[k]; c.open {
			shut(c, i)
		}
	}
	for _, c := range cs {
		dst = append(dst, indexer.WorkerMatch{Worker: c.w, Blocks: c.blocks, Confirmed: c.confirmed, Score: c.score})
	}
	return dst, nil
}

// matchRemote asks the server for the request's block values, the slot epochs and the
// slot table's version in one MGET (one atomic read), and computes the overlaps here.
// The slot table is read again (a second round trip) only when its version changed
// since the last read; if it changed once more in between, the MGET is repeated.
func (v *Index) matchRemote(ctx context.Context, c valkey.Client, hashes []proto.BlockHash, dst []indexer.WorkerMatch) ([]indexer.WorkerMatch, error) {
	hashes = hashes[:min(len(hashes), v.opts.MaxMatchBlocks, v.replyBlocks())]
	keys := make([]string, 2, len(hashes)+2)
	keys[0], keys[1] = v.keys[keyVersion], v.keys[keyEpochs]
	// The block keys are substrings of one string: two allocations, not one per block.
	kl := len(v.opts.Prefix) + 2 + 8
	buf := make([]byte, 0, kl*len(hashes))
	for _, h := range hashes {
		buf = v.appendBlockKey(buf, h)
	}
	all := string(buf)
	for i := range hashes {
		keys = append(keys, all[i*kl:(i+1)*kl])
	}
	blocks := make([]string, len(hashes))
	for try := 0; ; try++ {
		vals, err := c.Do(ctx, c.B().Mget().Key(keys...).Build()).ToArray()
		if err != nil {
			return nil, err
		}
		if len(vals) != len(keys) {
			return nil, fmt.Errorf("%w: %d values for %d keys", errReply, len(vals), len(keys))
		}
		ver, err := optString(vals[0])
		if err != nil {
			return nil, err
		}
		ep, err := optString(vals[1])
		if err != nil {
			return nil, err
		}
		for i := range blocks {
			if blocks[i], err = optString(vals[i+2]); err != nil {
				return nil, err
			}
		}
		names := v.names.Load()
		if names == nil || names.ver != ver {
			if names, err = v.readNames(ctx, c); err != nil {
				return nil, err
			}
			if names.ver != ver {
				if try < 3 {
					continue // the table changed again between the two reads
				}
				return nil, errors.New("valkeyindex: slot table keeps changing")
			}
		}
		return v.m.decode(v.now().UnixMilli(), ep, blocks, names, dst)
	}
}

// maxReplyBytes bounds the block values one Match may read: a block value holds at most
// one entry per slot in use, so a request is cut to maxReplyBytes / (entrySize * slots)
// blocks (8192 blocks up to 186 workers; 372 blocks with 4096 workers).
const maxReplyBytes = 16 << 20

// replyBlocks is how many blocks a Match may ask for under maxReplyBytes, by the slot
// table as last read.
func (v *Index) replyBlocks() int {
	n := v.names.Load()
	if n == nil || len(n.used) == 0 {
		return maxReplyBytes / entrySize
	}
	return max(maxReplyBytes/(entrySize*len(n.used)), 1)
}

// optString is a string value, "" for a missing key.
func optString(m valkey.ValkeyMessage) (string, error) {
	s, err := m.ToString()
	if err != nil {
		if valkey.IsValkeyNil(err) {
			return "", nil
		}
		return "", fmt.Errorf("%w: %w", errReply, err)
	}
	return s, nil
}

// readNames reads the slot table and caches it.
func (v *Index) readNames(ctx context.Context, c valkey.Client) (*slotNames, error) {
	r, err := namesScript.Exec(ctx, c, []string{v.keys[keyVersion], v.keys[keySlotWorker]}, nil).ToArray()
	if err != nil {
		return nil, err
	}
	if len(r) != 2 {
		return nil, fmt.Errorf("%w: slot table reply of %d values", errReply, len(r))
	}
	ver, err := r[0].ToString()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errReply, err)
	}
	arr, err := r[1].ToArray()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errReply, err)
	}
	if len(arr) > 2*maxSlots {
		return nil, fmt.Errorf("%w: slot table of %d values", errReply, len(arr))
	}
	pairs := make([]string, len(arr))
	for i := range arr {
		if pairs[i], err = arr[i].ToString(); err != nil {
			return nil, fmt.Errorf("%w: %w", errReply, err)
		}
	}
	n, err := parseNames(ver, pairs)
	if err != nil {
		return nil, err
	}
	v.names.Store(n)
	return n, nil
}
