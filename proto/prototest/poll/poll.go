// Package poll is the repository's one way for a test to wait for something that
// happens on another goroutine: poll a condition with a short backoff until it holds or
// a timeout passes, never sleep and hope (nats-server server_test.go checkFor).
//
// It lives under proto only because the layer rules in .golangci.yml (which cover test
// files too) let every package of kvroute import proto and its sub-packages, and indexer
// nothing else. It imports nothing of kvroute itself, and nothing outside the standard
// library.
//
// [CheckFor] is for tests and fails them; [Until] reports instead of failing, for
// callers that add their own diagnosis to the failure or are not tests (the chaos
// harness).
package poll

import (
	"testing"
	"time"
)

// Backoff bounds: the first retry comes after minWait, each later one waits twice as
// long as the previous, up to maxWait, so a fast condition is seen within a millisecond
// and a slow one costs at most two hundred polls a second. maxWait is the 5ms most of
// the helpers this package replaced slept: tests that read state right after the
// condition holds (upstream/kvevents TestOversizeFramesDropped reads LastError before
// the source's next reconnect overwrites it) failed 13 times in 30 with 10ms.
const (
	minWait = time.Millisecond
	maxWait = 5 * time.Millisecond
)

// CheckFor calls cond until it returns true, and fails the test with
// "timed out after <timeout> waiting for <what>" if timeout passes first. what names
// the awaited state ("the scrape of w1", "3 workers healthy"). cond runs on the calling
// goroutine; CheckFor must be called from the test's goroutine, as t.Fatalf requires.
func CheckFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Until(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// Until calls cond until it returns true (Until returns true) or timeout passes (false).
// cond is called at least once, and once more at the deadline, so a condition that
// holds by then is never reported as timed out.
func Until(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	wait := minWait
	for !cond() {
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		time.Sleep(min(wait, left))
		wait = min(2*wait, maxWait)
	}
	return true
}
