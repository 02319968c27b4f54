package tokenize

// IDs is a read-only sequence of token ids held in parts, which later results of a
// PrefixCache share: a new turn of a conversation is the parts of the previous turn's
// ids it repeats plus one part of its own, instead of a copy of them all (the copy, an
// 8k-id slice allocated and filled per turn, was 10% of the routing decision at turns 30
// to 40 of bench/decision's BenchmarkDecision in a CPU profile, 2026-12-07). The zero
// value is empty. Nobody modifies the parts.
type IDs struct {
	parts [][]uint32
	n     int
}

// maxIDParts bounds the parts of a result: one with more is copied into one part (a
// copy every maxIDParts turns of a conversation instead of one per turn).
const maxIDParts = 32

// MakeIDs returns ids as an IDs of one part.
func MakeIDs(ids []uint32) IDs {
	if len(ids) == 0 {
		return IDs{}
	}
	return IDs{parts: [][]uint32{ids}, n: len(ids)}
}

// Len returns the number of ids.
func (s IDs) Len() int { return s.n }

// Slice returns the ids in one slice: the only part itself when there is one (read-only,
// as the parts are), else a new copy.
func (s IDs) Slice() []uint32 {
	switch len(s.parts) {
	case 0:
		return nil
	case 1:
		return s.parts[0]
	}
	return s.AppendTo(make([]uint32, 0, s.n))
}

// AppendTo appends the ids to dst.
func (s IDs) AppendTo(dst []uint32) []uint32 {
	for _, p := range s.parts {
		dst = append(dst, p...)
	}
	return dst
}

// Tail returns the ids from i on in one slice: part of the last part when it holds them
// all (read-only), else appended to buf.
func (s IDs) Tail(i int, buf []uint32) []uint32 {
	if i >= s.n {
		return nil
	}
	if len(s.parts) > 0 {
		last := s.parts[len(s.parts)-1]
		if start := s.n - len(last); i >= start {
			return last[i-start:]
		}
	}
	at := 0
	for _, p := range s.parts {
		if at+len(p) > i {
			buf = append(buf, p[max(i-at, 0):]...)
		}
		at += len(p)
	}
	return buf
}

// head returns the first n ids (n <= Len), sharing the parts.
func (s IDs) head(n int) IDs {
	if n >= s.n {
		return s
	}
	if n <= 0 {
		return IDs{}
	}
	at := 0
	for k, p := range s.parts {
		if at+len(p) >= n {
			parts := make([][]uint32, k+1)
			copy(parts, s.parts[:k])
			parts[k] = p[:n-at]
			return IDs{parts: parts, n: n}
		}
		at += len(p)
	}
	return IDs{}
}

// join returns pre, then mid's ids, then last, in a new slice of parts (empty slices
// are left out).
func join(pre []uint32, mid IDs, last []uint32) IDs {
	parts := make([][]uint32, 0, len(mid.parts)+2)
	if len(pre) > 0 {
		parts = append(parts, pre)
	}
	for _, p := range mid.parts {
		if len(p) > 0 {
			parts = append(parts, p)
		}
	}
	if len(last) > 0 {
		parts = append(parts, last)
	}
	return IDs{parts: parts, n: len(pre) + mid.n + len(last)}
}
