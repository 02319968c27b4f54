package router

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/kvroute/kvroute/router/blockhash"
	"github.com/kvroute/kvroute/router/jsonscan"
)

// endpoint is an inference endpoint kvroute routes.
type endpoint uint8

const (
	epChat endpoint = iota
	epCompletions
	epEmbeddings
	// epResponses is the Responses API (responses.go); epPassthrough an engine endpoint
	// forwarded by model (passthrough.go). Their call carries the path.
	epResponses
	epPassthrough
)

func (e endpoint) path() string {
	switch e {
	case epChat:
		return "/v1/chat/completions"
	case epCompletions:
		return "/v1/completions"
	case epResponses:
		return "/v1/responses"
	default:
		return "/v1/embeddings"
	}
}

// inferenceEndpoint returns the endpoint of chat, completions and embeddings requests'
// path; false for any other path.
func inferenceEndpoint(path string) (endpoint, bool) {
	switch path {
	case "/v1/chat/completions":
		return epChat, true
	case "/v1/completions":
		return epCompletions, true
	case "/v1/embeddings":
		return epEmbeddings, true
	}
	return epPassthrough, false
}

// request holds the fields of an OpenAI request that routing needs. The raw fields
// alias the request body and die with the RequestCtx.
type request struct {
	Model     string          `json:"model"`
	Stream    bool            `json:"stream"`
	User      string          `json:"user"`
	CacheSalt string          `json:"cache_salt"`
	Msgs      json.RawMessage `json:"messages"`
	Prompt    json.RawMessage `json:"prompt"`
	Input     json.RawMessage `json:"input"`
	// Options are the fields that change how the engine tokenizes the prompt.
	blockhash.Options
	// Body is the whole body of a chat request (nil for other endpoints), for the local
	// tokenize mode, which reads it as it is.
	Body []byte `json:"-"`
}

// parseRequest decodes the routing fields of body for endpoint ep and checks the ones
// the endpoint requires. The whole body is validated as JSON; fields other than the
// routing ones are skipped, not decoded. Member names match exactly (vLLM's request
// models are case-sensitive, unlike encoding/json). Errors wrap errInvalidJSON or
// errInvalidField.
func parseRequest(body []byte, ep endpoint, r *request) error {
	*r = request{}
	if err := jsonscan.Object(body, r.member); err != nil {
		if errors.Is(err, jsonscan.ErrSyntax) {
			return fmt.Errorf("%w: %w", errInvalidJSON, err)
		}
		return err
	}
	if r.Model == "" {
		return fmt.Errorf("%w: \"model\" is required", errInvalidField)
	}
	switch ep {
	case epChat:
		if !isJSONArray(r.Msgs) {
			return fmt.Errorf("%w: \"messages\" must be an array", errInvalidField)
		}
		r.Body = body
	case epCompletions:
		if len(r.Prompt) == 0 || string(r.Prompt) == "null" {
			return fmt.Errorf("%w: \"prompt\" is required", errInvalidField)
		}
	case epEmbeddings:
		if len(r.Input) == 0 || string(r.Input) == "null" {
			return fmt.Errorf("%w: \"input\" is required", errInvalidField)
		}
	}
	return nil
}

// member stores one top-level member of the body if routing needs it.
func (r *request) member(key []byte, escaped bool, val []byte) error {
	name := key[1 : len(key)-1]
	if escaped {
		var s string
		if err := json.Unmarshal(key, &s); err != nil {
			return fmt.Errorf("%w: member name: %w", errInvalidJSON, err)
		}
		name = []byte(s)
	}
	var err error
	switch string(name) { // compared in place, no allocation
	case "model":
		r.Model, err = stringValue(val, "model")
	case "stream":
		r.Stream, err = boolValue(val, "stream")
	case "user":
		r.User, err = stringValue(val, "user")
	case "cache_salt":
		r.CacheSalt, err = stringValue(val, "cache_salt")
	case "messages":
		r.Msgs = val
	case "prompt":
		r.Prompt = val
	case "input":
		r.Input = val
	case "add_generation_prompt":
		r.AddGenerationPrompt = val
	case "continue_final_message":
		r.ContinueFinalMessage = val
	case "add_special_tokens":
		r.AddSpecialTokens = val
	case "chat_template":
		r.ChatTemplate = val
	case "chat_template_kwargs":
		r.ChatTemplateKwargs = val
	case "tools":
		r.Tools = val
	case "documents":
		r.Documents = val
	case "reasoning_effort":
		r.ReasoningEffort = val
	}
	return err
}

func isJSONArray(raw json.RawMessage) bool {
	return len(raw) > 0 && raw[0] == '['
}

// appendJSONString appends s as a JSON string literal.
func appendJSONString(dst []byte, s string) []byte {
	b, err := json.Marshal(s)
	if err != nil { // cannot happen for a string
		return append(dst, `""`...)
	}
	return append(dst, b...)
}

// stringValue decodes a raw JSON value into a string field as encoding/json would: a
// string literal (escapes decoded, invalid UTF-8 replaced by U+FFFD), or null (leaves
// ""). Any other type is an error naming the field.
func stringValue(raw []byte, field string) (string, error) {
	switch {
	case raw[0] == '"':
		if !hasEscape(raw) && utf8.Valid(raw) {
			return string(raw[1 : len(raw)-1]), nil
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("%w: %q: %w", errInvalidJSON, field, err)
		}
		return s, nil
	case string(raw) == "null":
		return "", nil
	}
	return "", fmt.Errorf("%w: %q must be a string", errInvalidJSON, field)
}

func hasEscape(raw []byte) bool {
	for _, c := range raw {
		if c == '\\' {
			return true
		}
	}
	return false
}

// boolValue decodes a raw JSON value into a bool field: true, false or null (false).
func boolValue(raw []byte, field string) (bool, error) {
	switch string(raw) {
	case "true":
		return true, nil
	case "false", "null":
		return false, nil
	}
	return false, fmt.Errorf("%w: %q must be a boolean", errInvalidJSON, field)
}
