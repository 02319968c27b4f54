package blockhash

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/kvroute/kvroute/proto"
)

// FindTokenizer returns the directory under dir holding model's tokenizer, for the auto
// mode: dir/MODEL when it holds a tokenizer.json (MODEL as the client names it, slashes
// included, so a directory laid out like the Hugging Face Hub, dir/Qwen/Qwen3-8B, works),
// else dir itself when it holds a tokenizer.json (one tokenizer for every model). It
// returns "" when dir is "", when neither holds a tokenizer.json, or when model is not a
// local relative path (filepath.IsLocal: no "..", no absolute path), so a model name never
// reaches outside dir. The tokenizer_config.json next to tokenizer.json, when present,
// gives the chat template (router/tokenize/chat.Load).
func FindTokenizer(dir, model string) string {
	if dir == "" {
		return ""
	}
	if model != "" && filepath.IsLocal(model) {
		d := filepath.Join(dir, filepath.FromSlash(model))
		if isFile(filepath.Join(d, "tokenizer.json")) {
			return d
		}
	}
	if isFile(filepath.Join(dir, "tokenizer.json")) {
		return dir
	}
	return ""
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// DefaultAutoModels bounds the models an [Auto] remembers a mode for.
const DefaultAutoModels = 1024

// AutoOptions configure an [Auto].
type AutoOptions struct {
	// Dir is where tokenizers are looked for ([FindTokenizer]); "" means none: every
	// model gets Engine.
	Dir string
	// Load loads the tokenizer in a directory FindTokenizer returned (chat.Load of
	// router/tokenize/chat). Required when Dir is set.
	Load func(dir string) (Tokenizer, error)
	// Engine hashes the requests of models without a tokenizer: the engine mode wrapped
	// in a [Fallback], so that a request finding no worker able to answer /tokenize is
	// hashed in approx mode. Required.
	Engine Hasher
	// Metrics counts the local mode's fallbacks; nil counts nothing.
	Metrics *Metrics
	// MaxModels bounds the models remembered; past it a model without a remembered mode
	// is looked up again on each request. Default DefaultAutoModels.
	MaxModels int
}

// Auto is the auto tokenize mode: each model is hashed in local mode when Dir holds a
// tokenizer for it ([FindTokenizer]), else in engine mode, and a request the engine
// cannot serve is hashed in approx mode (the Engine option is a [Fallback]). The engine
// is available for a request when its Pick finds a healthy worker serving the model and
// that worker is not cooling down after a failed /tokenize (a timeout, a transport
// error, a 5xx status, or 404/405: no /tokenize endpoint; one second by default, see
// EngineOptions.Cooldown); otherwise the request is hashed in approx mode at once,
// without a call.
//
// A model's mode is decided at its first request (or by [Auto.Resolve]) and kept: adding
// a tokenizer to Dir takes effect at the next restart or reload. A tokenizer that fails
// to load leaves its model in engine mode and the error is returned by Resolve (logged by
// the caller). Hashing reads an immutable map without a lock; only a model's first request
// takes the lock (and loads its tokenizer, tens to hundreds of milliseconds once). Auto is
// safe for concurrent use.
type Auto struct {
	opts AutoOptions
	// modes maps a model to its Hasher; copied on write under mu, read without a lock.
	modes atomic.Pointer[map[string]Hasher]
	// mu serializes the resolution of new models.
	mu sync.Mutex
}

// NewAuto returns an Auto over opts.
func NewAuto(opts AutoOptions) (*Auto, error) {
	if opts.Engine == nil {
		return nil, fmt.Errorf("auto tokenize mode: no engine hasher")
	}
	if opts.Dir != "" && opts.Load == nil {
		return nil, fmt.Errorf("auto tokenize mode: no tokenizer loader")
	}
	if opts.MaxModels <= 0 {
		opts.MaxModels = DefaultAutoModels
	}
	a := &Auto{opts: opts}
	a.modes.Store(&map[string]Hasher{})
	return a, nil
}

// Resolve decides model's mode now, when it is not decided yet, and reports it: ModeLocal
// and the tokenizer's directory, or ModeEngine and "". err is a tokenizer that was found
// but failed to load (the model then stays in engine mode).
func (a *Auto) Resolve(model string) (mode Mode, dir string, err error) {
	_, mode, dir, err = a.resolve(model)
	return mode, dir, err
}

// Hash implements [Hasher].
func (a *Auto) Hash(ctx context.Context, req *Request, dst []proto.BlockHash) (Result, error) {
	h, ok := (*a.modes.Load())[req.Model]
	if !ok {
		h, _, _, _ = a.resolve(req.Model)
	}
	return h.Hash(ctx, req, dst)
}

func (a *Auto) resolve(model string) (Hasher, Mode, string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	cur := *a.modes.Load()
	if h, ok := cur[model]; ok {
		return h, modeOf(h), dirOf(h), nil
	}
	var (
		h   = a.opts.Engine
		dir = FindTokenizer(a.opts.Dir, model)
		err error
	)
	if dir != "" {
		var tok Tokenizer
		if tok, err = a.opts.Load(dir); err == nil {
			h = &autoLocal{Fallback: NewFallback(NewLocal(tok), a.opts.Metrics), dir: dir}
		} else {
			err = fmt.Errorf("tokenizer for model %q in %s: %w", model, dir, err)
			dir = ""
		}
	}
	if len(cur) < a.opts.MaxModels {
		next := make(map[string]Hasher, len(cur)+1)
		for k, v := range cur {
			next[k] = v
		}
		next[model] = h
		a.modes.Store(&next)
	}
	return h, modeOf(h), dir, err
}

// autoLocal is a model's local mode in an Auto, remembering where its tokenizer is.
type autoLocal struct {
	*Fallback
	dir string
}

func modeOf(h Hasher) Mode {
	if _, ok := h.(*autoLocal); ok {
		return ModeLocal
	}
	return ModeEngine
}

func dirOf(h Hasher) string {
	if l, ok := h.(*autoLocal); ok {
		return l.dir
	}
	return ""
}

var _ Hasher = (*Auto)(nil)
