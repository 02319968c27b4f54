package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestIndexerNeedsConfig(t *testing.T) {
	for _, args := range [][]string{{"indexer"}, {"indexer", "--config", "/nonexistent/kvroute.yaml"}, {"indexer", "--config", "x", "extra"}} {
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, stderr.String())
		}
	}
	var stdout, stderr bytes.Buffer
	run([]string{"help"}, &stdout, &stderr)
	if !strings.Contains(stderr.String(), "indexer") {
		t.Errorf("usage does not list indexer:\n%s", stderr.String())
	}
}
