package jinja

import (
	"sync/atomic"
	"unsafe"
)

// outBuf is a render's output. A render from a Prior starts out over the prior's
// output buffer ("shadow"): as long as what it writes equals the prior's output at the
// same place, it only advances (a copied iteration, the prior's own bytes, costs
// nothing), and once it has written all of the prior's output it appends after it, in
// place, when it is the first render to claim the space after that output (Prior.tail).
// Writing anything else switches it to a buffer of its own, the bytes so far copied.
// So a turn of a conversation that repeats the previous turn's prompt and adds to it
// neither copies nor allocates the prompt again: the copy of the earlier messages'
// output into a new buffer was 10% of the routing decision at turns 30 to 40 of
// bench/decision's BenchmarkDecision and its largest allocation (2026-12-07). The
// bytes of an output are never changed once written (several outputs share them);
// only the space after every output sharing the buffer is written, by the one render
// that claimed it.
type outBuf struct {
	b []byte // the output is b[:n]
	n int
	// shadow: b is a prior's buffer whose first plen bytes are the prior's output (not
	// ours to write); what is written at n < plen is compared with it.
	shadow bool
	plen   int
	tail   *atomic.Bool // the prior's claim on the space after its output
	// own: the space after n is this output's (own buffer, or claimed).
	own bool
}

// newOutBuf returns an empty output with room for size bytes.
func newOutBuf(size int) *outBuf {
	return &outBuf{b: make([]byte, 0, size), own: true}
}

// shadowOf returns an empty output over p's buffer.
func shadowOf(p *Prior) *outBuf {
	return &outBuf{b: p.buf, shadow: true, plen: len(p.out), tail: &p.tail}
}

func (o *outBuf) Len() int { return o.n }

// String returns the output. It stays valid and unchanged whatever is written later.
func (o *outBuf) String() string {
	if o.n == 0 {
		return ""
	}
	return unsafe.String(&o.b[0], o.n)
}

// extendable reports whether the space after the output is its own, for a later render
// to claim (Prior.tail).
func (o *outBuf) extendable() bool { return o.own }

func (o *outBuf) WriteString(s string) {
	if len(s) == 0 {
		return
	}
	if o.shadow && o.n < o.plen {
		k := o.matchPrior(s)
		o.n += k
		if k == len(s) {
			return
		}
		s = s[k:]
		if o.n < o.plen { // differs from the prior's output: copy what was shared
			o.detach(len(s))
		}
	}
	if o.shadow && !o.own { // at the prior's end: claim the space after it
		if o.tail.CompareAndSwap(false, true) {
			o.own = true
		} else {
			o.detach(len(s))
		}
	}
	if len(o.b) != o.n {
		o.b = o.b[:o.n]
	}
	if cap(o.b)-o.n < len(s) { // a conversation's output keeps growing: room for more
		nb := make([]byte, o.n, roomFor(o.n+len(s)))
		copy(nb, o.b)
		o.b = nb
	}
	o.b = append(o.b, s...)
	o.n = len(o.b)
}

// matchPrior returns how many leading bytes of s equal the prior's output at n. A
// string that is the prior's own bytes at n (a copied iteration) is not compared.
func (o *outBuf) matchPrior(s string) int {
	rest := o.plen - o.n
	if len(s) <= rest && unsafe.StringData(s) == &o.b[o.n] {
		return len(s)
	}
	m := min(len(s), rest)
	p := o.b[o.n : o.n+m]
	k := 0
	for k < m && p[k] == s[k] {
		k++
	}
	return k
}

// detach copies the output into a buffer of its own, with room for more bytes after it.
func (o *outBuf) detach(more int) {
	nb := make([]byte, o.n, roomFor(o.n+more))
	copy(nb, o.b[:o.n])
	o.b, o.shadow, o.own = nb, false, true
}

// roomFor is the capacity a buffer that must hold need bytes gets: twice that (the next
// turns of a conversation append to it), at most 1 MiB more, at least 256 bytes.
func roomFor(need int) int { return max(need+min(need, 1<<20), 256) }
