package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// LoadOptions configure one open-loop run of the load generator against one target.
type LoadOptions struct {
	// Targets are where the requests go, each a list of base URLs (scheme, host and
	// port) used in turn. Request i goes to target i mod len(Targets), so several targets
	// measured together see the same moments of the machine. At least one, none empty.
	Targets [][]string
	// Path is the request path. Default "/v1/chat/completions".
	Path string
	// Body is the request body, sent as application/json with POST.
	Body []byte
	// Stream says the answer is an SSE stream: its first chunk is timed too.
	Stream bool
	// Expect is the exact body of a correct answer; a different body is an error. Nil
	// accepts any body with status 200.
	Expect []byte
	// Rate is the offered load per target in requests per second (> 0). Arrivals are
	// evenly spaced: the generator sends Rate*len(Targets) requests per second in all.
	Rate float64
	// Duration is the length of the arrival schedule (> 0): Rate*Duration requests per
	// target.
	Duration time.Duration
	// MaxInFlight caps the open requests; an arrival above the cap is not sent and counts
	// as an "overload" error. Default 4096.
	MaxInFlight int
	// Timeout bounds each request from its scheduled time. Default 10s.
	Timeout time.Duration
}

// Sample is the measurement of one scheduled request. Latencies are measured from the
// time the schedule says the request should have been sent, not from when it was sent,
// so a generator or target that falls behind shows up in them (no coordinated
// omission).
type Sample struct {
	// Target is the index in LoadOptions.Targets of the request's target.
	Target int
	// Lateness is how late the generator actually sent the request.
	Lateness time.Duration
	// First is the time to the first body byte of a stream; for a non-streaming answer
	// it equals End.
	First time.Duration
	// End is the time to the last byte of the answer.
	End time.Duration
	// Err is why the request failed; "" when it succeeded.
	Err string
}

// LoadResult is the outcome of one run.
type LoadResult struct {
	// Samples holds one entry per scheduled request, in schedule order.
	Samples []Sample
	// Wall is the time from the first scheduled arrival to the last answer.
	Wall time.Duration
}

// OK returns the number of successful requests.
func (r *LoadResult) OK() int {
	n := 0
	for i := range r.Samples {
		if r.Samples[i].Err == "" {
			n++
		}
	}
	return n
}

// Errors returns the failed requests counted by error text.
func (r *LoadResult) Errors() map[string]int {
	m := map[string]int{}
	for i := range r.Samples {
		if e := r.Samples[i].Err; e != "" {
			m[e]++
		}
	}
	return m
}

func (o *LoadOptions) defaults() error {
	if len(o.Targets) == 0 {
		return errors.New("load: no target")
	}
	for i, t := range o.Targets {
		if len(t) == 0 {
			return fmt.Errorf("load: target %d has no URL", i)
		}
	}
	if o.Rate <= 0 || o.Duration <= 0 {
		return fmt.Errorf("load: rate %v and duration %v must be positive", o.Rate, o.Duration)
	}
	if o.Path == "" {
		o.Path = "/v1/chat/completions"
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 4096
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	return nil
}

// loadTarget is one base URL with its connection pool.
type loadTarget struct {
	uri string
	hc  *fasthttp.HostClient
}

var readBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// RunLoad offers o.Rate requests per second for o.Duration, each sent at its scheduled
// time whatever the state of the earlier ones (open loop), and waits for the answers.
// It returns an error only when the options are invalid or ctx ends; failed requests are
// recorded in their samples.
func RunLoad(ctx context.Context, o LoadOptions) (*LoadResult, error) {
	targets, err := o.prepare()
	if err != nil {
		return nil, err
	}
	defer closeLoadTargets(targets)

	nt := len(targets)
	n := int(o.Rate*o.Duration.Seconds()) * nt
	if n < nt {
		n = nt
	}
	interval := time.Duration(float64(time.Second) / (o.Rate * float64(nt)))
	res := &LoadResult{Samples: make([]Sample, n)}
	var (
		wg       sync.WaitGroup
		inFlight atomic.Int64
	)
	p := newPacer()
	start := time.Now().Add(time.Millisecond)
	for i := 0; i < n; i++ {
		at := start.Add(time.Duration(i) * interval)
		p.sleepUntil(at)
		if ctx.Err() != nil {
			break
		}
		s := &res.Samples[i]
		s.Target = i % nt
		if inFlight.Load() >= int64(o.MaxInFlight) {
			s.Err = "overload: too many requests in flight"
			continue
		}
		inFlight.Add(1)
		wg.Add(1)
		go func(s *Sample, t loadTarget, at time.Time) {
			defer wg.Done()
			defer inFlight.Add(-1)
			do(s, t, &o, at)
		}(s, targets[s.Target][(i/nt)%len(targets[s.Target])], at)
	}
	p.release()
	// Each request should end by its deadline, o.Timeout after its schedule; a read
	// that ignores it must not hang the benchmark.
	waited := make(chan struct{})
	go func() { wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(time.Until(start.Add(o.Duration + o.Timeout + 5*time.Second))):
		return nil, fmt.Errorf("load: %d requests still open %v after their deadline", inFlight.Load(), 5*time.Second)
	}
	res.Wall = time.Since(start)
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("load: %w", err)
	}
	return res, nil
}

// prepare applies the defaults and builds a connection pool per base URL of o.Targets.
func (o *LoadOptions) prepare() ([][]loadTarget, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	targets := make([][]loadTarget, len(o.Targets))
	for i, urls := range o.Targets {
		for _, raw := range urls {
			u, err := url.Parse(raw)
			if err != nil || u.Host == "" {
				return nil, fmt.Errorf("load: target url %q: bad url", raw)
			}
			targets[i] = append(targets[i], loadTarget{uri: "http://" + u.Host + o.Path, hc: &fasthttp.HostClient{
				Addr:                          u.Host,
				MaxConns:                      o.MaxInFlight,
				MaxIdleConnDuration:           time.Minute,
				StreamResponseBody:            o.Stream,
				DisableHeaderNamesNormalizing: true,
				NoDefaultUserAgentHeader:      true,
			}})
		}
	}
	return targets, nil
}

func closeLoadTargets(targets [][]loadTarget) {
	for _, ts := range targets {
		for _, t := range ts {
			t.hc.CloseIdleConnections()
		}
	}
}

// RunClosed is the closed-loop counterpart of RunLoad, the way wrk -c measures a peak:
// conns clients each send a request as soon as their previous answer has ended, for
// o.Duration (o.Rate is ignored; requests go to the targets in turn as in RunLoad).
// Latencies are measured from each request's actual send time, so Lateness is zero; the
// throughput is the successful samples over Wall. Answers are checked as in RunLoad.
func RunClosed(ctx context.Context, o LoadOptions, conns int) (*LoadResult, error) {
	if conns <= 0 {
		return nil, fmt.Errorf("load: %d connections: want at least one", conns)
	}
	o.Rate = 1 // not used; defaults checks it
	targets, err := o.prepare()
	if err != nil {
		return nil, err
	}
	defer closeLoadTargets(targets)

	nt := len(targets)
	start := time.Now()
	end := start.Add(o.Duration)
	per := make([][]Sample, conns)
	var (
		wg   sync.WaitGroup
		next atomic.Int64
	)
	for c := range per {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for ctx.Err() == nil {
				at := time.Now()
				if !at.Before(end) {
					return
				}
				i := int(next.Add(1) - 1)
				s := Sample{Target: i % nt}
				do(&s, targets[s.Target][(i/nt)%len(targets[s.Target])], &o, at)
				s.Lateness = 0
				per[c] = append(per[c], s)
			}
		}(c)
	}
	wg.Wait()
	res := &LoadResult{Wall: time.Since(start)}
	for _, ss := range per {
		res.Samples = append(res.Samples, ss...)
	}
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("load: %w", err)
	}
	return res, nil
}

// do sends one request and fills s.
func do(s *Sample, t loadTarget, o *LoadOptions, at time.Time) {
	s.Lateness = time.Since(at)
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(t.uri)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType("application/json")
	req.SetBodyRaw(o.Body)
	if err := t.hc.DoDeadline(req, resp, at.Add(o.Timeout)); err != nil {
		s.Err = "request: " + err.Error()
		return
	}
	defer func() { _ = resp.CloseBodyStream() }()
	if code := resp.StatusCode(); code != fasthttp.StatusOK {
		s.Err = fmt.Sprintf("status %d", code)
		return
	}
	bs := resp.BodyStream()
	if bs == nil {
		s.End = time.Since(at)
		s.First = s.End
		if o.Expect != nil && !bytes.Equal(resp.Body(), o.Expect) {
			s.Err = "unexpected body"
		}
		return
	}
	bufp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bufp)
	buf := *bufp
	got := 0
	for {
		k, err := bs.Read(buf)
		if k > 0 {
			if got == 0 {
				s.First = time.Since(at)
			}
			if o.Expect != nil && (got+k > len(o.Expect) || !bytes.Equal(buf[:k], o.Expect[got:got+k])) {
				s.Err = "unexpected body"
				return
			}
			got += k
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.Err = "read body: " + err.Error()
			return
		}
	}
	s.End = time.Since(at)
	if got == 0 {
		s.First = s.End
	}
	if o.Expect != nil && got != len(o.Expect) {
		s.Err = fmt.Sprintf("truncated body: %d of %d bytes", got, len(o.Expect))
	}
}
