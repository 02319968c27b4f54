package blockhash

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/kvroute/kvroute/router/jsonscan"
)

// appendTokenizeBody appends the JSON body that asks for req's token ids: vLLM's POST
// /tokenize request (TokenizeChatRequest or TokenizeCompletionRequest in
// vllm/entrypoints/serve/tokenize/protocol.py), which is also an OpenAI chat request body
// the local tokenizer can read.
//
// For a chat it carries the messages and the options /tokenize accepts:
// add_generation_prompt, continue_final_message, add_special_tokens, chat_template,
// chat_template_kwargs and tools (absent ones take vLLM's defaults, which equal the chat
// endpoint's). The chat endpoint also hands documents and reasoning_effort to the
// template (ChatCompletionRequest.build_chat_params, which also sets enable_thinking
// from reasoning_effort unless the kwargs set it); /tokenize has no such fields, so with
// mergeKwargs they are merged into chat_template_kwargs, as the chat endpoint does;
// without it (the local tokenizer, which reads an OpenAI body) they are top-level fields.
// A text prompt carries the prompt and add_special_tokens (default true on both
// endpoints).
func appendTokenizeBody(b []byte, model string, k kind, lit []byte, o *Options, mergeKwargs bool) ([]byte, error) {
	b = append(b, `{"model":`...)
	b = appendJSONString(b, model)
	if k == kindText {
		b = append(b, `,"prompt":`...)
		b = append(b, lit...)
		b = appendOpt(b, "add_special_tokens", o.AddSpecialTokens)
		return append(b, '}'), nil
	}
	b = append(b, `,"messages":`...)
	b = append(b, lit...)
	b = appendOpt(b, "add_generation_prompt", o.AddGenerationPrompt)
	b = appendOpt(b, "continue_final_message", o.ContinueFinalMessage)
	b = appendOpt(b, "add_special_tokens", o.AddSpecialTokens)
	b = appendOpt(b, "chat_template", o.ChatTemplate)
	b = appendOpt(b, "tools", o.Tools)
	if !mergeKwargs || (!present(o.Documents) && !present(o.ReasoningEffort)) {
		b = appendOpt(b, "chat_template_kwargs", o.ChatTemplateKwargs)
		b = appendOpt(b, "documents", o.Documents)
		b = appendOpt(b, "reasoning_effort", o.ReasoningEffort)
		return append(b, '}'), nil
	}
	b = append(b, `,"chat_template_kwargs":{`...)
	n := 0
	thinking := false
	if kw := jsonscan.TrimWS(o.ChatTemplateKwargs); present(kw) {
		if kw[0] != '{' {
			return b, fmt.Errorf("%w: chat_template_kwargs is not an object", ErrBadInput)
		}
		it, err := jsonscan.NewIter(kw, 0)
		if err != nil {
			return b, fmt.Errorf("%w: chat_template_kwargs: %w", ErrBadInput, err)
		}
		for {
			key, vs, ve, ok, err := it.Next()
			if err != nil {
				return b, fmt.Errorf("%w: chat_template_kwargs: %w", ErrBadInput, err)
			}
			if !ok {
				break
			}
			if n > 0 {
				b = append(b, ',')
			}
			b = append(b, key...)
			b = append(b, ':')
			b = append(b, kw[vs:ve]...)
			n++
			thinking = thinking || jsonscan.KeyIs(key, "enable_thinking")
		}
	}
	if present(o.Documents) {
		if n > 0 {
			b = append(b, ',')
		}
		b = append(b, `"documents":`...)
		b = append(b, jsonscan.TrimWS(o.Documents)...)
		n++
	}
	if re := jsonscan.TrimWS(o.ReasoningEffort); present(re) {
		if n > 0 {
			b = append(b, ',')
		}
		b = append(b, `"reasoning_effort":`...)
		b = append(b, re...)
		if !thinking {
			b = append(b, `,"enable_thinking":`...)
			if string(re) == `"none"` {
				b = append(b, "false"...)
			} else {
				b = append(b, "true"...)
			}
		}
	}
	return append(b, "}}"...), nil
}

func appendOpt(b []byte, name string, v []byte) []byte {
	if !present(v) {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return append(b, jsonscan.TrimWS(v)...)
}

// appendJSONString appends s as a JSON string literal; invalid UTF-8 becomes U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		b = utf8.AppendRune(b, r)
		i += n
	}
	return append(b, '"')
}

// decodeTokenizeResponse reads the token ids of a /tokenize answer
// ({"count": N, "max_model_len": M, "tokens": [...], "token_strs": ...}), appending them
// to dst. tokens is required; count, when present, must equal the number of tokens.
func decodeTokenizeResponse(body []byte, dst []uint32) ([]uint32, error) {
	body = jsonscan.TrimWS(body)
	it, err := jsonscan.NewIter(body, 0)
	if err != nil {
		return dst, fmt.Errorf("tokenize response: %w", err)
	}
	start := len(dst)
	have := false
	count := -1
	for {
		key, vs, ok, err := it.NextKey()
		if err != nil {
			return dst[:start], fmt.Errorf("tokenize response: %w", err)
		}
		if !ok {
			break
		}
		if jsonscan.KeyIs(key, "tokens") {
			// Parsed where it stands: the ids are read once, not skipped first (the
			// skip was a third of engine mode's routing decision at turn 40 of
			// BenchmarkDecision, 2026-12-07).
			var end int
			if dst, end, err = jsonscan.Uint32Array(body, vs, dst[:start]); err != nil {
				return dst[:start], fmt.Errorf("tokenize response tokens: %w", err)
			}
			it.ValueEnd(end)
			have = true
			continue
		}
		ve, err := it.SkipValue()
		if err != nil {
			return dst[:start], fmt.Errorf("tokenize response: %w", err)
		}
		if jsonscan.KeyIs(key, "count") {
			c, err := jsonscan.Uint32(body[vs:ve])
			if err != nil {
				return dst[:start], errors.New("tokenize response: count is not a non-negative integer")
			}
			count = int(c)
		}
	}
	if it.End() != len(body) {
		return dst[:start], fmt.Errorf("tokenize response: data after the object: %w", jsonscan.ErrSyntax)
	}
	if !have {
		return dst[:start], errors.New("tokenize response: no tokens")
	}
	if count >= 0 && count != len(dst)-start {
		return dst[:start], fmt.Errorf("tokenize response: count %d but %d tokens", count, len(dst)-start)
	}
	return dst, nil
}
