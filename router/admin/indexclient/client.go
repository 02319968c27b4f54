// Package indexclient is a Go client of kvroute's index API (router/admin): the query
// (which workers hold how much of a request's prefix), the snapshot and the restore, as
// served by a router's admin listener or by a standalone `kvroute indexer`.
package indexclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/kvroute/kvroute/router/admin"
)

// Client calls one index API. Its fields must not change once it is in use; it is
// safe for concurrent use.
type Client struct {
	// BaseURL is the listener's URL, e.g. "http://127.0.0.1:9090" (a router's admin
	// listener, or the indexer's listener), with the mount prefix if the admin is
	// mounted under one (admin.path_prefix).
	BaseURL string
	// Token is the admin bearer token; "" sends none (enough for queries and
	// snapshots on loopback; restore always needs it).
	Token string
	// HTTP is the client used; nil means http.DefaultClient.
	HTTP *http.Client
}

// Query is a query: the model, the optional adapter and salt, and exactly one of
// Prompt, Messages, TokenIDs and BlockHashes.
type Query struct {
	Model     string `json:"model"`
	LoRA      string `json:"lora,omitempty"`
	CacheSalt string `json:"cache_salt,omitempty"`
	// Prompt is a completions prompt string; nil when not given.
	Prompt *string `json:"prompt,omitempty"`
	// Messages is a chat "messages" array, as JSON.
	Messages json.RawMessage `json:"messages,omitempty"`
	// TokenIDs are the prompt's token ids.
	TokenIDs []uint32 `json:"token_ids,omitempty"`
	// BlockHashes are kvroute's own chained block hashes (proto.HashBlocks).
	BlockHashes []uint64 `json:"block_hashes,omitempty"`
}

// Error is an error answer of the API.
type Error struct {
	// Status is the HTTP status.
	Status int
	// Code is the OpenAI-shaped error's code (model_not_found, invalid_request,
	// request_too_large, ...), "" when the answer had none.
	Code string
	// Message is the error's message, or the start of the body.
	Message string
}

func (e *Error) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("index API: %d %s: %s", e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("index API: %d: %s", e.Status, e.Message)
}

// Query asks which workers hold how many of q's leading blocks. An error answer is an
// *Error.
func (c *Client) Query(ctx context.Context, q Query) (admin.IndexAnswer, error) {
	body, err := json.Marshal(q)
	if err != nil {
		return admin.IndexAnswer{}, fmt.Errorf("index query: %w", err)
	}
	resp, err := c.do(ctx, http.MethodPost, "/api/index/query", "application/json", bytes.NewReader(body))
	if err != nil {
		return admin.IndexAnswer{}, err
	}
	defer resp.Body.Close()
	var a admin.IndexAnswer
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&a); err != nil {
		return admin.IndexAnswer{}, fmt.Errorf("index query: answer: %w", err)
	}
	return a, nil
}

// Snapshot copies the index's snapshot (indexer.Index.Dump's format) to w and returns
// the bytes written.
func (c *Client) Snapshot(ctx context.Context, w io.Writer) (int64, error) {
	resp, err := c.do(ctx, http.MethodGet, "/api/index/snapshot", "", nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("index snapshot: %w", err)
	}
	return n, nil
}

// Restore installs a snapshot read from r; it needs the token. A malformed snapshot
// is refused (an *Error with status 400) and changes nothing.
func (c *Client) Restore(ctx context.Context, r io.Reader) (admin.RestoreResult, error) {
	resp, err := c.do(ctx, http.MethodPost, "/api/index/restore", "application/octet-stream", r)
	if err != nil {
		return admin.RestoreResult{}, err
	}
	defer resp.Body.Close()
	var res admin.RestoreResult
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&res); err != nil {
		return admin.RestoreResult{}, fmt.Errorf("index restore: answer: %w", err)
	}
	return res, nil
}

// do sends one request and returns a 2xx response; any other status is read into an
// *Error.
func (c *Client) do(ctx context.Context, method, path, contentType string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, body)
	if err != nil {
		return nil, fmt.Errorf("index API: %w", err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("index API %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &Error{Status: resp.StatusCode}
	// The index endpoints answer {"error":{"message","code",...}}; the rest of the admin
	// API {"error":"message"}.
	var shaped struct {
		Error struct {
			Message string `json:"message"`
			Code    string `json:"code"`
		} `json:"error"`
	}
	var plain struct {
		Error string `json:"error"`
	}
	switch {
	case json.Unmarshal(b, &shaped) == nil && shaped.Error.Message != "":
		e.Message, e.Code = shaped.Error.Message, shaped.Error.Code
	case json.Unmarshal(b, &plain) == nil && plain.Error != "":
		e.Message = plain.Error
	default:
		e.Message = strings.TrimSpace(string(b[:min(len(b), 200)]))
	}
	return nil, e
}

// IsNotFound reports whether err is an API answer naming an unknown model.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == "model_not_found"
}
