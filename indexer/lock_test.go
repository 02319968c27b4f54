package indexer

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestWlockExclusion: writers (which hand the lock over between two updates) and readers
// never overlap; under -race the detector checks the happens-before edges too.
func TestWlockExclusion(t *testing.T) {
	var l wlock
	var x, y int // written by writers only, x == y whenever no writer is inside
	var inside atomic.Int32
	var stop atomic.Bool
	var wg, writers sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			for !stop.Load() {
				l.RLock()
				if inside.Load() != 0 {
					t.Error("a reader entered while a writer was inside")
				}
				if x != y {
					t.Errorf("reader saw x=%d y=%d", x, y)
				}
				l.RUnlock()
			}
		})
	}
	for range 2 {
		writers.Go(func() {
			for range 2000 {
				l.Lock()
				for range 2 {
					inside.Add(1)
					if x != y {
						t.Errorf("writer saw x=%d y=%d", x, y)
					}
					x++
					for range 100 { // a window for a reader that ignores the writer
						y++
						y--
					}
					y++
					inside.Add(-1)
					l.handoff() // readers may enter between the two updates
				}
				l.Unlock()
			}
		})
	}
	writers.Wait()
	stop.Store(true)
	wg.Wait()
	if x != 8000 || y != 8000 {
		t.Fatalf("x=%d y=%d, want 8000", x, y)
	}
}

// A reader that matches back to back cannot keep a writer out (the reverted spinning
// lock of doc.go let it).
func TestWlockWriterNotStarved(t *testing.T) {
	var l wlock
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for !stop.Load() {
				l.RLock()
				for i := 0; i < 1000; i++ {
					_ = i * i
				}
				l.RUnlock()
			}
		})
	}
	done := make(chan struct{})
	writes := 0
	go func() {
		for range 1000 {
			l.Lock()
			writes++
			l.Unlock()
		}
		close(done)
	}()
	select {
	case <-done:
		if writes != 1000 {
			t.Errorf("%d writes, want 1000", writes)
		}
	case <-time.After(time.Minute):
		t.Error("writer did not get the lock 1000 times in a minute next to two busy readers")
	}
	stop.Store(true)
	wg.Wait()
}

// A writer that keeps the lock and calls handoff between its operations lets a waiting
// reader in.
func TestWlockHandoffLetsReadersIn(t *testing.T) {
	var l wlock
	var seen atomic.Int32
	handoffUntil(t, &l, "a reader", func() {
		l.RLock()
		seen.Store(l.state.Load())
		l.RUnlock()
	})
	// The writer bit may be set again (the writer waits for the reader to leave).
	if seen.Load()&^wBit != 1 {
		t.Errorf("the reader saw state %#x inside, want one reader", seen.Load())
	}
}

// handoffUntil takes l for writing and calls handoff until other, run in a goroutine,
// returns; it fails the test after a minute.
func handoffUntil(t *testing.T, l *wlock, who string, other func()) {
	t.Helper()
	l.Lock()
	defer l.Unlock()
	got := make(chan struct{})
	go func() {
		other()
		close(got)
	}()
	deadline := time.Now().Add(time.Minute)
	for {
		select {
		case <-got:
			return
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not get in through handoff in a minute", who)
		}
		l.handoff()
	}
}

// Without waiting readers handoff keeps the lock and reports so.
func TestWlockHandoffWithoutReaders(t *testing.T) {
	var l wlock
	l.Lock()
	if k := l.handoff(); k != noHandoff {
		t.Errorf("handoff with no one waiting: %d, want noHandoff", k)
	}
	if l.state.Load() != wBit {
		t.Errorf("state %#x, want the writer bit only", l.state.Load())
	}
	l.Unlock()
	if l.state.Load() != 0 {
		t.Errorf("state %#x after Unlock, want 0", l.state.Load())
	}
}

// A writer that keeps the lock and calls handoff between its operations lets another
// writer in (a Predict waits for a chunk of a clear, not for the whole clear).
func TestWlockHandoffLetsWritersIn(t *testing.T) {
	var l wlock
	writes := 0
	handoffUntil(t, &l, "the second writer", func() {
		l.Lock()
		writes++
		l.Unlock()
	})
	if writes != 1 {
		t.Errorf("%d writes, want 1", writes)
	}
}
