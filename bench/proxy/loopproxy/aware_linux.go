package main

import (
	"bytes"
	"context"
	"strconv"

	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/router/blockhash"
	"github.com/kvroute/kvroute/router/jsonscan"
	"github.com/kvroute/kvroute/scorer"
	"github.com/kvroute/kvroute/scorer/cacheaware"
)

// aware is the core of kvroute's cache_aware decision with approx tokenization, run in
// the loop (--policy cache_aware): the chat's messages hashed in blocks of 16 estimated
// tokens (router/blockhash.Approx), the index asked which worker holds how many
// leading blocks, the cache-aware selector's choice over that overlap and the
// workers' requests in flight, the prompt predicted on the chosen worker. What kvroute
// does around it (the decision log, metrics, the session key, queueing) is left out.
type aware struct {
	ix       *indexer.Index
	sel      *cacheaware.Selector
	keys     []proto.WorkerKey
	inflight []int64 // per worker: exchanges under way
	hashes   []proto.BlockHash
	matches  []indexer.WorkerMatch
	cands    []scorer.Candidate
	costs    []scorer.Cost
}

func newAware(workers int) (*aware, error) {
	ix, err := indexer.New(indexer.Options{})
	if err != nil {
		return nil, err
	}
	a := &aware{ix: ix, sel: cacheaware.New(cacheaware.Defaults()), keys: make([]proto.WorkerKey, workers),
		inflight: make([]int64, workers), cands: make([]scorer.Candidate, workers), costs: make([]scorer.Cost, workers)}
	for i := range a.keys {
		a.keys[i] = proto.WorkerKey{ID: strconv.Itoa(i)}
	}
	return a, nil
}

// pick returns the worker for a chat request's body, -1 when the body is not one.
func (a *aware) pick(body []byte) int {
	model, msgs := chatFields(body)
	if msgs == nil {
		return -1
	}
	req := blockhash.Request{Model: model, BlockSize: 16, Messages: msgs, Body: body}
	res, err := blockhash.Approx{}.Hash(context.Background(), &req, a.hashes[:0])
	if err != nil {
		return -1
	}
	a.hashes = res.Hashes
	a.matches = a.ix.Match(a.hashes, a.matches[:0])
	for i := range a.cands {
		a.cands[i] = scorer.Candidate{ID: a.keys[i].ID, InFlight: a.inflight[i]}
	}
	for _, m := range a.matches {
		for i := range a.keys {
			if a.keys[i] == m.Worker {
				a.cands[i].OverlapBlocks = m.Blocks
			}
		}
	}
	sreq := scorer.Request{Model: model, PromptTokens: res.Tokens, Blocks: len(a.hashes), BlockSize: 16}
	w := a.sel.SelectExplained(&sreq, a.cands, a.costs)
	a.ix.Predict(a.keys[w], a.hashes, 0)
	return w
}

// chatFields returns a chat body's model (the bytes between its JSON string's quotes,
// escapes kept: the benchmark's model names have none) and raw messages, nil when the
// body is not a JSON object with messages.
func chatFields(body []byte) (string, []byte) {
	it, err := jsonscan.NewIter(body, jsonscan.SkipWS(body, 0))
	if err != nil {
		return "", nil
	}
	var model string
	var msgs []byte
	for {
		key, vs, ve, more, err := it.Next()
		if err != nil {
			return "", nil
		}
		if !more {
			return model, msgs
		}
		switch {
		case jsonscan.KeyIs(key, "model"):
			model = string(bytes.Trim(body[vs:ve], `"`))
		case jsonscan.KeyIs(key, "messages"):
			msgs = body[vs:ve]
		}
	}
}
