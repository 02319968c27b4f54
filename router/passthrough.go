package router

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/kvroute/kvroute/router/jsonscan"
)

// This file is the pass-through of the engines' other endpoints (issue #22): requests
// that are neither chat, completions, embeddings nor the Responses API, forwarded by the
// model their body names to one of the available workers serving it, chosen by the
// configured policy on load alone (there is no prompt to match), with the same retries
// before the first byte, limits, headers and metrics as inference. The body is JSON with
// a "model" member, or multipart/form-data (audio uploads) with a "model" field.

// builtinPassthrough are the engine endpoints passed through without configuration:
// vLLM's tokenizer, scoring, pooling and audio endpoints.
var builtinPassthrough = []string{
	"/tokenize", "/detokenize", "/v1/rerank", "/rerank", "/v1/score", "/score",
	"/pooling", "/classify", "/v1/audio/transcriptions", "/v1/audio/translations",
}

// newPassthrough returns the set of pass-through paths: the built-in ones and extra
// (configs' passthrough, validated there).
func newPassthrough(extra []string) map[string]struct{} {
	m := make(map[string]struct{}, len(builtinPassthrough)+len(extra))
	for _, p := range builtinPassthrough {
		m[p] = struct{}{}
	}
	for _, p := range extra {
		m[p] = struct{}{}
	}
	return m
}

// handlePassthrough forwards one pass-through request.
func (s *Server) handlePassthrough(ctx *fasthttp.RequestCtx, path string) {
	start := time.Now()
	if !s.acceptPost(ctx, path) {
		return
	}
	model, err := passthroughModel(ctx.PostBody(), ctx.Request.Header.ContentType())
	if err != nil {
		s.fail(ctx, "", err)
		return
	}
	if q := ctx.URI().QueryString(); len(q) > 0 {
		path += "?" + string(q)
	}
	r := request{Model: model}
	s.forward(ctx, &call{ep: epPassthrough, path: path, r: &r, start: start})
}

// errNoModel is a pass-through body that names no model.
var errNoModel = fmt.Errorf("%w: \"model\" is required to route the request", errInvalidField)

// maxFormModel bounds the multipart "model" field read.
const maxFormModel = 1024

// maxFormParts bounds the multipart parts looked at for the model field: a form of
// thousands of empty parts must not make the router parse them all.
const maxFormParts = 64

// passthroughModel returns the model a pass-through body names: the "model" field of a
// multipart/form-data body, else the "model" member of a JSON object. The body is
// already bounded by max_body_bytes; a multipart body is read in place (file parts are
// skipped, never buffered). Errors wrap errInvalidJSON or errInvalidField.
func passthroughModel(body, contentType []byte) (string, error) {
	mt, params, err := mime.ParseMediaType(string(contentType))
	if err == nil && mt == "multipart/form-data" {
		return formModel(body, params["boundary"])
	}
	var r request
	err = jsonscan.Object(body, func(key []byte, escaped bool, val []byte) error {
		if jsonscan.KeyIs(key, "model") {
			return r.member(key, escaped, val)
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, jsonscan.ErrSyntax) {
			return "", fmt.Errorf("%w: %w", errInvalidJSON, err)
		}
		return "", err
	}
	if r.Model == "" {
		return "", errNoModel
	}
	return r.Model, nil
}

// formModel returns the "model" field of a multipart/form-data body.
func formModel(body []byte, boundary string) (string, error) {
	if boundary == "" {
		return "", fmt.Errorf("%w: multipart/form-data without a boundary", errInvalidField)
	}
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	for range maxFormParts {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("%w: multipart body: %w", errInvalidField, err)
		}
		if p.FormName() != "model" || p.FileName() != "" {
			continue
		}
		v, err := io.ReadAll(io.LimitReader(p, maxFormModel+1))
		if err != nil {
			return "", fmt.Errorf("%w: multipart body: %w", errInvalidField, err)
		}
		if len(v) > maxFormModel {
			return "", fmt.Errorf("%w: the \"model\" field is longer than %d bytes", errInvalidField, maxFormModel)
		}
		if len(v) == 0 {
			break
		}
		return string(v), nil
	}
	return "", errNoModel
}
