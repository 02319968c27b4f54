package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// The index API: what the prefix index holds for a request (POST /api/index/query), and
// the index itself as a snapshot (GET /api/index/snapshot, POST /api/index/restore).
// The query is a read: like the GETs, it needs the admin token only on a listener
// beyond loopback. Restore is a write and always needs the token.

// IndexQuerier answers index queries with the router's own hashing path, so a query
// answers the overlap the router's decision would use for the same request. The
// router's Server implements it. Implementations must be safe for concurrent use.
type IndexQuerier interface {
	// QueryIndex hashes q as the router hashes a request and matches it against the
	// index. Errors wrap ErrModelNotFound or ErrBadQuery where they apply; any other
	// error is the querier's fault (500).
	QueryIndex(ctx context.Context, q *IndexQuery) (IndexAnswer, error)
}

// Errors an [IndexQuerier] wraps.
var (
	// ErrModelNotFound: no worker serves the query's model.
	ErrModelNotFound = errors.New("model not found")
	// ErrBadQuery: the query's prompt or messages could not be read.
	ErrBadQuery = errors.New("bad index query")
)

// IndexQuery is a decoded POST /api/index/query body: the model, the optional adapter
// and salt, and exactly one of Messages, Prompt and BlockHashes.
type IndexQuery struct {
	// Model is the model as a client names it (a LoRA adapter's name resolves to its
	// base model, as in routing); required.
	Model string
	// LoRA names the adapter explicitly ("" for none, or when Model is the adapter);
	// Model is then its base model.
	LoRA string
	// CacheSalt is the request's cache_salt ("" for none).
	CacheSalt string
	// Messages is the raw chat "messages" array; nil unless the query gave messages.
	Messages json.RawMessage
	// Prompt is the raw completions prompt: a JSON string (from "prompt") or an array
	// of token ids (from "token_ids"); nil unless the query gave one of them.
	Prompt json.RawMessage
	// BlockHashes are kvroute's own chained block hashes (proto.HashBlocks), as the
	// index keys them; nil unless the query gave them. They are matched as they are.
	BlockHashes []uint64
}

// IndexAnswer answers a query.
type IndexAnswer struct {
	// BlockSize is the tokens per KV block the request was hashed with (0 for a
	// block_hashes query).
	BlockSize int `json:"block_size"`
	// Blocks is the request's number of full blocks.
	Blocks int `json:"blocks"`
	// Exact is false when the prompt could only be hashed approximately (approx
	// tokenize mode, or the exact mode failed): such hashes match only predictions.
	Exact bool `json:"exact"`
	// Workers holds each worker holding at least the request's first block, most
	// blocks first (ties by id); a worker absent holds none.
	Workers []IndexWorker `json:"workers"`
}

// IndexWorker is one worker's leading overlap with the request, the best of its
// data-parallel ranks.
type IndexWorker struct {
	ID string `json:"id"`
	// Blocks is the overlap the router's decision uses: leading blocks held, confirmed
	// by events or predicted by the router's own routing.
	Blocks int `json:"blocks"`
	// Confirmed is the leading blocks the worker's KV events confirm; <= Blocks.
	Confirmed int `json:"confirmed"`
	// Predicted is Blocks - Confirmed: the blocks past the confirmed ones held only as
	// predictions.
	Predicted int `json:"predicted"`
	// Tiers counts, per storage tier ("gpu", "cpu", "disk", "other"), how many of the
	// Blocks leading blocks the worker's events place on that tier: a block on GPU and
	// CPU counts on both, a predicted block on none, and a tier of weight 0
	// (cache_aware.tier_weights) is not counted and so never appears. Absent when no
	// tier holds any (Blocks all predicted).
	Tiers map[string]int `json:"tiers,omitempty"`
}

// Limits of the index API's inputs.
const (
	// MaxQueryBytes bounds a query body: 413 beyond.
	MaxQueryBytes = 8 << 20
	// MaxQueryTokens bounds token_ids (a 1M-token context): 413 beyond.
	MaxQueryTokens = 1 << 20
	// MaxQueryBlocks bounds block_hashes (1M tokens of 16-token blocks): 413 beyond.
	MaxQueryBlocks = 1 << 16
	// DefaultMaxRestoreBytes is the default bound of a restore body
	// (Backend.MaxRestoreBytes).
	DefaultMaxRestoreBytes = 1 << 30
)

// errTooLarge marks a query over one of the limits.
var errTooLarge = errors.New("index query too large")

// queryBody is the wire form of a query.
type queryBody struct {
	Model       string          `json:"model"`
	LoRA        string          `json:"lora"`
	CacheSalt   string          `json:"cache_salt"`
	Prompt      *string         `json:"prompt"`
	Messages    json.RawMessage `json:"messages"`
	TokenIDs    json.RawMessage `json:"token_ids"`
	BlockHashes json.RawMessage `json:"block_hashes"`
}

// DecodeIndexQuery decodes a POST /api/index/query body strictly: one JSON object,
// unknown keys, wrong types and trailing data are errors wrapping ErrBadQuery; a body
// over MaxQueryBytes or arrays over MaxQueryTokens / MaxQueryBlocks are errors that
// [indexStatus] maps to 413. Exactly one of prompt, messages, token_ids and
// block_hashes must be given; messages must be an array.
func DecodeIndexQuery(body io.Reader) (IndexQuery, error) {
	lr := &io.LimitedReader{R: body, N: MaxQueryBytes + 1}
	dec := json.NewDecoder(lr)
	dec.DisallowUnknownFields()
	var b queryBody
	if err := dec.Decode(&b); err != nil {
		if lr.N <= 0 {
			return IndexQuery{}, fmt.Errorf("%w: the body is over %d bytes", errTooLarge, MaxQueryBytes)
		}
		return IndexQuery{}, fmt.Errorf("%w: body: %w", ErrBadQuery, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if lr.N <= 0 {
			return IndexQuery{}, fmt.Errorf("%w: the body is over %d bytes", errTooLarge, MaxQueryBytes)
		}
		return IndexQuery{}, fmt.Errorf("%w: body: trailing data after the JSON object", ErrBadQuery)
	}
	if b.Model == "" {
		return IndexQuery{}, fmt.Errorf("%w: \"model\" is required", ErrBadQuery)
	}
	q := IndexQuery{Model: b.Model, LoRA: b.LoRA, CacheSalt: b.CacheSalt}
	given := 0
	if b.Prompt != nil {
		given++
		q.Prompt, _ = json.Marshal(*b.Prompt) // a string always marshals
	}
	if present(b.Messages) {
		given++
		if b.Messages[0] != '[' {
			return IndexQuery{}, fmt.Errorf("%w: \"messages\" must be an array", ErrBadQuery)
		}
		q.Messages = b.Messages
	}
	if present(b.TokenIDs) {
		given++
		var ids []uint32
		if err := json.Unmarshal(b.TokenIDs, &ids); err != nil {
			return IndexQuery{}, fmt.Errorf("%w: \"token_ids\" must be an array of token ids (0 to 4294967295): %w", ErrBadQuery, err)
		}
		if len(ids) > MaxQueryTokens {
			return IndexQuery{}, fmt.Errorf("%w: %d token ids, the limit is %d", errTooLarge, len(ids), MaxQueryTokens)
		}
		lit := make([]byte, 0, 2+len(ids)*6)
		lit = append(lit, '[')
		for i, id := range ids {
			if i > 0 {
				lit = append(lit, ',')
			}
			lit = strconv.AppendUint(lit, uint64(id), 10)
		}
		q.Prompt = append(lit, ']')
	}
	if present(b.BlockHashes) {
		given++
		if err := json.Unmarshal(b.BlockHashes, &q.BlockHashes); err != nil {
			return IndexQuery{}, fmt.Errorf("%w: \"block_hashes\" must be an array of unsigned 64-bit integers: %w", ErrBadQuery, err)
		}
		if len(q.BlockHashes) > MaxQueryBlocks {
			return IndexQuery{}, fmt.Errorf("%w: %d block hashes, the limit is %d", errTooLarge, len(q.BlockHashes), MaxQueryBlocks)
		}
		if q.BlockHashes == nil {
			q.BlockHashes = []uint64{}
		}
	}
	if given != 1 {
		return IndexQuery{}, fmt.Errorf("%w: give exactly one of \"prompt\", \"messages\", \"token_ids\" and \"block_hashes\" (%d given)", ErrBadQuery, given)
	}
	return q, nil
}

// present reports whether a raw member was given and is not null.
func present(raw json.RawMessage) bool { return len(raw) > 0 && string(raw) != "null" }

// indexStatus maps an index API error to its HTTP status and OpenAI error type and
// code. It is the only place that does for these endpoints.
func indexStatus(err error) (status int, typ, code string) {
	switch {
	case errors.Is(err, errTooLarge):
		return http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large"
	case errors.Is(err, ErrModelNotFound):
		return http.StatusNotFound, "invalid_request_error", "model_not_found"
	case errors.Is(err, ErrBadQuery), errors.Is(err, errBadSnapshot):
		return http.StatusBadRequest, "invalid_request_error", "invalid_request"
	case errors.Is(err, errNoIndex):
		return http.StatusConflict, "invalid_request_error", "no_index"
	default:
		return http.StatusInternalServerError, "server_error", "internal_error"
	}
}

var (
	// errNoIndex: the process has no prefix index (or no querier).
	errNoIndex = errors.New("this process has no prefix index")
	// errBadSnapshot: a restore body that is not a valid snapshot.
	errBadSnapshot = errors.New("bad index snapshot")
)

// writeIndexError writes err as an OpenAI-shaped error:
// {"error":{"message","type","param","code"}}.
func writeIndexError(w http.ResponseWriter, err error) {
	status, typ, code := indexStatus(err)
	type apiError struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    string  `json:"code"`
	}
	b, _ := json.Marshal(map[string]apiError{"error": {Message: err.Error(), Type: typ, Code: code}})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func (h *handler) indexQuery(w http.ResponseWriter, r *http.Request) {
	if h.b.Querier == nil {
		writeIndexError(w, errNoIndex)
		return
	}
	q, err := DecodeIndexQuery(r.Body)
	if err != nil {
		writeIndexError(w, err)
		return
	}
	a, err := h.b.Querier.QueryIndex(r.Context(), &q)
	if err != nil {
		writeIndexError(w, err)
		return
	}
	if a.Workers == nil {
		a.Workers = []IndexWorker{}
	}
	writeJSON(w, http.StatusOK, a)
}

// indexSnapshot streams the index in its dump format (indexer.Index.Dump: a magic
// string and a version, then per worker its entries and live predictions).
func (h *handler) indexSnapshot(w http.ResponseWriter, r *http.Request) {
	if h.b.Index == nil {
		writeIndexError(w, errNoIndex)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="kvroute-index.snapshot"`)
	if r.Method == http.MethodHead {
		return
	}
	// The status is sent with the first bytes: an error past them can only cut the
	// stream short, which Restore refuses (the dump ends with a terminator).
	_ = h.b.Index.Dump(w)
}

// RestoreResult answers POST /api/index/restore.
type RestoreResult struct {
	// Blocks is the number of blocks the index holds after the restore.
	Blocks int `json:"blocks"`
	// Workers is the number of (worker, DP rank) entries it holds.
	Workers int `json:"workers"`
}

// indexRestore installs a snapshot: each worker in it replaces what the index holds for
// that worker. A malformed snapshot changes nothing (400).
func (h *handler) indexRestore(w http.ResponseWriter, r *http.Request) {
	if h.b.Index == nil {
		writeIndexError(w, errNoIndex)
		return
	}
	limit := h.b.MaxRestoreBytes
	lr := &io.LimitedReader{R: r.Body, N: limit + 1}
	if err := h.b.Index.Restore(lr); err != nil {
		if lr.N <= 0 {
			writeIndexError(w, fmt.Errorf("%w: the snapshot is over %d bytes", errTooLarge, limit))
			return
		}
		writeIndexError(w, fmt.Errorf("%w: %w", errBadSnapshot, err))
		return
	}
	s := h.b.Index.Stats()
	writeJSON(w, http.StatusOK, RestoreResult{Blocks: s.Blocks, Workers: len(s.Workers)})
}
