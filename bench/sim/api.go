package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
)

// apiError is an error answered to the client with an OpenAI-shaped body.
type apiError struct {
	status int
	typ    string
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) *apiError {
	return &apiError{status: 400, typ: "BadRequestError", msg: fmt.Sprintf(format, args...)}
}

// genParams is a decoded generation request, in the engine's terms.
type genParams struct {
	chat         bool
	model        string
	tokens       []uint32
	maxTokens    int // 0 when the request did not set it
	minTokens    int
	ignoreEOS    bool
	stream       bool
	includeUsage bool
	contUsage    bool
	salt         string
	pd           *pdRequest // P/D fields (pd.go), nil for an ordinary request
}

type streamOptions struct {
	IncludeUsage         bool `json:"include_usage"`
	ContinuousUsageStats bool `json:"continuous_usage_stats"`
}

type wireRequest struct {
	Model               string          `json:"model"`
	Prompt              json.RawMessage `json:"prompt"`
	Messages            []wireMessage   `json:"messages"`
	MaxTokens           *int64          `json:"max_tokens"`
	MaxCompletionTokens *int64          `json:"max_completion_tokens"`
	MinTokens           int64           `json:"min_tokens"`
	IgnoreEOS           bool            `json:"ignore_eos"`
	Stream              bool            `json:"stream"`
	StreamOptions       *streamOptions  `json:"stream_options"`
	CacheSalt           string          `json:"cache_salt"`
	AddGenerationPrompt *bool           `json:"add_generation_prompt"`
	AddSpecialTokens    *bool           `json:"add_special_tokens"`
	N                   *int64          `json:"n"`
	KVTransferParams    json.RawMessage `json:"kv_transfer_params"`
	BootstrapHost       json.RawMessage `json:"bootstrap_host"`
	BootstrapPort       json.RawMessage `json:"bootstrap_port"`
	BootstrapRoom       json.RawMessage `json:"bootstrap_room"`
}

type wireMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type wirePart struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// decodeRequest parses the body of POST /v1/completions (chat false) or
// /v1/chat/completions (chat true) and tokenizes its prompt. Errors are *apiError.
func decodeRequest(body []byte, chat bool, tz tokenizers) (*genParams, error) {
	var w wireRequest
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, badRequest("invalid JSON body: %v", err)
	}
	p := &genParams{chat: chat, model: w.Model, ignoreEOS: w.IgnoreEOS, stream: w.Stream, salt: w.CacheSalt}
	pd, err := decodePD(w.KVTransferParams, w.BootstrapHost, w.BootstrapPort, w.BootstrapRoom)
	if err != nil {
		return nil, err
	}
	p.pd = pd
	if w.N != nil && *w.N != 1 {
		return nil, badRequest("kvsim supports n=1 only, got n=%d", *w.N)
	}
	if w.StreamOptions != nil {
		if !w.Stream {
			return nil, badRequest("stream_options can only be set when stream is true")
		}
		p.includeUsage = w.StreamOptions.IncludeUsage
		p.contUsage = w.StreamOptions.ContinuousUsageStats
	}
	maxTok := w.MaxTokens
	if chat && w.MaxCompletionTokens != nil {
		maxTok = w.MaxCompletionTokens
	}
	if maxTok != nil {
		if *maxTok < 1 || *maxTok > math.MaxInt32 {
			return nil, badRequest("max_tokens must be at least 1, got %d", *maxTok)
		}
		p.maxTokens = int(*maxTok)
	}
	if w.MinTokens < 0 || w.MinTokens > math.MaxInt32 {
		return nil, badRequest("min_tokens must be greater than or equal to 0, got %d", w.MinTokens)
	}
	p.minTokens = int(w.MinTokens)
	if p.maxTokens > 0 && p.minTokens > p.maxTokens {
		return nil, badRequest("min_tokens must be less than or equal to max_tokens=%d, got %d", p.maxTokens, p.minTokens)
	}
	if chat {
		if len(w.Messages) == 0 {
			return nil, badRequest("messages must not be empty")
		}
		msgs := make([]Message, len(w.Messages))
		for i, m := range w.Messages {
			if m.Role == "" {
				return nil, badRequest("messages[%d].role is required", i)
			}
			c, err := messageText(m.Content)
			if err != nil {
				return nil, badRequest("messages[%d].content: %v", i, err)
			}
			msgs[i] = Message{Role: m.Role, Content: c}
		}
		addGen := w.AddGenerationPrompt == nil || *w.AddGenerationPrompt
		toks, err := tz.chat(body, msgs, addGen)
		if err != nil {
			return nil, badRequest("%v", err)
		}
		p.tokens = toks
	} else {
		addSpecial := w.AddSpecialTokens == nil || *w.AddSpecialTokens
		toks, err := promptTokens(w.Prompt, tz, addSpecial)
		if err != nil {
			return nil, err
		}
		p.tokens = toks
	}
	if len(p.tokens) == 0 {
		return nil, badRequest("the prompt is empty (0 tokens)")
	}
	return p, nil
}

// messageText flattens a message's content: a string, null, or an array of parts whose
// text parts are joined with newlines.
func messageText(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return "", nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", err
		}
		return s, nil
	}
	var parts []wirePart
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", errors.New("must be a string or an array of content parts")
	}
	var b strings.Builder
	for i, pt := range parts {
		if pt.Type != "text" && pt.Type != "input_text" && pt.Type != "output_text" { // the last two: Responses API
			return "", fmt.Errorf("content part type %q is not supported by kvsim", pt.Type)
		}
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(pt.Text)
	}
	return b.String(), nil
}

// promptTokens decodes a completions prompt: a string, an array of token ids, or a
// one-element array of either.
func promptTokens(raw json.RawMessage, tz tokenizers, addSpecial bool) ([]uint32, error) {
	return promptTokensAt(raw, tz, addSpecial, false)
}

// promptTokensAt decodes a prompt; nested is true inside the one-element list, where a
// further list of lists is refused.
func promptTokensAt(raw json.RawMessage, tz tokenizers, addSpecial, nested bool) ([]uint32, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, badRequest("prompt is required")
	}
	switch raw[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, badRequest("prompt: %v", err)
		}
		return tz.text(s, addSpecial), nil
	case '[':
		// Fast path: an array of token ids (what benchmarks send).
		var nums []int64
		if err := json.Unmarshal(raw, &nums); err == nil {
			if len(nums) == 0 {
				return nil, badRequest("prompt must not be empty")
			}
			ids := make([]uint32, len(nums))
			for i, v := range nums {
				if v < 0 || v > math.MaxUint32 {
					return nil, badRequest("prompt[%d]: token id %d out of range", i, v)
				}
				ids[i] = uint32(v)
			}
			return ids, nil
		}
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, badRequest("prompt: %v", err)
		}
		if len(items) != 1 {
			return nil, badRequest("prompt must be a string, an array of token ids, or a one-element array of either; got %d elements", len(items))
		}
		first := bytes.TrimSpace(items[0])
		if nested || len(first) == 0 || (first[0] != '"' && first[0] != '[') {
			return nil, badRequest("prompt: token ids must be integers")
		}
		return promptTokensAt(first, tz, addSpecial, true)
	}
	return nil, badRequest("prompt must be a string or an array of token ids")
}

// tokenizeRequest is the body of POST /tokenize.
type tokenizeRequest struct {
	Model               string        `json:"model"`
	Prompt              *string       `json:"prompt"`
	Messages            []wireMessage `json:"messages"`
	AddGenerationPrompt *bool         `json:"add_generation_prompt"`
	AddSpecialTokens    *bool         `json:"add_special_tokens"`
}

// decodeTokenize parses a POST /tokenize body and returns the token ids.
func decodeTokenize(body []byte, tz tokenizers) ([]uint32, error) {
	var w tokenizeRequest
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, badRequest("invalid JSON body: %v", err)
	}
	switch {
	case w.Prompt != nil:
		return tz.text(*w.Prompt, w.AddSpecialTokens == nil || *w.AddSpecialTokens), nil
	case w.Messages != nil:
		msgs := make([]Message, len(w.Messages))
		for i, m := range w.Messages {
			c, err := messageText(m.Content)
			if err != nil {
				return nil, badRequest("messages[%d].content: %v", i, err)
			}
			msgs[i] = Message{Role: m.Role, Content: c}
		}
		addGen := w.AddGenerationPrompt == nil || *w.AddGenerationPrompt
		toks, err := tz.chat(body, msgs, addGen)
		if err != nil {
			return nil, badRequest("%v", err)
		}
		return toks, nil
	}
	return nil, badRequest("either prompt or messages is required")
}
