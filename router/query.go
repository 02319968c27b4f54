package router

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/router/admin"
	"github.com/kvroute/kvroute/router/blockhash"
)

// QueryIndex answers an index query (POST /api/index/query) with the router's own
// hashing path: the model is resolved as a request's is (an adapter hashes under its base
// model with its name in the seed), the prompt is hashed by the configured hasher with the
// model's block size, and the hashes are matched against the index; each worker's
// overlap is the best of its data-parallel ranks, as in routing (routeState.overlap).
// So the answer's blocks equal the overlap a decision for the same request would use at
// that moment. Unlike routing, it hashes even when the policy ignores prefixes. Block
// hashes given by the query are matched as they are. Errors wrap admin.ErrModelNotFound
// (no worker serves the model) or admin.ErrBadQuery (the prompt cannot be hashed). Safe
// for concurrent use.
func (s *Server) QueryIndex(ctx context.Context, q *admin.IndexQuery) (admin.IndexAnswer, error) {
	if !s.pool.Known(q.Model) {
		return admin.IndexAnswer{}, fmt.Errorf("%w: %q: %w", admin.ErrModelNotFound, q.Model, ErrUnknownModel)
	}
	var a admin.IndexAnswer
	var hashes []proto.BlockHash
	if q.BlockHashes != nil {
		hashes = make([]proto.BlockHash, len(q.BlockHashes))
		for i, h := range q.BlockHashes {
			hashes[i] = proto.BlockHash(h)
		}
		a.Exact = true
	} else {
		if s.hasher == nil {
			return admin.IndexAnswer{}, fmt.Errorf("%w: the router hashes no prompts (no tokenize mode)", admin.ErrBadQuery)
		}
		base, lora := s.pool.ResolveModel(q.Model)
		if q.LoRA != "" {
			base, lora = q.Model, q.LoRA
		}
		pr := blockhash.Request{
			Model: base, LoRA: lora, CacheSalt: q.CacheSalt, BlockSize: s.blocks.get(q.Model),
			Messages: q.Messages, Prompt: q.Prompt,
		}
		res, err := s.hasher.Hash(ctx, &pr, nil)
		if err != nil {
			return admin.IndexAnswer{}, fmt.Errorf("%w: %w", admin.ErrBadQuery, err)
		}
		hashes, a.Exact, a.BlockSize = res.Hashes, res.Exact, pr.BlockSize
	}
	a.Blocks = len(hashes)
	if s.index == nil || len(hashes) == 0 {
		return a, nil
	}
	// Only the in-memory index counts per tier; a shared one (which embeds the process's
	// own in-memory part) answers for the whole fleet without them.
	if ix, ok := s.index.(*indexer.Index); ok {
		a.Workers = bestPerWorker(ix.MatchTiers(hashes, nil))
	} else {
		a.Workers = bestPerWorker(s.index.Match(hashes, nil))
	}
	return a, nil
}

// bestPerWorker reduces matches to one entry per worker id, its best data-parallel rank
// (most blocks), sorted by blocks, most first, then by id.
func bestPerWorker(ms []indexer.WorkerMatch) []admin.IndexWorker {
	out := make([]admin.IndexWorker, 0, len(ms))
	for i := range ms {
		m := &ms[i]
		if m.Blocks <= 0 {
			continue
		}
		k := slices.IndexFunc(out, func(w admin.IndexWorker) bool { return w.ID == m.Worker.ID })
		if k < 0 {
			out = append(out, admin.IndexWorker{ID: m.Worker.ID})
			k = len(out) - 1
		}
		if w := &out[k]; m.Blocks > w.Blocks || m.Blocks == w.Blocks && m.Confirmed > w.Confirmed {
			w.Blocks, w.Confirmed, w.Predicted = m.Blocks, m.Confirmed, m.Blocks-m.Confirmed
			w.Tiers = tierCounts(m)
		}
	}
	slices.SortFunc(out, func(a, b admin.IndexWorker) int {
		return cmp.Or(cmp.Compare(b.Blocks, a.Blocks), cmp.Compare(a.ID, b.ID))
	})
	return out
}

var _ admin.IndexQuerier = (*Server)(nil)
