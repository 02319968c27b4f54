package proxy

import (
	"runtime"
	"syscall"
	"time"
)

// prSetTimerSlack is prctl's PR_SET_TIMERSLACK (linux/prctl.h).
const prSetTimerSlack = 29

// pacer sleeps until a deadline with a precision of tens of microseconds. Go's
// time.Sleep overshoots short sleeps by up to a millisecond when the process is idle
// (the runtime's network poller waits in whole milliseconds), which would add the
// generator's own lateness to every latency measured from the schedule. The pacer locks
// its goroutine to a thread, sets that thread's timer slack to 1 µs and sleeps with
// nanosleep(2).
type pacer struct{}

// newPacer locks the calling goroutine to its thread; call release when done.
func newPacer() pacer {
	runtime.LockOSThread()
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetTimerSlack, 1000, 0)
	return pacer{}
}

// sleepUntil returns at t or shortly after.
func (pacer) sleepUntil(t time.Time) {
	for {
		d := time.Until(t)
		if d <= 0 {
			return
		}
		ts := syscall.NsecToTimespec(int64(d))
		_ = syscall.Nanosleep(&ts, nil) // EINTR: loop and sleep the rest
	}
}

func (pacer) release() { runtime.UnlockOSThread() }
