package blockhash

import (
	"bytes"
	"context"
	"fmt"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/router/jsonscan"
	"github.com/kvroute/kvroute/router/tokenize"
)

// Tokenizer is an in-process tokenizer for the local mode. *chat.Encoder of
// router/tokenize/chat (kvroute's pure-Go HF tokenizer with the model's chat template) has this
// method set. Implementations must be safe for concurrent use.
type Tokenizer interface {
	// EncodeChat returns the prompt token ids of an OpenAI chat completion request body,
	// as the engine computes them (template rendered, then encoded). The ids may be
	// shared with the tokenizer's caches: Local only reads them. It fails on content it
	// cannot render as the engine does, such as an image part (chat.Encoder's
	// ErrUnsupportedContent): Local then hashes the messages before it (TextPrefix).
	EncodeChat(body []byte) ([]uint32, error)
	// Encode returns the token ids of a completions prompt; addSpecial adds the
	// tokenizer's special tokens (BOS), as add_special_tokens does (default true).
	// The same holds for its ids.
	Encode(text string, addSpecial bool) []uint32
}

// ReuseTokenizer is a [Tokenizer] that also says which earlier result of its cache a
// chat's ids repeat the leading ids of (*chat.Encoder, whose prefix cache knows it).
// Local keeps each result's block hashes in its memo and hashes only the blocks after
// those the new ids repeat.
type ReuseTokenizer interface {
	Tokenizer
	EncodeChatReuse(body []byte) (tokenize.IDs, tokenize.Reuse, error)
}

// Local hashes requests with token ids from an in-process [Tokenizer]. A chat is handed
// to EncodeChat as the client's own body (Request.Body) when the caller has it, else as
// a minimal request body holding the messages and the options that change the
// rendering (see appendTokenizeBody); a string prompt is decoded and handed to Encode.
// Handing over the client's body saves a JSON pass: on a 16-turn chat of 1 KB messages
// with Qwen3 (BenchmarkLocalChat, 2-core VM, 2026-12-06) 763 us against 893 us per
// request (-15%, p=0.015, n=6) and 9% fewer bytes allocated. A token-id prompt is hashed
// directly. A chat goes to EncodeChat whole first; only when that fails is it cut at its
// first non-text part (TextPrefix) and the messages before it encoded, so a text chat
// is not scanned for parts (that scan was 7-10% of the routing decision at turn 40 of
// BenchmarkDecision, 2026-12-07). Errors from the tokenizer (content it cannot render,
// say) are returned wrapped, and the router falls back to approx for the request, as
// for the engine mode. Local is safe for concurrent use when its Tokenizer is.
type Local struct {
	tok Tokenizer
}

// NewLocal returns a Local over tok.
func NewLocal(tok Tokenizer) *Local { return &Local{tok: tok} }

// Hash implements [Hasher].
func (l *Local) Hash(_ context.Context, req *Request, dst []proto.BlockHash) (Result, error) {
	k, lit, err := classify(req)
	if err != nil {
		return Result{}, err
	}
	buf := bufPool.Get().(*bytes.Buffer)
	defer putBuf(buf)
	switch k {
	case kindTokens:
		return hashTokenPrompt(req, lit, dst)
	case kindText:
		s := textSink{collect: true, buf: buf.AvailableBuffer()}
		if _, err := unescape(lit, 0, &s); err != nil {
			return Result{}, fmt.Errorf("%w: prompt: %w", ErrBadInput, err)
		}
		add, err := boolOpt(req.Options.AddSpecialTokens, true)
		if err != nil {
			return Result{}, err
		}
		return exact(req, l.tok.Encode(string(s.buf), add), dst), nil
	}
	body := req.Body
	if body == nil {
		if body, err = appendTokenizeBody(buf.AvailableBuffer(), req.Model, k, lit, &req.Options, false); err != nil {
			return Result{}, err
		}
	}
	var ids []uint32
	var encErr error
	if rt, ok := l.tok.(ReuseTokenizer); ok {
		var parts tokenize.IDs
		var ru tokenize.Reuse
		if parts, ru, encErr = rt.EncodeChatReuse(body); encErr == nil {
			return exactReuse(req, parts, ru, dst), nil
		}
	} else if ids, encErr = l.tok.EncodeChat(body); encErr == nil {
		return exact(req, ids, dst), nil
	}
	// Cut at the first non-text part, if that is why it failed.
	cbuf := bufPool.Get().(*bytes.Buffer)
	defer putBuf(cbuf)
	req, lit, cut, err := cutChat(req, lit, cbuf.AvailableBuffer())
	if err != nil {
		return Result{}, err
	}
	if !cut {
		return Result{}, fmt.Errorf("local tokenizer: %w", encErr)
	}
	if string(lit) == "[]" { // the first message is not text: nothing to hash
		return Result{Hashes: dst, Exact: true, Truncated: true}, nil
	}
	if body, err = appendTokenizeBody(buf.AvailableBuffer(), req.Model, k, lit, &req.Options, false); err != nil {
		return Result{}, err
	}
	if ids, err = l.tok.EncodeChat(body); err != nil {
		return Result{}, fmt.Errorf("local tokenizer: %w", err)
	}
	r := exact(req, ids, dst)
	r.Truncated = true
	return r, nil
}

// exactReuse is exact for ids that repeat the first ru.IDs ids of an earlier result
// whose block hashes ru.From may hold: those of its blocks that lie within the
// repeated ids are taken from there and only the blocks after them are hashed. The
// hashes are then kept in ru.Self for the next result. Hashing every block of the
// prompt again was 12% of the routing decision at turns 30 to 40 of BenchmarkDecision
// (CPU profile, 2026-12-07), the ids of a turn-40 prompt repeating all but the newest
// turn's.
func exactReuse(req *Request, ids tokenize.IDs, ru tokenize.Reuse, dst []proto.BlockHash) Result {
	seed := proto.Seed(req.Model, req.LoRA, req.CacheSalt)
	bs := req.BlockSize
	tag := [2]uint64{uint64(seed), uint64(bs)}
	start, parent, done := len(dst), seed, 0
	if prev := ru.From.Load(tag); prev != nil {
		k := min(len(prev), ru.IDs/bs, ids.Len()/bs)
		for _, h := range prev[:k] {
			dst = append(dst, proto.BlockHash(h))
		}
		if k > 0 {
			parent, done = proto.BlockHash(prev[k-1]), k*bs
		}
	}
	var tb [512]uint32
	dst = proto.HashBlocks(dst, parent, ids.Tail(done, tb[:0]), bs)
	if ru.Self != nil {
		memo := make([]uint64, len(dst)-start)
		for i, h := range dst[start:] {
			memo[i] = uint64(h)
		}
		ru.Self.Store(tag, memo)
	}
	return Result{Hashes: dst, Tokens: ids.Len(), Exact: true}
}

// boolOpt reads a boolean option, def when absent.
func boolOpt(raw []byte, def bool) (bool, error) {
	switch v := jsonscan.TrimWS(raw); {
	case !present(v):
		return def, nil
	case string(v) == "true":
		return true, nil
	case string(v) == "false":
		return false, nil
	}
	return false, fmt.Errorf("%w: %q is not a boolean", ErrBadInput, raw)
}

var _ Hasher = (*Local)(nil)
