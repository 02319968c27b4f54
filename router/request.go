package router

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/kvroute/kvroute/router/prefix"
)

// endpoint is an inference endpoint kvroute routes.
type endpoint uint8

const (
	epChat endpoint = iota
	epCompletions
	epEmbeddings
)

func (e endpoint) path() string {
	switch e {
	case epChat:
		return "/v1/chat/completions"
	case epCompletions:
		return "/v1/completions"
	default:
		return "/v1/embeddings"
	}
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
	prefix.Options
}

// parseRequest decodes the routing fields of body for endpoint ep and checks the ones
// the endpoint requires. Errors wrap errInvalidJSON or errInvalidField.
func parseRequest(body []byte, ep endpoint, r *request) error {
	*r = request{}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return fmt.Errorf("%w: the body must be a JSON object", errInvalidJSON)
	}
	if err := json.Unmarshal(trimmed, r); err != nil {
		return fmt.Errorf("%w: %w", errInvalidJSON, err)
	}
	if r.Model == "" {
		return fmt.Errorf("%w: \"model\" is required", errInvalidField)
	}
	switch ep {
	case epChat:
		if !isJSONArray(r.Msgs) {
			return fmt.Errorf("%w: \"messages\" must be an array", errInvalidField)
		}
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
