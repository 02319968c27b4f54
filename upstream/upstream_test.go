package upstream

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kvroute/kvroute/proto/prototest/poll"
)

func TestParseModels(t *testing.T) {
	got, err := ParseModels([]byte(`{"object":"list","data":[{"id":"b","object":"model"},{"id":"a"},{"id":""},{"id":"b"}]}`))
	if err != nil || !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("ParseModels = %v, %v; want [a b]", got, err)
	}
	for _, bad := range []string{``, `{"data":{}}`, `<html>`, `{"data":[{"id":3}]}`} {
		if _, err := ParseModels([]byte(bad)); err == nil {
			t.Errorf("ParseModels(%q) accepted", bad)
		}
	}
}

func FuzzParseModels(f *testing.F) {
	f.Add([]byte(`{"object":"list","data":[{"id":"meta-llama/Llama-3.1-8B-Instruct","object":"model","created":1,"owned_by":"vllm","root":"x","parent":null,"max_model_len":8192}]}`))
	f.Add([]byte(`{"data":[]}`))
	// ParseModels must return exactly the distinct non-empty string ids of the data
	// array, sorted, and accept exactly the bodies a generic decode reads as an object
	// whose data (if present and not null) is an array of objects (or nulls) with string
	// (or null, or absent) ids. Bodies with two keys of one object equal under case
	// folding are left out of the comparison: encoding/json applies them in order,
	// a generic map keeps one.
	f.Fuzz(func(t *testing.T, body []byte) {
		models, err := ParseModels(body)
		if err == nil && (slices.Contains(models, "") || !slices.IsSortedFunc(models, func(a, b string) int {
			return cmp.Compare(a, b) - 1 // strictly increasing: sorted, no duplicates
		})) {
			t.Fatalf("ParseModels(%q) = %q: not sorted, duplicates or an empty id", body, models)
		}
		if foldDuplicateKeys(body) {
			return
		}
		want, ok := referenceModels(body)
		if (err == nil) != ok {
			t.Fatalf("ParseModels(%q) err %v, reference accepts %v", body, err, ok)
		}
		if err != nil {
			return
		}
		if !slices.Equal(models, want) {
			t.Fatalf("ParseModels(%q) = %q, want %q", body, models, want)
		}
	})
}

// The wrapper bounds the wait for the first byte after each SetReadDeadline, and only
// that: once a byte has arrived, reads wait as long as the caller's deadline allows.
func TestHeaderTimeoutConn(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := &headerTimeoutConn{Conn: a, firstByte: 50 * time.Millisecond}
	if err := c.SetReadDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	start := time.Now()
	if _, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("first read without data: err = %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("first-byte timeout took %s", d)
	}
	// Next response: the first byte arrives, then a pause longer than firstByte.
	if err := c.SetReadDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	go func() {
		_, _ = b.Write([]byte("H"))
		time.Sleep(200 * time.Millisecond)
		_, _ = b.Write([]byte("TTP"))
	}()
	if n, err := c.Read(buf); n != 1 || err != nil {
		t.Fatalf("read 1: %d, %v", n, err)
	}
	if n, err := c.Read(buf); n != 3 || err != nil {
		t.Fatalf("read after a pause longer than firstByte: %d, %v (the body phase must not be bounded)", n, err)
	}
}

// A non-streaming request's prefill stops counting after the estimate; a streamed
// one's at its first token, which also teaches the estimate.
func TestLoadPrefillAccounting(t *testing.T) {
	w := &Worker{ID: "w"}
	w.prefillNsPerToken.Store(int64(time.Microsecond))
	l := w.Begin(1000, 64, time.Minute)
	if w.PendingPrefillTokens() != 1000 || w.ActiveBlocks() != 64 || w.InFlight() != 1 {
		t.Fatalf("after Begin: pending %d blocks %d in flight %d", w.PendingPrefillTokens(), w.ActiveBlocks(), w.InFlight())
	}
	l.EstimateFirstToken() // 1000 tokens x 1 us
	poll.CheckFor(t, 5*time.Second, "the estimated prefill to end", func() bool { return w.PendingPrefillTokens() == 0 })
	l.End()
	l.End() // idempotent
	if w.ActiveBlocks() != 0 || w.InFlight() != 0 || w.loads.len() != 0 {
		t.Fatalf("after End: blocks %d in flight %d entries %d", w.ActiveBlocks(), w.InFlight(), w.loads.len())
	}

	s := w.Begin(640, 40, time.Minute)
	time.Sleep(20 * time.Millisecond)
	s.FirstToken()
	if w.PendingPrefillTokens() != 0 {
		t.Fatalf("pending %d after the first token", w.PendingPrefillTokens())
	}
	if got := w.PrefillNsPerToken(); got <= int64(time.Microsecond) {
		t.Errorf("estimate %d ns/token did not learn from a 20 ms prefill of 640 tokens", got)
	}
	s.End()
	// Expiry ends loads whose completion was lost.
	lost := w.Begin(10, 1, time.Millisecond)
	_ = lost
	if n := w.expireLoads(time.Now().Add(time.Second)); n != 1 || w.InFlight() != 0 {
		t.Fatalf("expired %d, in flight %d", n, w.InFlight())
	}
}

// The estimated first tokens settle in time order whatever the order they were made in,
// a load ended before its estimate leaves the estimates (and is not settled), and a
// settle takes exactly the estimates due: pending prefill matches a direct count at
// every step.
func TestEstimatesSettleInOrder(t *testing.T) {
	w := &Worker{ID: "w"}
	w.prefillNsPerToken.Store(int64(time.Millisecond)) // estimates far apart, whatever the clock does
	rng := rand.New(rand.NewPCG(1, 2))
	type entry struct {
		l     *Load
		at    int64
		ended bool
	}
	var loads []*entry
	for range 300 {
		l := w.Begin(int64(1+rng.IntN(1000)), 1, time.Hour)
		e := &entry{l: l}
		if rng.IntN(4) > 0 {
			l.EstimateFirstToken()
			e.at = l.estimateAt
		}
		loads = append(loads, e)
	}
	for _, e := range loads {
		if rng.IntN(5) == 0 {
			e.l.End()
			e.ended = true
		}
	}
	want := func(now int64) (pending int64) {
		for _, e := range loads {
			if !e.ended && (e.at == 0 || e.at > now) {
				pending += e.l.prefill
			}
		}
		return pending
	}
	start := time.Now().UnixNano()
	for step := int64(0); step <= 1100; step += 50 {
		now := start + step*int64(time.Millisecond)
		w.settleEstimates(now)
		if got, exp := w.pendingPrefill.Load(), want(now); got != exp {
			t.Fatalf("at +%d ms: pending prefill %d, want %d", step, got, exp)
		}
		if n := w.nextEstimate.Load(); n != 0 && n <= now {
			t.Fatalf("at +%d ms: next estimate %d is not after now %d", step, n, now)
		}
	}
	for _, e := range loads {
		e.l.End()
	}
	if len(w.estimates) != 0 || w.loads.len() != 0 || w.InFlight() != 0 {
		t.Fatalf("after every End: %d estimates, %d loads, %d in flight", len(w.estimates), w.loads.len(), w.InFlight())
	}
}

// BeginNotify's callback runs once per load, after the counters dropped it, whether the
// load was ended or expired.
func TestLoadEndNotifies(t *testing.T) {
	w := &Worker{ID: "w"}
	var calls, inFlightSeen []int64
	ended := func() { calls = append(calls, 1); inFlightSeen = append(inFlightSeen, w.InFlight()) }
	l := w.BeginNotify(10, 1, time.Minute, ended)
	l.End()
	l.End() // idempotent: no second call
	w.BeginNotify(10, 1, time.Millisecond, ended)
	if n := w.expireLoads(time.Now().Add(time.Second)); n != 1 {
		t.Fatalf("expired %d loads, want 1", n)
	}
	if len(calls) != 2 || inFlightSeen[0] != 0 || inFlightSeen[1] != 0 {
		t.Errorf("ended called %d times (want 2), in flight seen %v (want 0s)", len(calls), inFlightSeen)
	}
}

// referenceModels decodes a /v1/models body generically and collects its ids the slow
// way; ok is false when encoding/json would refuse the typed decode.
func referenceModels(body []byte) (ids []string, ok bool) {
	var v any
	if json.Unmarshal(body, &v) != nil {
		return nil, false
	}
	if v == nil {
		return []string{}, true // null decodes into the struct as nothing
	}
	obj, isObj := v.(map[string]any)
	if !isObj {
		return nil, false
	}
	seen := map[string]bool{}
	for k, d := range obj {
		if !strings.EqualFold(k, "data") || d == nil {
			continue
		}
		arr, isArr := d.([]any)
		if !isArr {
			return nil, false
		}
		for _, e := range arr {
			if e == nil {
				continue
			}
			m, isMap := e.(map[string]any)
			if !isMap {
				return nil, false
			}
			for mk, id := range m {
				if !strings.EqualFold(mk, "id") || id == nil {
					continue
				}
				s, isStr := id.(string)
				if !isStr {
					return nil, false
				}
				if s != "" {
					seen[s] = true
				}
			}
		}
	}
	ids = []string{}
	for s := range seen {
		ids = append(ids, s)
	}
	slices.Sort(ids)
	return ids, true
}

// foldDuplicateKeys reports whether an object anywhere in the JSON body has two keys equal
// under case folding (false for invalid JSON).
func foldDuplicateKeys(body []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		obj  bool
		key  bool // obj: the next string token is a key
		seen map[string]bool
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		isKey := top != nil && top.obj && top.key
		switch v := tok.(type) {
		case json.Delim:
			switch v {
			case '{':
				if top != nil && top.obj {
					top.key = true
				}
				stack = append(stack, &frame{obj: true, key: true, seen: map[string]bool{}})
			case '[':
				if top != nil && top.obj {
					top.key = true
				}
				stack = append(stack, &frame{})
			default:
				stack = stack[:len(stack)-1]
			}
			continue
		case string:
			if isKey {
				k := strings.ToLower(v)
				if top.seen[k] {
					return true
				}
				top.seen[k] = true
				top.key = false
				continue
			}
		}
		if top != nil && top.obj {
			top.key = true
		}
	}
}
