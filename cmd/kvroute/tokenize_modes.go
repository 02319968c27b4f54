package main

import (
	"fmt"
	"io"

	"github.com/kvroute/kvroute/cmd/stack"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/router/blockhash"
)

// printTokenizeModes writes, for check-config, the tokenize mode each model gets: one
// line per model the config names and one for the others. A tokenizer the auto mode
// finds but cannot load is a warning on stderr (serve starts, with that model in engine
// mode).
func printTokenizeModes(stdout, stderr io.Writer, file string, cfg *configs.Config) {
	for _, mm := range stack.TokenizeModes(cfg) {
		name := fmt.Sprintf("model %q", mm.Model)
		if mm.Model == "" {
			name = "other models"
		}
		if mm.Err != nil {
			fmt.Fprintf(stderr, "%s: warning: tokenize: %s: %v\n", file, name, mm.Err)
		}
		switch mm.Mode {
		case blockhash.ModeLocal:
			fmt.Fprintf(stdout, "tokenize: %s: local (%s)\n", name, mm.Tokenizer)
		case blockhash.ModeEngine:
			fmt.Fprintf(stdout, "tokenize: %s: engine (approx for a request when no worker serving the model can answer /tokenize)\n", name)
		default:
			fmt.Fprintf(stdout, "tokenize: %s: %s\n", name, mm.Mode)
		}
	}
}
