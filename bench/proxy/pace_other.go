//go:build !linux

package proxy

import "time"

// pacer sleeps until a deadline; outside Linux it is time.Sleep, whose overshoot (up to
// a millisecond) shows up in the reported dispatch lateness.
type pacer struct{}

func newPacer() pacer { return pacer{} }

func (pacer) sleepUntil(t time.Time) { time.Sleep(time.Until(t)) }

func (pacer) release() {}
