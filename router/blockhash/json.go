package blockhash

import (
	"sync"

	"github.com/kvroute/kvroute/router/jsonscan"
)

// The request body was validated by the router (jsonscan.Object) before it gets here,
// but nothing in this package trusts that: it walks values with jsonscan's structural
// functions (Skip, Iter, Unescaper), which on any input return an error or a result,
// never panic, and run in time linear in the input. They allocate nothing beyond what
// their callers' buffers need, which keeps the approx mode and the engine mode's
// cache-hit path free of allocations.

// unescape writes the contents of the string literal starting at b[i] == '"' to s (see
// jsonscan.Unescaper for what is decoded) and returns the index just past the closing
// quote.
func unescape(b []byte, i int, s *textSink) (int, error) {
	u, err := jsonscan.NewUnescaper(b, i)
	if err != nil {
		return 0, err
	}
	for {
		p, ok, err := u.Next()
		if err != nil {
			return 0, err
		}
		if !ok {
			return u.End(), nil
		}
		s.write(p)
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
