package blockhash

import (
	"context"
	"errors"

	"github.com/kvroute/kvroute/proto"
)

// Fallback hashes with a primary Hasher (engine or local) and, when it fails, hashes the
// same request in approx mode, so a dead or slow worker or an unsupported request costs
// at most the engine's timeout and never a failed routing decision. A fallen-back
// Result has Exact false: its hashes only match the router's own predicted entries.
// Fallbacks are counted in kvroute_tokenize_fallbacks_total by the primary's error
// reason. Fallback is safe for concurrent use.
type Fallback struct {
	primary Hasher
	metrics *Metrics
}

// NewFallback returns a Fallback over primary; m may be nil.
func NewFallback(primary Hasher, m *Metrics) *Fallback {
	return &Fallback{primary: primary, metrics: m}
}

// Hash implements [Hasher]. It fails only when approx mode fails too (unreadable
// input), returning both errors.
func (f *Fallback) Hash(ctx context.Context, req *Request, dst []proto.BlockHash) (Result, error) {
	r, err := f.primary.Hash(ctx, req, dst)
	if err == nil {
		return r, nil
	}
	f.metrics.fallback(err)
	r, aerr := Approx{}.Hash(ctx, req, dst)
	if aerr != nil {
		return Result{}, errors.Join(err, aerr)
	}
	return r, nil
}

var _ Hasher = (*Fallback)(nil)
