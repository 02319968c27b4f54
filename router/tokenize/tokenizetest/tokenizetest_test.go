package tokenizetest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// fakeTB records the first failure and stops the helper's goroutine, as t.Fatal does.
type fakeTB struct {
	testing.TB
	failed string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatal(args ...any) { f.failed = fmt.Sprint(args...); runtime.Goexit() }

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// failure runs fn with a fakeTB on its own goroutine and returns the failure message.
func failure(fn func(tb testing.TB)) string {
	f := &fakeTB{}
	done := make(chan struct{})
	go func() { defer close(done); fn(f) }()
	<-done
	return f.failed
}

func TestModelDirFailsNamingDeps(t *testing.T) {
	msg := failure(func(tb testing.TB) { ModelDir(tb, "no_such_model") })
	if !strings.Contains(msg, "no_such_model tokenizer files missing (run scripts/deps.sh)") {
		t.Fatalf("failure %q, want it to name the model and scripts/deps.sh", msg)
	}
}

func TestRepoRootHoldsGoMod(t *testing.T) {
	if _, err := os.Stat(filepath.Join(RepoRoot(t), "go.mod")); err != nil {
		t.Fatal(err)
	}
}

func TestReadJSONL(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.jsonl")
	if err := os.WriteFile(p, []byte("[1,2]\n[3]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got := ReadJSONL[[]int](t, p)
	if len(got) != 2 || !slices.Equal(got[0], []int{1, 2}) || !slices.Equal(got[1], []int{3}) {
		t.Fatalf("ReadJSONL = %v, want [[1 2] [3]]", got)
	}
	if err := os.WriteFile(p, []byte("[1]\nnope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if msg := failure(func(tb testing.TB) { ReadJSONL[[]int](tb, p) }); !strings.Contains(msg, p+" line 2:") {
		t.Fatalf("failure %q, want it to name %s line 2", msg, p)
	}
}
