package kvevents_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/kvroute/kvroute/proto"
	ingest "github.com/kvroute/kvroute/upstream/kvevents"
)

// ringReplayer replays from an in-memory ring, like an engine's replay ROUTER; fail
// makes the next replay error after sending failAfter batches.
type ringReplayer struct {
	ring      []uint64 // seqs, oldest first
	fail      bool
	failAfter int
}

func (r *ringReplayer) Replay(_ context.Context, from uint64, fn func(*proto.Batch) bool) error {
	sent := 0
	for _, s := range r.ring {
		if s < from {
			continue
		}
		if r.fail && sent == r.failAfter {
			r.fail = false
			return errors.New("replay connection lost")
		}
		if !fn(&proto.Batch{Seq: s, TS: float64(s)}) {
			return nil
		}
		sent++
	}
	return nil
}

// logSink records "apply:N" and "reset:R" and checks the Tracker's invariants: between
// two resets, applied seqs are consecutive (counting skipped ones).
type logSink struct {
	t       *testing.T
	log     []string
	last    uint64
	inEpoch bool
}

func (s *logSink) Apply(_ proto.WorkerKey, _ string, b *proto.Batch) {
	if s.inEpoch && b.Seq != s.last+1 {
		s.t.Fatalf("applied seq %d after %d without a reset in between (log %v)", b.Seq, s.last, s.log)
	}
	s.inEpoch, s.last = true, b.Seq
	s.log = append(s.log, "apply:"+itoa(b.Seq))
}

// skipped tells the sink that the tracker skipped seq (undecodable): the next applied
// seq may follow it.
func (s *logSink) skipped(seq uint64) {
	if s.inEpoch {
		s.last = seq
	}
}

func (s *logSink) Reset(_ proto.WorkerKey, reason string) {
	s.inEpoch = false
	s.log = append(s.log, "reset:"+reason)
}

func itoa(n uint64) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}

func TestTrackerTable(t *testing.T) {
	type step struct {
		seq  uint64 // live batch
		lost bool   // undecodable
		rst  bool   // explicit Reset("upstream")
		cu   bool   // CatchUp (the feed subscribed)
		end  bool   // EndCatchUp (the feed's session ended)
		// other: the live batch is not the one the ring holds for its seq (another
		// engine's, after a restart); a live batch is otherwise identical to it.
		other bool
	}
	for _, c := range []struct {
		name   string
		ring   []uint64
		nilRep bool
		fail   int // replay fails after this many batches; -1 never
		start  bool
		steps  []step
		want   []string
	}{
		{name: "in order", ring: []uint64{0, 1, 2}, fail: -1, start: true,
			steps: []step{{seq: 0}, {seq: 1}, {seq: 2}},
			want:  []string{"reset:start", "apply:0", "apply:1", "apply:2"}},
		{name: "gap replayed", ring: []uint64{0, 1, 2, 3, 4}, fail: -1, start: true,
			steps: []step{{seq: 0}, {seq: 3}, {seq: 4}},
			want:  []string{"reset:start", "apply:0", "apply:1", "apply:2", "apply:3", "apply:4"}},
		{name: "gap, replay fails midway", ring: []uint64{0, 1, 2, 3, 4}, fail: 1, start: true,
			steps: []step{{seq: 0}, {seq: 4}},
			want:  []string{"reset:start", "apply:0", "apply:1", "reset:gap", "apply:4"}},
		{name: "gap, no replayer", nilRep: true, fail: -1, start: true,
			steps: []step{{seq: 0}, {seq: 2}},
			want:  []string{"reset:start", "apply:0", "reset:gap", "apply:2"}},
		{name: "start: replay ends before the live seq", ring: []uint64{0, 1}, fail: -1, start: true,
			steps: []step{{seq: 5}, {seq: 6}, {seq: 2}},
			want: []string{"reset:start", "apply:0", "apply:1", "reset:gap", "apply:5", "apply:6",
				"reset:restart", "apply:0", "apply:1", "apply:2"}},
		{name: "start: buffer starts late, no second reset", ring: []uint64{3, 4}, fail: -1, start: true,
			steps: []step{{seq: 5}},
			want:  []string{"reset:start", "apply:3", "apply:4", "apply:5"}},
		{name: "gap: buffer starts past the gap", ring: []uint64{4, 5}, fail: -1, start: true,
			steps: []step{{seq: 0}, {seq: 6}},
			want:  []string{"reset:start", "apply:0", "reset:gap", "apply:4", "apply:5", "apply:6"}},
		{name: "undecodable batch skipped, no reset", ring: []uint64{0, 1, 2}, fail: -1, start: true,
			steps: []step{{seq: 0}, {seq: 1, lost: true}, {seq: 2}},
			want:  []string{"reset:start", "apply:0", "apply:2"}},
		{name: "undecodable batches in a row", nilRep: true, fail: -1, start: true,
			steps: []step{{seq: 0}, {seq: 1, lost: true}, {seq: 2, lost: true}, {seq: 3}},
			want:  []string{"reset:start", "apply:0", "apply:3"}},
		{name: "undecodable batch after a gap: replayed up to it", ring: []uint64{0, 1, 2, 3}, fail: -1, start: true,
			steps: []step{{seq: 0}, {seq: 3, lost: true}, {seq: 4}},
			want:  []string{"reset:start", "apply:0", "apply:1", "apply:2", "apply:4"}},
		{name: "undecodable batch after a gap, no replayer", nilRep: true, fail: -1, start: true,
			steps: []step{{seq: 0}, {seq: 3, lost: true}, {seq: 4}},
			want:  []string{"reset:start", "apply:0", "reset:gap", "apply:4"}},
		{name: "undecodable first batch: start reset and replay", ring: []uint64{0, 1}, fail: -1, start: true,
			steps: []step{{seq: 2, lost: true}, {seq: 3}},
			want:  []string{"reset:start", "apply:0", "apply:1", "apply:3"}},
		{name: "undecodable batch with a lower seq: restart", nilRep: true, fail: -1, start: true,
			steps: []step{{seq: 5}, {seq: 0, lost: true}, {seq: 1}},
			want:  []string{"reset:start", "apply:5", "reset:restart", "apply:1"}},
		{name: "explicit reset then any seq, no start reset", nilRep: true, fail: -1,
			steps: []step{{seq: 7}, {rst: true}, {seq: 3}, {seq: 4}},
			want:  []string{"apply:7", "reset:upstream", "apply:3", "apply:4"}},
		{name: "consumer without start reset accepts the first seq", nilRep: true, fail: -1,
			steps: []step{{seq: 42}, {seq: 43}},
			want:  []string{"apply:42", "apply:43"}},
		// Catch-up at connect (the feed subscribed before any live batch).
		{name: "catch-up applies the buffer; live duplicates dropped", ring: []uint64{0, 1, 2}, fail: -1, start: true,
			steps: []step{{cu: true}, {seq: 1}, {seq: 2}, {seq: 3}},
			want:  []string{"reset:start", "apply:0", "apply:1", "apply:2", "apply:3"}},
		{name: "catch-up, then a gap", ring: []uint64{0, 1, 2, 3, 4}, fail: -1, start: true,
			steps: []step{{cu: true}, {seq: 6}},
			want:  []string{"reset:start", "apply:0", "apply:1", "apply:2", "apply:3", "apply:4", "reset:gap", "apply:6"}},
		{name: "catch-up, empty buffer: first live batch without a second reset", fail: -1, start: true,
			steps: []step{{cu: true}, {seq: 0}, {seq: 1}},
			want:  []string{"reset:start", "apply:0", "apply:1"}},
		{name: "catch-up fails: first live batch replays 0..seq-1, no second reset", ring: []uint64{0, 1, 2}, fail: 0, start: true,
			steps: []step{{cu: true}, {seq: 2}},
			want:  []string{"reset:start", "apply:0", "apply:1", "apply:2"}},
		{name: "catch-up fails, again on reconnect: one start reset", ring: []uint64{0, 1}, fail: 0, start: true,
			steps: []step{{cu: true}, {end: true}, {cu: true}, {seq: 2}},
			want:  []string{"reset:start", "apply:0", "apply:1", "apply:2"}},
		{name: "catch-up fails midway: tracking from what it applied", ring: []uint64{0, 1, 2, 3}, fail: 2, start: true,
			steps: []step{{cu: true}, {seq: 3}},
			want:  []string{"reset:start", "apply:0", "apply:1", "apply:2", "apply:3"}},
		{name: "catch-up, buffer starts late", ring: []uint64{3, 4}, fail: -1, start: true,
			steps: []step{{cu: true}, {seq: 4}, {seq: 5}},
			want:  []string{"reset:start", "apply:3", "apply:4", "apply:5"}},
		{name: "catch-up, then a restarted engine's equal seq: restart, not a duplicate", ring: []uint64{0, 1, 2}, fail: -1, start: true,
			steps: []step{{cu: true}, {seq: 1, other: true}},
			want:  []string{"reset:start", "apply:0", "apply:1", "apply:2", "reset:restart", "apply:0", "apply:1"}},
		{name: "a live batch closes the dedupe window", ring: []uint64{0, 1, 2}, fail: -1, start: true,
			steps: []step{{cu: true}, {seq: 3}, {seq: 2}},
			want:  []string{"reset:start", "apply:0", "apply:1", "apply:2", "apply:3", "reset:restart", "apply:0", "apply:1", "apply:2"}},
		{name: "the session's end closes the dedupe window", ring: []uint64{0, 1}, fail: -1, start: true,
			steps: []step{{cu: true}, {end: true}, {seq: 1}},
			want:  []string{"reset:start", "apply:0", "apply:1", "reset:restart", "apply:0", "apply:1"}},
		{name: "an undecodable live batch closes the dedupe window", ring: []uint64{0, 1, 2}, fail: -1, start: true,
			steps: []step{{cu: true}, {seq: 1, lost: true}, {seq: 2}},
			want:  []string{"reset:start", "apply:0", "apply:1", "apply:2", "reset:restart", "apply:0", "apply:2"}},
		{name: "catch-up while tracking does nothing", ring: []uint64{0, 1}, fail: -1, start: true,
			steps: []step{{seq: 0}, {cu: true}, {seq: 1}},
			want:  []string{"reset:start", "apply:0", "apply:1"}},
		{name: "catch-up after an explicit reset does nothing", ring: []uint64{0, 1}, fail: -1, start: true,
			steps: []step{{seq: 0}, {rst: true}, {cu: true}, {seq: 5}},
			want:  []string{"reset:start", "apply:0", "reset:upstream", "apply:5"}},
		{name: "catch-up without ResetOnStart (a NATS consumer) does nothing", ring: []uint64{0, 1}, fail: -1,
			steps: []step{{cu: true}, {seq: 7}},
			want:  []string{"apply:7"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			sink := &logSink{t: t}
			var rp ingest.Replayer
			if !c.nilRep {
				rp = &ringReplayer{ring: c.ring, fail: c.fail >= 0, failAfter: c.fail}
			}
			tr := ingest.NewTracker(w1, sink, ingest.TrackerOptions{ResetOnStart: c.start, Replay: rp})
			for _, s := range c.steps {
				switch {
				case s.rst:
					tr.Reset(ingest.ReasonUpstream)
				case s.cu:
					tr.CatchUp(context.Background())
				case s.end:
					tr.EndCatchUp()
				case s.lost:
					tr.Lost(context.Background(), s.seq, errors.New("bad payload"))
					sink.skipped(s.seq)
				default:
					b := &proto.Batch{Seq: s.seq, TS: float64(s.seq)}
					if s.other {
						b.TS += 1e6
					}
					tr.Batch(context.Background(), b)
				}
			}
			if !slices.Equal(sink.log, c.want) {
				t.Fatalf("log %v\nwant %v", sink.log, c.want)
			}
		})
	}
}

// FuzzTracker drives a Tracker with a simulated engine built from the input: each byte
// publishes a batch (delivered live or dropped), restarts the engine, or makes the next
// replay fail. It checks the invariants: applied seqs are consecutive between resets,
// every delivered live batch is applied, and when nothing was lost for good (every gap
// replayable) no gap reset happens.
func FuzzTracker(f *testing.F) {
	f.Add([]byte{0, 0, 1, 1, 0, 2, 0, 3, 0})
	f.Add([]byte{0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0})
	f.Add([]byte{0, 4, 1, 0, 3, 0})
	f.Fuzz(runTrackerOps)
}

func runTrackerOps(t *testing.T, ops []byte) {
	{
		const ringCap = 4
		rp := &ringReplayer{}
		sink := &logSink{t: t}
		tr := ingest.NewTracker(w1, sink, ingest.TrackerOptions{ResetOnStart: true, Replay: rp})
		var seq uint64
		lostForGood := false
		pendingDrops := 0
		for _, op := range ops {
			switch op % 5 {
			case 0, 2: // publish, delivered
				rp.ring = append(rp.ring, seq)
				if len(rp.ring) > ringCap {
					rp.ring = rp.ring[1:]
				}
				if pendingDrops >= ringCap || rp.fail {
					lostForGood = true
				}
				tr.Batch(context.Background(), &proto.Batch{Seq: seq})
				if got := sink.last; got != seq || !sink.inEpoch {
					t.Fatalf("live seq %d not applied last (last %d, log %v)", seq, got, sink.log)
				}
				seq++
				pendingDrops = 0
			case 1: // publish, dropped from the live stream
				rp.ring = append(rp.ring, seq)
				if len(rp.ring) > ringCap {
					rp.ring = rp.ring[1:]
				}
				seq++
				pendingDrops++
			case 3: // engine restart
				seq, rp.ring = 0, nil
				pendingDrops = 0
			case 4:
				rp.fail, rp.failAfter = true, int(op/5)%3
			}
		}
		if !lostForGood && slices.Contains(sink.log, "reset:"+ingest.ReasonGap) {
			t.Fatalf("gap reset although every gap was replayable: %v", sink.log)
		}
	}
}
