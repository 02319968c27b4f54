package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

// check-config prints the tokenize mode each model gets in auto mode: local where
// tokenize.dir holds the model's tokenizer, engine elsewhere, what tokenize.models says
// for the models it names; a tokenizer that does not load is a warning, not a failure.
func TestCheckConfigTokenizeModes(t *testing.T) {
	qwen := tokenizetest.ModelDir(t, "qwen3")
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "Qwen"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(qwen, filepath.Join(dir, "Qwen", "Qwen3-8B")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "broken"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "broken", "tokenizer.json"), []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := checkConfig(t, "tokenize: {dir: "+dir+", models: {pinned: approx}}\n"+
		"workers: [{url: \"http://127.0.0.1:8000\", models: [Qwen/Qwen3-8B, other, broken]}]\n")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	for _, want := range []string{
		`tokenize: model "Qwen/Qwen3-8B": local (` + filepath.Join(dir, "Qwen", "Qwen3-8B") + ")\n",
		`tokenize: model "other": engine (approx for a request when no worker serving the model can answer /tokenize)` + "\n",
		`tokenize: model "broken": engine`,
		`tokenize: model "pinned": approx` + "\n",
		"tokenize: other models: engine",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("stdout %q\nmisses %q", out, want)
		}
	}
	if !strings.Contains(errOut, `warning: tokenize: model "broken": tokenizer in `+filepath.Join(dir, "broken")) {
		t.Errorf("stderr %q: want a warning for the broken tokenizer", errOut)
	}

	// One tokenizer for every model: tokenize.dir holds tokenizer.json itself.
	code, out, errOut = checkConfig(t, "tokenize: {dir: "+qwen+"}\nworkers: [{url: \"http://127.0.0.1:8000\"}]\n")
	if code != 0 || !strings.Contains(out, "tokenize: other models: local ("+qwen+")\n") {
		t.Errorf("one tokenizer: exit %d stdout %q stderr %q", code, out, errOut)
	}

	// The default, without tokenize.dir: engine for every model.
	code, out, _ = checkConfig(t, "workers: [{url: \"http://127.0.0.1:8000\", models: [a]}]\n")
	if code != 0 || !strings.Contains(out, `tokenize: model "a": engine`) || !strings.Contains(out, "tokenize: other models: engine") {
		t.Errorf("default: exit %d stdout %q", code, out)
	}

	// A tokenize.dir that is not a directory fails, as serve would.
	code, _, errOut = checkConfig(t, "tokenize: {dir: "+filepath.Join(dir, "nope")+"}\nworkers: [{url: \"http://127.0.0.1:8000\"}]\n")
	if code != 1 || !strings.Contains(errOut, "tokenize.dir: ") {
		t.Errorf("missing dir: exit %d stderr %q", code, errOut)
	}
}
