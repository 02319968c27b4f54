package sim

import (
	"strings"
	"testing"
	"time"

	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// A delayed feed holds the batches back (published and numbered, not sent), keeps the
// engine's timestamp of the change, and releases them in order when the delay is
// lowered; bad delays are refused.
func TestFaultEventDelay(t *testing.T) {
	f := startFleet(t, 1, nil)
	w := f.Workers()[0]
	sub := subscribe(t, w)
	if code, out := setFault(t, w, `{"event_delay_ms": 3600000}`); code != 400 || !strings.Contains(out, "event_delay_ms must be in [0, 600000], got 3600000") {
		t.Fatalf("an hour's delay: %d %s, want 400 naming the bound", code, out)
	}
	if code, out := setFault(t, w, `{"event_delay_ms": 600000}`); code != 200 || !strings.Contains(out, `"event_delay_ms":600000`) {
		t.Fatalf("set delay: %d %s", code, out)
	}
	before := time.Now()
	complete(t, w, map[string]any{"prompt": words(0, 40), "max_tokens": 1})
	complete(t, w, map[string]any{"prompt": words(200, 40), "max_tokens": 1})
	poll.CheckFor(t, 10*time.Second, "two batches published", func() bool { return w.Stats().NextSeq >= 2 })
	if st := w.Stats(); st.EventBatchesSent != 0 {
		t.Fatalf("%d batches sent while delayed by 10 min", st.EventBatchesSent)
	}
	released := time.Now()
	if code, out := setFault(t, w, `{"event_delay_ms": 0}`); code != 200 {
		t.Fatalf("lift delay: %d %s", code, out)
	}
	for want := uint64(0); want < 2; want++ {
		b := sub.next()
		ts := time.Unix(0, int64(b.TS*1e9))
		if b.Seq != want || ts.Before(before.Add(-time.Second)) || !ts.Before(released) {
			t.Fatalf("batch seq %d ts %v, want seq %d stamped between %v and %v (the change, not the send)", b.Seq, ts, want, before, released)
		}
	}
	// Undelayed again: the next batch goes out at once.
	complete(t, w, map[string]any{"prompt": words(400, 40), "max_tokens": 1})
	if b := sub.next(); b.Seq != 2 {
		t.Fatalf("seq %d after the delay, want 2", b.Seq)
	}
}
