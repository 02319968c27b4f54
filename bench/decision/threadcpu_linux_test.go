package decision

import "golang.org/x/sys/unix"

// threadCPU is the calling thread's CPU time in nanoseconds (CLOCK_THREAD_CPUTIME_ID):
// the time the scheduler ran this thread, without the time other threads or (with the
// kernel's steal accounting) the hypervisor took the core from it; 0 if unavailable.
func threadCPU() int64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts) != nil {
		return 0
	}
	return ts.Nano()
}
