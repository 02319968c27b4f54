package jinja

import (
	"math"
	"slices"
	"testing"
)

// TestPySlice compares pySlice with a direct loop over every combination of bounds and
// steps around the list's ends and the int64 limits (a step near them once overflowed the
// index past the end).
func TestPySlice(t *testing.T) {
	items := []Value{int64(0), int64(1), int64(2), int64(3), int64(4), int64(5), int64(6)}
	ref := func(start, stop, step *int64) []Value {
		n := int64(len(items))
		st := int64(1)
		if step != nil {
			st = *step
		}
		norm := func(p *int64, def, lo, hi int64) int64 {
			if p == nil {
				return def
			}
			v := *p
			if v < 0 {
				v += n
			}
			return min(max(v, lo), hi)
		}
		out := []Value{}
		if st > 0 {
			a, b := norm(start, 0, 0, n), norm(stop, n, 0, n)
			for i := a; i < b; i += st {
				out = append(out, items[i])
				if i > math.MaxInt64-st {
					break
				}
			}
		} else {
			a, b := norm(start, n-1, -1, n-1), norm(stop, -1, -1, n-1)
			for i := a; i > b; i += st {
				out = append(out, items[i])
				if i < math.MinInt64-st {
					break
				}
			}
		}
		return out
	}
	vals := []*int64{nil}
	for _, v := range []int64{-9, -8, -7, -3, -1, 0, 1, 2, 3, 6, 7, 8, 100, math.MaxInt64, math.MinInt64, math.MinInt64 + 1, math.MaxInt64 - 1} {
		vals = append(vals, &v)
	}
	for _, a := range vals {
		for _, b := range vals {
			for _, c := range vals {
				if c != nil && *c == 0 {
					continue
				}
				got, err := pySlice(items, a, b, c)
				if err != nil {
					t.Fatal(err)
				}
				if want := ref(a, b, c); !slices.Equal(got, want) {
					t.Fatalf("%v %v %v: %v want %v", a, b, c, got, want)
				}
			}
		}
	}
}
