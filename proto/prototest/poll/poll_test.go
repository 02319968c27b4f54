package poll

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// fakeTB records a CheckFor failure instead of ending the test.
type fakeTB struct {
	testing.TB
	failed string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
}

func TestUntilHoldsAfterSomeCalls(t *testing.T) {
	var n atomic.Int32
	if !Until(time.Second, func() bool { return n.Add(1) >= 5 }) {
		t.Fatalf("Until reported a timeout; cond was called %d times", n.Load())
	}
	if got := n.Load(); got != 5 {
		t.Fatalf("cond called %d times, want 5 (it holds on the fifth)", got)
	}
}

func TestUntilTimesOut(t *testing.T) {
	start := time.Now()
	var n atomic.Int32
	if Until(30*time.Millisecond, func() bool { n.Add(1); return false }) {
		t.Fatal("Until returned true for a condition that never holds")
	}
	if el := time.Since(start); el < 30*time.Millisecond {
		t.Fatalf("Until gave up after %v, before the 30ms timeout", el)
	}
	if n.Load() < 2 {
		t.Fatalf("cond called %d times, want at least 2 (first call and at the deadline)", n.Load())
	}
}

func TestCheckForNamesWhatAndTimeout(t *testing.T) {
	f := &fakeTB{}
	CheckFor(f, 5*time.Millisecond, "the moon", func() bool { return false })
	if want := "timed out after 5ms waiting for the moon"; f.failed != want {
		t.Fatalf("failure %q, want %q", f.failed, want)
	}
	f = &fakeTB{}
	CheckFor(f, time.Second, "now", func() bool { return true })
	if f.failed != "" {
		t.Fatalf("CheckFor failed on a condition that holds: %q", f.failed)
	}
}
