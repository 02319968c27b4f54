package indexer

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// wlock is the index's reader/writer lock: writer-preferring, and a reader that finds a
// writer inside spins, then yields its P, and parks only after yieldFor, because a
// parked reader is woken through the scheduler, which took 10 to 30 us on this VM and
// was Match's whole tail next to an event feed (doc.go, "Match next to an event feed").
//
//   - RLock adds itself to the reader count; if a writer holds or wants the lock, it
//     backs out and waits (counted in waiting) until the writer bit is clear.
//   - Lock takes writers (a sync.Mutex: ingest may park), sets the writer bit, so no new
//     reader enters, and waits for the readers inside to leave: a stream of readers
//     cannot keep a writer out.
//   - handoff, called by a writer between block operations, lets the waiting readers in
//     and takes the lock back after them, still holding writers: a writer cannot keep
//     readers out either. When another writer waits (a Predict from a request, another
//     worker's batch), handoff releases the lock whole instead, as the sync.RWMutex did, so
//     a long clear does not hold the other writers up to its end.
//   - A reader that waited yieldFor parks on the wake channel, which the writer closes
//     (and replaces) when it leaves or hands off: the writer never waits for a parked
//     reader to be scheduled.
//
// sync.RWMutex gives the same fairness but parks its readers at once, and so does
// xsync's RBMutex, the library lock looked at (its readers fall back to a sync.RWMutex
// while a writer holds it).
type wlock struct {
	state   atomic.Int32 // readers inside, plus wBit while a writer holds or wants the lock
	waiting atomic.Int32 // readers waiting for a writer to leave, parked ones included
	parked  atomic.Int32 // readers parked on wake
	wwait   atomic.Int32 // writers waiting in Lock
	wake    atomic.Pointer[chan struct{}]
	writers sync.Mutex
}

const wBit = 1 << 30

// RLock takes the lock for reading.
func (l *wlock) RLock() {
	if l.state.Add(1)&wBit == 0 {
		return
	}
	l.state.Add(-1)
	l.waiting.Add(1)
	for {
		var b backoff
		for !b.tired {
			if s := l.state.Load(); s&wBit == 0 && l.state.CompareAndSwap(s, s+1) {
				l.waiting.Add(-1)
				return
			}
			b.wait()
		}
		// A long write (a clear, a Load): park until the writer leaves or hands off. The
		// writer clears its bit before it looks at parked, and this reader counts
		// itself before it looks at the bit: one of the two sees the other.
		ch := l.wake.Load()
		l.parked.Add(1)
		if l.state.Load()&wBit != 0 {
			<-*ch
		}
		l.parked.Add(-1)
	}
}

// RUnlock releases a read lock.
func (l *wlock) RUnlock() {
	if l.state.Add(-1) < 0 {
		panic("indexer: RUnlock of an unlocked wlock")
	}
}

// Lock takes the lock for writing.
func (l *wlock) Lock() {
	l.wwait.Add(1)
	l.writers.Lock()
	l.wwait.Add(-1)
	if l.wake.Load() == nil {
		ch := make(chan struct{})
		l.wake.Store(&ch)
	}
	l.state.Add(wBit)
	l.drain()
}

// Unlock releases the write lock.
func (l *wlock) Unlock() {
	if l.state.Add(-wBit)&wBit != 0 {
		panic("indexer: Unlock of a wlock not locked for writing")
	}
	l.wakeParked()
	l.writers.Unlock()
}

// drain waits for the readers inside to leave; the writer bit is set. A long read (a
// Dump) makes the writer sleep.
func (l *wlock) drain() {
	var b backoff
	sleep := 10 * time.Microsecond
	for l.state.Load() != wBit {
		if !b.tired {
			b.wait()
			continue
		}
		time.Sleep(sleep)
		sleep = min(2*sleep, time.Millisecond)
	}
}

// handoffKind is what handoff did.
type handoffKind uint8

const (
	noHandoff      handoffKind = iota
	handedToReader             // readers came and went: nothing changed under the writer
	handedToWriter             // another writer held the lock: anything may have changed
)

// handoff lets a writer waiting in Lock have the lock, or else the readers waiting for
// the writer in, and takes the write lock back once they have left; it reports which.
// The caller holds the write lock.
func (l *wlock) handoff() handoffKind {
	if l.wwait.Load() > 0 {
		l.Unlock()
		l.Lock()
		return handedToWriter
	}
	if l.waiting.Load() == 0 {
		return noHandoff
	}
	l.state.Add(-wBit)
	l.wakeParked()
	// The waiting readers that are running enter within a few loads; one whose goroutine
	// is not running enters at the writer's next handoff (yielding here could cost a
	// scheduler time slice).
	for i := 0; i < handoffLoads && l.waiting.Load() > 0; i++ {
	}
	l.state.Add(wBit)
	l.drain()
	return handedToReader
}

// wakeParked wakes the parked readers, if any; the writer bit is clear and the caller
// holds writers.
func (l *wlock) wakeParked() {
	if l.parked.Load() == 0 {
		return
	}
	ch := make(chan struct{})
	close(*l.wake.Swap(&ch))
}

// Backoff of a waiting reader or writer: spin on the atomic for spinLoads loads, then
// yield the P (runtime.Gosched: the goroutine holding the lock may be waiting for one)
// until yieldFor has passed; then the waiter is tired and parks (reader) or sleeps
// (writer).
const (
	spinLoads    = 64
	handoffLoads = 256
	yieldFor     = 50 * time.Microsecond
)

type backoff struct {
	spins int
	start time.Time
	tired bool // yieldFor has passed since the spinning ended
}

func (b *backoff) wait() {
	b.spins++
	switch {
	case b.spins < spinLoads:
		return
	case b.spins == spinLoads:
		b.start = time.Now()
	case b.spins&7 == 0 && !b.tired:
		b.tired = time.Since(b.start) >= yieldFor
	}
	runtime.Gosched()
}
