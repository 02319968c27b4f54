package blockhash

import (
	"bytes"
	"sync"
	"unicode/utf8"

	"github.com/kvroute/kvroute/router/jsonscan"
)

// The request body was validated by the router (jsonscan.Object) before it gets here,
// but nothing in this package trusts that: it walks values with jsonscan's structural
// functions (Skip, Iter, Escape), which on any input return an error or a result,
// never panic, and run in time linear in the input. They allocate nothing beyond what
// their callers' buffers need, which keeps the approx mode and the engine mode's
// cache-hit path free of allocations.

// unescape writes the text of the string literal starting at b[i] == '"' to s, as
// jsonscan.AppendUnescaped would append it, and returns the index just past the closing
// quote. The loop is here, not in jsonscan, so that s stays on the caller's stack (see
// jsonscan.Escape).
func unescape(b []byte, i int, s *textSink) (int, error) {
	if i >= len(b) || b[i] != '"' {
		return 0, jsonscan.ErrSyntax
	}
	i++
	quote := -1 // index of the next quote at or after i, once found
	for {
		if quote < i {
			q := bytes.IndexByte(b[i:], '"')
			if q < 0 {
				return 0, jsonscan.ErrSyntax
			}
			quote = i + q
		}
		bs := bytes.IndexByte(b[i:quote], '\\')
		if bs < 0 {
			s.write(b[i:quote])
			return quote + 1, nil
		}
		s.write(b[i : i+bs])
		r, next, err := jsonscan.Escape(b, i+bs)
		if err != nil {
			return 0, err
		}
		if r < utf8.RuneSelf {
			s.writeByte(byte(r))
		} else {
			var tmp [utf8.UTFMax]byte
			s.write(tmp[:utf8.EncodeRune(tmp[:], r)])
		}
		i = next
	}
}

// tokenPool recycles token-id buffers between calls.
var tokenPool = sync.Pool{New: func() any { b := make([]uint32, 0, 4096); return &b }}

func getTokens() *[]uint32 { return tokenPool.Get().(*[]uint32) }

// putTokens returns a buffer to the pool, dropping huge ones so the pool stays small.
func putTokens(b *[]uint32) {
	if cap(*b) > 1<<20 {
		return
	}
	*b = (*b)[:0]
	tokenPool.Put(b)
}
