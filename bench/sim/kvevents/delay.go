package kvevents

import (
	"time"
)

// This file delays the PUB stream (kvsim --event-delay, issue #19): every batch keeps
// the timestamp the engine gave it when its blocks changed (the batch's ts, as vLLM
// stamps it) and is sent on the PUB socket only delay later, in order, as a congested
// network or a slow bridge would deliver it. The replay buffer is not delayed: it is the
// engine's own memory, and a subscriber reads it only to fill gaps or catch up.

// delayQueue holds the batches waiting for their send time. Its fields are guarded by
// the Publisher's mu.
type delayQueue struct {
	delay time.Duration
	items []delayedBatch
	wake  chan struct{} // nil until the sender goroutine runs
}

type delayedBatch struct {
	seq  uint64
	buf  []byte
	made time.Time // when the engine published it
}

// hold queues the batch when a delay is set or earlier batches still wait (order is
// kept when the delay is lowered), and reports whether it did. mu must be held.
func (q *delayQueue) hold(seq uint64, buf []byte) bool {
	if q.delay <= 0 && len(q.items) == 0 {
		return false
	}
	q.items = append(q.items, delayedBatch{seq: seq, buf: buf, made: time.Now()})
	q.poke()
	return true
}

// clear drops the waiting batches (an engine restart loses them). mu must be held.
func (q *delayQueue) clear() {
	clear(q.items)
	q.items = q.items[:0]
}

func (q *delayQueue) poke() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// SetDelay makes every batch published from now on, and those still waiting, go out on
// the PUB socket d after the engine published it; 0 sends new batches at once once the
// waiting ones have gone (lowering the delay releases the batches already due at once).
func (p *Publisher) SetDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delayQ.delay = max(d, 0)
	if p.delayQ.wake == nil && d > 0 {
		p.delayQ.wake = make(chan struct{}, 1)
		go p.sendDelayed(p.delayQ.wake)
	}
	p.delayQ.poke()
}

// Delay returns the current delay.
func (p *Publisher) Delay() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.delayQ.delay
}

// sendDelayed sends the queued batches when they are due, until the publisher's context
// ends.
func (p *Publisher) sendDelayed(wake <-chan struct{}) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		p.mu.Lock()
		q := &p.delayQ
		next := time.Duration(-1)
		for len(q.items) > 0 {
			due := time.Until(q.items[0].made.Add(q.delay))
			if due > 0 {
				next = due
				break
			}
			b := q.items[0]
			q.items[0] = delayedBatch{}
			q.items = q.items[1:]
			p.sendLocked(b.seq, b.buf)
		}
		p.mu.Unlock()
		if next < 0 {
			next = time.Hour
		}
		timer.Reset(next)
		select {
		case <-p.parent.Done():
			return
		case <-wake:
		case <-timer.C:
		}
	}
}
