package blockhash

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/cespare/xxhash/v2"

	"github.com/kvroute/kvroute/proto"
	"github.com/kvroute/kvroute/router/jsonscan"
)

// Request is what the tokenization step needs from an OpenAI request. The raw fields
// alias the request body: a [Hasher] reads them during the call and keeps no reference
// to them afterwards.
type Request struct {
	// Model is the model the chain is seeded with: the served (base) model name under
	// which the workers' KV events are indexed.
	Model string
	// LoRA is the adapter the request runs on ("" for the base model). It is part of the
	// seed, and the engine mode sends it as /tokenize's model when set, so the adapter's
	// own tokenizer is used.
	LoRA string
	// CacheSalt is the request's cache_salt ("" for none); part of the seed.
	CacheSalt string
	// BlockSize is the engine's tokens per KV block; must be positive.
	BlockSize int
	// Messages is the raw "messages" array of a chat request; nil or null for a
	// completions request.
	Messages json.RawMessage
	// Prompt is the raw "prompt" of a completions request: a string, an array of
	// strings, an array of token ids or an array of token-id arrays. A batch is hashed
	// by its first prompt.
	Prompt json.RawMessage
	// Options holds the request fields that change how the prompt is rendered or
	// tokenized.
	Options Options
	// Body is the whole chat request body as the client sent it, or nil. When set, the
	// local mode hands it to its tokenizer as it is, instead of composing a body of
	// Messages and Options: one JSON pass less per request. It must be the body
	// Messages and Options were read from. Only valid during Hash.
	Body []byte
}

// Options are the raw JSON values of the request fields, besides the messages or prompt,
// that change the engine's token ids (vLLM's ChatCompletionRequest and
// CompletionRequest). A nil or null field is absent. The router can embed Options in the
// struct it decodes the body into, so one pass of its body scanner fills them.
type Options struct {
	// AddGenerationPrompt is add_generation_prompt (chat; vLLM default true).
	AddGenerationPrompt json.RawMessage `json:"add_generation_prompt,omitempty"`
	// ContinueFinalMessage is continue_final_message (chat; default false).
	ContinueFinalMessage json.RawMessage `json:"continue_final_message,omitempty"`
	// AddSpecialTokens is add_special_tokens (chat default false, completions default
	// true).
	AddSpecialTokens json.RawMessage `json:"add_special_tokens,omitempty"`
	// ChatTemplate is a per-request chat_template (chat).
	ChatTemplate json.RawMessage `json:"chat_template,omitempty"`
	// ChatTemplateKwargs is chat_template_kwargs (chat).
	ChatTemplateKwargs json.RawMessage `json:"chat_template_kwargs,omitempty"`
	// Tools is the tools array (chat); most templates render it before the messages.
	Tools json.RawMessage `json:"tools,omitempty"`
	// Documents is the documents array (chat, RAG templates).
	Documents json.RawMessage `json:"documents,omitempty"`
	// ReasoningEffort is reasoning_effort (chat); vLLM passes it to the template.
	ReasoningEffort json.RawMessage `json:"reasoning_effort,omitempty"`
}

// Result is the outcome of hashing one request.
type Result struct {
	// Hashes are the chained hashes of the prompt's full blocks, first block first,
	// appended to the caller's dst.
	Hashes []proto.BlockHash
	// Tokens is the prompt length in tokens; estimated (text bytes / 4, rounded up)
	// when Exact is false.
	Tokens int
	// Exact is true when Hashes are proto.HashBlocks over the engine's token ids, so
	// they can match entries built from the workers' KV events. When false they are
	// text-chunk hashes (approx mode) that only ever match the router's own predicted
	// entries.
	Exact bool
	// Truncated is true when a chat's messages hold a non-text content part (image_url,
	// input_audio, video_url, file, ...): the prompt was hashed only up to it (see
	// [TextPrefix]), and Tokens counts that prefix only. The engine hashes such a part by
	// its content (vLLM's multimodal extra keys), which the router does not see; the
	// tokens standing for it are the same for any image, so hashing past it would match
	// a request with another image.
	Truncated bool
}

// Hasher turns a request into the block hashes the indexer is queried with. Hash appends
// to dst (which may be nil) and returns the extended slice in Result.Hashes; on error
// Result is zero. Implementations are safe for concurrent use.
type Hasher interface {
	Hash(ctx context.Context, req *Request, dst []proto.BlockHash) (Result, error)
}

// Errors wrapped by Hash.
var (
	// ErrBadInput: the messages, prompt or options could not be read.
	ErrBadInput = errors.New("prefix: bad request input")
	// ErrNoWorker: the engine mode found no worker to ask.
	ErrNoWorker = errors.New("prefix: no worker to tokenize with")
	// ErrCooldown: the picked worker failed recently and is not asked again before its
	// cooldown ends.
	ErrCooldown = errors.New("prefix: worker tokenize cooldown")
	// ErrEngine: the worker's /tokenize answered with an error status or an unreadable
	// body.
	ErrEngine = errors.New("prefix: engine tokenize failed")
)

// Mode is a tokenization mode name.
type Mode string

// The modes, as written in the config and the --tokenize flag.
const (
	// ModeEngine asks a worker's POST /tokenize (the engine's template and tokenizer).
	ModeEngine Mode = "engine"
	// ModeApprox hashes text chunks; no tokenizer.
	ModeApprox Mode = "approx"
	// ModeLocal runs an in-process tokenizer loaded from a path.
	ModeLocal Mode = "local"
	// ModeAuto is local mode for each model with a tokenizer in tokenize.dir, else
	// engine mode, else approx ([Auto]).
	ModeAuto Mode = "auto"
)

// ParseMode parses a mode string: "auto", "engine", "approx" or "local:PATH". path is the
// tokenizer path of the local mode and "" otherwise.
func ParseMode(s string) (mode Mode, path string, err error) {
	switch {
	case s == string(ModeEngine), s == string(ModeApprox), s == string(ModeAuto):
		return Mode(s), "", nil
	case s == string(ModeLocal):
		return "", "", fmt.Errorf("tokenize mode %q: local needs a tokenizer path, as local:PATH", s)
	case strings.HasPrefix(s, string(ModeLocal)+":"):
		p := s[len(ModeLocal)+1:]
		if strings.TrimSpace(p) == "" {
			return "", "", fmt.Errorf("tokenize mode %q: empty tokenizer path", s)
		}
		return ModeLocal, p, nil
	}
	return "", "", fmt.Errorf("tokenize mode %q: want auto, engine, approx or local:PATH", s)
}

// kind is what a request carries.
type kind uint8

const (
	kindChat   kind = iota + 1 // messages
	kindText                   // a prompt string (promptLit holds its JSON literal)
	kindTokens                 // token ids (promptLit holds the JSON array)
)

// classify finds what req carries. For a completions prompt it returns the JSON literal
// of the first prompt: a string, or an array of token ids.
func classify(req *Request) (k kind, promptLit []byte, err error) {
	if req.BlockSize <= 0 {
		return 0, nil, fmt.Errorf("%w: block size %d is not positive", ErrBadInput, req.BlockSize)
	}
	if m := jsonscan.TrimWS(req.Messages); len(m) > 0 && !isNull(m) {
		if m[0] != '[' {
			return 0, nil, fmt.Errorf("%w: messages is not an array", ErrBadInput)
		}
		return kindChat, m, nil
	}
	p := jsonscan.TrimWS(req.Prompt)
	if len(p) == 0 || isNull(p) {
		return 0, nil, fmt.Errorf("%w: neither messages nor prompt", ErrBadInput)
	}
	switch p[0] {
	case '"':
		return kindText, p, nil
	case '[':
		i := jsonscan.SkipWS(p, 1)
		if i >= len(p) {
			return 0, nil, fmt.Errorf("%w: prompt: %w", ErrBadInput, jsonscan.ErrSyntax)
		}
		switch c := p[i]; {
		case c == ']', c == '-', c >= '0' && c <= '9':
			return kindTokens, p, nil
		case c == '"' || c == '[':
			end, err := jsonscan.Skip(p, i)
			if err != nil {
				return 0, nil, fmt.Errorf("%w: prompt: %w", ErrBadInput, err)
			}
			if c == '"' {
				return kindText, p[i:end], nil
			}
			return kindTokens, p[i:end], nil
		}
	}
	return 0, nil, fmt.Errorf("%w: prompt must be a string, an array of strings or token ids", ErrBadInput)
}

// falseLit is the JSON literal false.
var falseLit = []byte("false")

// TextPrefix cuts a chat for the modes that render whole messages (engine, local) at its
// first non-text content part: it returns the messages before the message holding it, as
// a JSON array appended to dst, and cut true; or msgs itself and cut false when every
// part is text. Text parts before the non-text one in the same message are left out too:
// rendered on their own they would end the message where the engine's prompt goes on.
// Messages before it render to the engine's own tokens (chat templates render earlier
// messages alike whatever follows, the invariant multi-turn hashing rests on), so the
// full blocks of the prefix are exact; the caller renders it without a generation prompt.
// msgs is a whole array value.
func TextPrefix(dst, msgs []byte) (out []byte, cut bool, err error) {
	if len(msgs) == 0 || msgs[0] != '[' {
		return nil, false, fmt.Errorf("%w: messages: %w", ErrBadInput, jsonscan.ErrSyntax)
	}
	i := jsonscan.SkipWS(msgs, 1)
	if i < len(msgs) && msgs[i] == ']' {
		return msgs, false, nil
	}
	last := 1 // end of the last text-only message, just past '[' before the first
	for n := 0; ; n++ {
		end, text, err := textOnlyMessage(msgs, i)
		if err != nil {
			return nil, false, fmt.Errorf("%w: message %d: %w", ErrBadInput, n, err)
		}
		if !text {
			dst = append(dst, msgs[:last]...)
			return append(dst, ']'), true, nil
		}
		last = end
		i = jsonscan.SkipWS(msgs, end)
		if i >= len(msgs) {
			return nil, false, fmt.Errorf("%w: messages: %w", ErrBadInput, jsonscan.ErrSyntax)
		}
		if msgs[i] == ']' {
			return msgs, false, nil
		}
		if msgs[i] != ',' {
			return nil, false, fmt.Errorf("%w: messages: %w", ErrBadInput, jsonscan.ErrSyntax)
		}
		i = jsonscan.SkipWS(msgs, i+1)
	}
}

// textOnlyMessage reads the message object at m[start] and returns the index just past it
// and whether its content, when an array of parts, holds text parts only.
func textOnlyMessage(m []byte, start int) (end int, text bool, err error) {
	it, err := jsonscan.NewIter(m, start)
	if err != nil {
		return 0, false, fmt.Errorf("not an object: %w", err)
	}
	text = true
	for {
		key, vs, _, ok, err := it.Next()
		if err != nil {
			return 0, false, err
		}
		if !ok {
			break
		}
		if jsonscan.KeyIs(key, "content") && m[vs] == '[' {
			// The last "content" wins, as when the message is decoded.
			if text, err = textParts(m[vs:]); err != nil {
				return 0, false, err
			}
		}
	}
	return it.End(), text, nil
}

// textParts reports whether the parts array at the start of c are all text parts.
func textParts(c []byte) (bool, error) {
	i := jsonscan.SkipWS(c, 1)
	if i < len(c) && c[i] == ']' {
		return true, nil
	}
	for {
		_, end, ok, err := partText(c, i)
		if err != nil {
			return false, err
		}
		if !ok {
			return false, nil
		}
		i = jsonscan.SkipWS(c, end)
		if i >= len(c) {
			return false, jsonscan.ErrSyntax
		}
		if c[i] == ']' {
			return true, nil
		}
		if c[i] != ',' {
			return false, jsonscan.ErrSyntax
		}
		i = jsonscan.SkipWS(c, i+1)
	}
}

// cutChat applies [TextPrefix] to a chat request for the engine and local modes: when the
// messages hold a non-text part it returns a copy of req to render (no client body, no
// generation prompt, no continued final message) and the cut messages, appended to buf.
func cutChat(req *Request, lit, buf []byte) (*Request, []byte, bool, error) {
	cutLit, cut, err := TextPrefix(buf, lit)
	if err != nil || !cut {
		return req, lit, false, err
	}
	c := *req
	c.Body, c.Messages = nil, cutLit
	c.Options.AddGenerationPrompt, c.Options.ContinueFinalMessage = falseLit, nil
	return &c, cutLit, true, nil
}

// hashTokenPrompt hashes a token-id prompt literal directly (exact in every mode).
func hashTokenPrompt(req *Request, lit []byte, dst []proto.BlockHash) (Result, error) {
	bp := getTokens()
	defer putTokens(bp)
	ids, _, err := jsonscan.Uint32Array(lit, 0, (*bp)[:0])
	*bp = ids
	if err != nil {
		return Result{}, fmt.Errorf("%w: token-id prompt: %w", ErrBadInput, err)
	}
	return exact(req, ids, dst), nil
}

// exact hashes token ids with the request's seed.
func exact(req *Request, ids []uint32, dst []proto.BlockHash) Result {
	seed := proto.Seed(req.Model, req.LoRA, req.CacheSalt)
	return Result{Hashes: proto.HashBlocks(dst, seed, ids, req.BlockSize), Tokens: len(ids), Exact: true}
}

// approxSeed derives the approx chain's seed from the token chain's seed. Approx block
// inputs also end with a marker byte that token blocks never have (see chunker), so an
// approx hash equals an event-derived hash only through a 64-bit hash collision.
func approxSeed(req *Request) proto.BlockHash {
	var d xxhash.Digest
	d.Reset()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(proto.Seed(req.Model, req.LoRA, req.CacheSalt)))
	_, _ = d.Write(b[:])
	_, _ = d.WriteString("kvroute/approx/v1")
	return proto.BlockHash(d.Sum64())
}

func isNull(b []byte) bool { return string(b) == "null" }

// present reports whether an option value was given.
func present(raw json.RawMessage) bool {
	t := jsonscan.TrimWS(raw)
	return len(t) > 0 && !isNull(t)
}
