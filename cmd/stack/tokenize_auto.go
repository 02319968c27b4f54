package stack

import (
	"fmt"
	"slices"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/router/blockhash"
	"github.com/kvroute/kvroute/router/tokenize/chat"
)

// loadTokenizer loads the tokenizer (and chat template) in dir for the local and auto
// modes.
func loadTokenizer(dir string) (blockhash.Tokenizer, error) { return chat.Load(dir) }

// newAuto builds the auto tokenize mode over the shared engine mode (load loads a
// model's tokenizer) and decides now the
// mode of every model the config names, logging each; models discovered later are
// decided at their first request.
func (st *Stack) newAuto(engine blockhash.Hasher, m *blockhash.Metrics, load func(dir string) (blockhash.Tokenizer, error)) (*blockhash.Auto, error) {
	a, err := blockhash.NewAuto(blockhash.AutoOptions{
		Dir: st.Config.Tokenize.Dir, Load: load, Engine: engine, Metrics: m,
	})
	if err != nil {
		return nil, err
	}
	for _, model := range ConfiguredModels(st.Config) {
		mode, dir, err := a.Resolve(model)
		if err != nil {
			st.log.Warn("tokenize auto: tokenizer not loaded, engine mode", "model", model, "err", err)
			continue
		}
		st.log.Info("tokenize auto", "model", model, "mode", string(mode), "tokenizer", dir)
	}
	return a, nil
}

// ConfiguredModels lists, sorted and once each, the models cfg names: every worker's
// models and the keys of tokenize.models.
func ConfiguredModels(cfg *configs.Config) []string {
	var out []string
	for _, w := range cfg.Workers {
		out = append(out, w.Models...)
	}
	for m := range cfg.Tokenize.Models {
		out = append(out, m)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// ModelMode is the tokenize mode a model gets, as `kvroute check-config` prints it.
type ModelMode struct {
	// Model is the model name; "" stands for every model the config does not name
	// (discovered from the workers' /v1/models).
	Model string
	// Mode is "local", "engine" or "approx" (auto resolved).
	Mode blockhash.Mode
	// Tokenizer is the local mode's tokenizer path, else "".
	Tokenizer string
	// Err is a tokenizer found by auto mode that does not load: the model gets engine
	// mode.
	Err error
}

// TokenizeModes resolves the tokenize mode of every model cfg names and of the others,
// loading each tokenizer the auto mode finds (to report one that does not load), as
// serve would. cfg must have passed Validate.
func TokenizeModes(cfg *configs.Config) []ModelMode {
	resolve := func(model, spec string) ModelMode {
		mode, path, err := blockhash.ParseMode(spec)
		if err != nil {
			return ModelMode{Model: model, Mode: mode, Err: err}
		}
		if mode != blockhash.ModeAuto {
			return ModelMode{Model: model, Mode: mode, Tokenizer: path}
		}
		dir := blockhash.FindTokenizer(cfg.Tokenize.Dir, model)
		if dir == "" {
			return ModelMode{Model: model, Mode: blockhash.ModeEngine}
		}
		if _, err := loadTokenizer(dir); err != nil {
			return ModelMode{Model: model, Mode: blockhash.ModeEngine, Err: fmt.Errorf("tokenizer in %s: %w", dir, err)}
		}
		return ModelMode{Model: model, Mode: blockhash.ModeLocal, Tokenizer: dir}
	}
	var out []ModelMode
	for _, model := range ConfiguredModels(cfg) {
		spec, ok := cfg.Tokenize.Models[model]
		if !ok {
			spec = cfg.Tokenize.Mode
		}
		out = append(out, resolve(model, spec))
	}
	return append(out, resolve("", cfg.Tokenize.Mode))
}
