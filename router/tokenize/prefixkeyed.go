package tokenize

import "unsafe"

// EncodeKeyed is EncodeReuse for a caller that knows which earlier texts the new one
// probably extends, such as the previous turn of a chat conversation: hints are keys
// of earlier EncodeKeyed calls, most promising first, and the result is filed under
// key. The ids are Encode's whatever the hints say (a wrong or stale hint costs time,
// never correctness): the first hinted text that shares a checkpoint with text is
// reused up to its last checkpoint whose read bytes text repeats (the argument of
// PrefixCache's doc comment, with the read bytes recorded on the cached text; the
// split is deterministic, so on equal bytes it reads and decides the same), and only
// text after that checkpoint is split and encoded. Splitting text[b:] on its own
// gives the segments the whole text's split has after b: the scan restarts at b in
// both cases (the pending plain text starts at the token end b, lstrip never crosses
// it) and no segment after b begins at offset 0. So the cost of a new turn is its
// new text plus a compare of the shared prefix (memory speed), instead of
// an added-token scan of the whole conversation. Without a usable hint it is
// EncodeReuse. The second result is the number of bytes reused.
func (c *PrefixCache) EncodeKeyed(text string, addSpecial bool, hints []uint64, key uint64) ([]uint32, int) {
	ids, r := c.EncodeKeyedReuse(text, addSpecial, hints, key)
	return ids.Slice(), r.Bytes
}

// EncodeKeyedReuse is EncodeKeyed with the ids in parts shared with the cached results
// (IDs) and what it reused (Reuse: which cached result the ids repeat the leading ids
// of, and both results' memos).
func (c *PrefixCache) EncodeKeyedReuse(text string, addSpecial bool, hints []uint64, key uint64) (IDs, Reuse) {
	t := c.tok
	if !t.prefixSafe {
		return MakeIDs(t.Encode(text, addSpecial)), Reuse{}
	}
	var e *prefixEntry
	ci := -1
	c.mu.Lock()
	for _, h := range hints {
		cand := c.byKey[h]
		if cand == nil {
			continue
		}
		if i := sharedCheckpoint(cand, text); i >= 0 {
			e, ci = cand, i
			break
		}
	}
	c.mu.Unlock()
	if e == nil {
		return c.encodeReuse(text, addSpecial, key, true)
	}
	// An entry's text, ids and checkpoints never change once stored, so they are
	// read without the lock (eviction only drops the maps' references).
	rec := e.cps[ci]
	b := rec.end
	buf := encodePool.Get().(*encodeBuf)
	defer buf.release()
	cps := checkpointsOf(t, buf, text, b, rec.hash, false)

	recs := make([]cpRecord, ci+1, ci+1+len(cps))
	copy(recs, e.cps[:ci+1])
	ids, r := c.encodeRest(text, addSpecial, buf, 0, cps, 0, e.ids.head(rec.nIDs), len(text)-b, recs, e, key, true)
	r.Bytes = b
	return ids, r
}

// sharedCheckpoint returns the index of e's last checkpoint whose read bytes text
// repeats, or -1. Reads never decrease along the checkpoints, so the checkpoints
// text shares are a prefix of them. A checkpoint that read to the end of e.text
// (a token match or an rstrip stopped by the end of the input) is shared only by an
// identical text: a longer text could extend the match or the stripped whitespace.
func sharedCheckpoint(e *prefixEntry, text string) int {
	n := commonPrefix(e.text, text)
	if n != len(e.text) || n != len(text) {
		n = min(n, len(e.text)-1)
	}
	lo, hi := 0, len(e.cps) // first checkpoint not shared is in [lo, hi]
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if e.cps[mid].read <= n {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo - 1
}

// commonPrefix returns the length of the longest common prefix of a and b. It
// compares in chunks, which the runtime's memequal does at memory speed. Strings that
// start at the same address share their bytes up to the shorter one's end: a chat
// turn's prompt extends the previous turn's in place (jinja's outBuf).
func commonPrefix(a, b string) int {
	const chunk = 256
	n := min(len(a), len(b))
	if n > 0 && unsafe.StringData(a) == unsafe.StringData(b) {
		return n
	}
	i := 0
	for i+chunk <= n && a[i:i+chunk] == b[i:i+chunk] {
		i += chunk
	}
	for i < n && a[i] == b[i] {
		i++
	}
	return i
}
