package indexer

import (
	"testing"
	"time"
)

// TestHandOff: a writer holding the lock keeps it between chunks while nobody waits, and
// lets a waiting reader in at its next hand-off, whether the reader is still spinning
// or has parked.
func TestHandOff(t *testing.T) {
	for _, parked := range []bool{false, true} {
		ix, _ := newIndex(t, Options{})
		ix.lock()
		ix.handOff()
		if ix.mu.TryRLock() {
			t.Fatal("the writer released the lock with nobody waiting")
		}
		if ix.c.handOffs.Load() != 0 {
			t.Fatal("hand-off counted with nobody waiting")
		}
		got := make(chan struct{})
		go func() {
			ix.rlock()
			close(got)
			ix.mu.RUnlock()
		}()
		deadline := time.Now().Add(time.Minute)
		for ix.waiters.Load() == 0 || (parked && ix.c.readParks.Load() == 0) {
			if time.Now().After(deadline) {
				t.Fatalf("the reader never waited (parked=%v)", parked)
			}
			time.Sleep(time.Millisecond)
		}
		// Each hand-off releases the lock; the reader takes it at one of them.
		for done := false; !done; {
			ix.handOff()
			select {
			case <-got:
				done = true
			default:
				if time.Now().After(deadline) {
					t.Fatalf("the reader never got the lock (parked=%v)", parked)
				}
			}
		}
		ix.mu.Unlock()
		if n := ix.waiters.Load(); n != 0 {
			t.Errorf("waiters = %d after the reader got in", n)
		}
	}
}
