package indexer

import (
	"runtime"
	"time"
)

// Locking. Go's RWMutex parks a goroutine that finds the lock taken; waking it again
// takes the scheduler, and on a virtual machine whose other vCPU went idle, a wake-up
// of the host thread: tens of microseconds, far longer than a writer's chunk of
// chunkOps block operations (BenchmarkMatchPacedIngest: Match p99 15 to 76 us next to a
// 1M ops/s feed against under 2 us without it, on the same index; with parked readers,
// releasing every 4 operations instead of 16 changed nothing). So a reader that finds a writer
// spins for a while (yielding its P, so that on one P the writer runs) instead of
// parking, and says so in waiters; a writer releases the lock between chunks only when
// someone waits (waiters > 0), and then lets the waiters in before it takes the lock
// again, spinning for it too when readers took it meanwhile (they hold it for one
// Match). A writer that finds the lock taken when it starts parks at once.

// readSpin is how long a reader spins for the lock before it parks: many of a writer's
// chunks (a chunk takes about a microsecond) and one preempted holder's hiccup, well
// below a scheduling quantum.
const readSpin = 50 * time.Microsecond

// rlock takes mu for reading, spinning before it parks (see above).
func (ix *Index) rlock() {
	if ix.mu.TryRLock() {
		return
	}
	ix.c.readWaits.Add(1)
	ix.waiters.Add(1)
	defer ix.waiters.Add(-1)
	var deadline time.Time
	for i := 0; ; i++ {
		runtime.Gosched()
		if ix.mu.TryRLock() {
			return
		}
		// The clock is read only every few tries: a try costs far less than the
		// spin's bound.
		if i&15 == 15 {
			now := time.Now()
			if deadline.IsZero() {
				deadline = now.Add(readSpin)
			} else if now.After(deadline) {
				break
			}
		}
	}
	ix.c.readParks.Add(1)
	ix.mu.RLock()
}

// lock takes mu for writing; a writer that has to wait counts in waiters, so that a
// writer holding the lock for a long batch lets it go between chunks.
func (ix *Index) lock() {
	if ix.mu.TryLock() {
		return
	}
	ix.waiters.Add(1)
	ix.mu.Lock()
	ix.waiters.Add(-1)
}

// handOff releases mu (held for writing) for the goroutines waiting for it, when there
// are any, and takes it again. mu must be held for writing.
func (ix *Index) handOff() {
	if ix.waiters.Load() == 0 {
		return
	}
	ix.c.handOffs.Add(1)
	ix.mu.Unlock()
	// Let the waiters in: a spinning reader needs a moment to see the lock free, and a
	// parked goroutine to be woken. Bounded: a waiter that does not come (it gave up
	// spinning and parked behind this writer's next Lock, or has no CPU) is let in by the
	// next hand-off or the end of the batch.
	for i := 0; i < 64 && ix.waiters.Load() > 0; i++ {
		runtime.Gosched()
	}
	// A reader holds the lock for one Match, a microsecond or two: spin rather than
	// park, since a parked writer waits for a wake-up far longer than that and falls
	// behind its feed.
	var deadline time.Time
	for i := 0; ; i++ {
		if ix.mu.TryLock() {
			return
		}
		runtime.Gosched()
		if i&15 == 15 {
			now := time.Now()
			if deadline.IsZero() {
				deadline = now.Add(readSpin)
			} else if now.After(deadline) {
				break
			}
		}
	}
	ix.lock()
}
