package configs

import (
	"slices"
	"strings"
	"time"
)

// RouterPaths are the paths the router answers itself: inference, the Responses API,
// the built-in pass-through endpoints and its own endpoints. A passthrough entry may not
// name one of them. The router's endpoint table serves exactly these (a router test
// checks it).
var RouterPaths = []string{
	"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
	"/v1/models", "/health", "/ready", "/metrics",
	"/tokenize", "/detokenize", "/v1/rerank", "/rerank", "/v1/score", "/score",
	"/pooling", "/classify", "/v1/audio/transcriptions", "/v1/audio/translations",
}

// MaxPassthrough bounds the passthrough list: each path is a metric label's worth of
// routing table.
const MaxPassthrough = 64

// Responses configures the router's map from stored response ids to the worker that
// holds each (router/responses.go). Engines that store responses (vLLM with
// VLLM_ENABLE_RESPONSES_API_STORE=1, requests with store true) keep them in their own
// memory, so a request naming previous_response_id, and GET, DELETE and cancel of
// /v1/responses/{id}, must go to that worker. The map is bounded by MaxEntries (the
// least recently used id is forgotten first) and by TTL.
type Responses struct {
	// MaxEntries bounds the ids remembered; each costs about 150 bytes. Default 100000.
	MaxEntries int `yaml:"max_entries"`
	// TTL is how long an id is remembered after its answer (or its last use: a
	// follow-up or a retrieval refreshes it). A request naming an id past it gets 404
	// response_not_found. Default 1h: longer than most agent conversations' pauses,
	// shorter than an engine's restart-free uptime (an engine forgets its stored
	// responses when it restarts anyway).
	TTL time.Duration `yaml:"ttl"`
}

func defaultResponses() Responses {
	return Responses{MaxEntries: 100000, TTL: time.Hour}
}

// validatePassthrough appends the problems of passthrough and responses with bad.
func (c *Config) validatePassthrough(bad func(format string, args ...any)) {
	if len(c.Passthrough) > MaxPassthrough {
		bad("passthrough: %d paths, at most %d", len(c.Passthrough), MaxPassthrough)
	}
	for i, p := range c.Passthrough {
		switch {
		case !strings.HasPrefix(p, "/"):
			bad("passthrough[%d]: %q must start with /", i, p)
		case strings.ContainsAny(p, "?# \t"):
			bad("passthrough[%d]: %q must be a path without query, fragment or spaces", i, p)
		case slices.Contains(RouterPaths, p) || strings.HasPrefix(p, "/v1/responses/"):
			bad("passthrough[%d]: %q is already a route of the router", i, p)
		case c.Admin.PathPrefix != "" && strings.HasPrefix(p, c.Admin.PathPrefix):
			bad("passthrough[%d]: %q is under admin.path_prefix %q", i, p, c.Admin.PathPrefix)
		default:
			if j := slices.Index(c.Passthrough, p); j < i {
				bad("passthrough[%d]: %q is already passthrough[%d]", i, p, j)
			}
		}
	}
	if c.Responses.MaxEntries < 1 {
		bad("responses.max_entries: %d must be positive", c.Responses.MaxEntries)
	}
	if c.Responses.TTL <= 0 {
		bad("responses.ttl: %q must be positive", c.Responses.TTL.String())
	}
}
