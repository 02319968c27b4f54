package churn

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvroute/kvroute/bench/chaos"
	"github.com/kvroute/kvroute/bench/workload"
)

// LoadConfig describes the offered load: multi-turn conversations ([workload.MultiTurn])
// whose turns arrive at a fixed mean rate, set in advance (open loop).
type LoadConfig struct {
	// URL is the router's base URL, e.g. http://127.0.0.1:8080; Model the model of every
	// request.
	URL, Model string
	// Rate is the offered load in requests per second once the first conversations are
	// past their first turns: conversations start at Rate/Rounds per second (Poisson).
	// Default 30.
	Rate float64
	// Duration is how long requests keep arriving. Required.
	Duration time.Duration
	// Rounds is the number of turns of a conversation, Groups the number of shared system
	// prompts, System, Question and Output their sizes in tokens. Defaults 6, 8, 512, 64,
	// 32.
	Rounds, Groups, System, Question, Output int
	// Think is the mean time between two turns of a conversation. Default 2s.
	Think time.Duration
	// Deadline bounds each request, body included; past it the request counts as lost.
	// Default 30s.
	Deadline time.Duration
	// Seed makes the prompts and arrival times deterministic.
	Seed uint64
}

func (c *LoadConfig) defaults() {
	if c.Rate <= 0 {
		c.Rate = 30
	}
	for _, f := range []struct {
		v *int
		d int
	}{{&c.Rounds, 6}, {&c.Groups, 8}, {&c.System, 512}, {&c.Question, 64}, {&c.Output, 32}} {
		if *f.v <= 0 {
			*f.v = f.d
		}
	}
	if c.Think <= 0 {
		c.Think = 2 * time.Second
	}
	if c.Deadline <= 0 {
		c.Deadline = 30 * time.Second
	}
}

// Workload returns the requests of cfg arriving within cfg.Duration, in arrival order.
func (c LoadConfig) Workload() (*workload.Workload, error) {
	c.defaults()
	conv := c.Rate / float64(c.Rounds)
	w, err := workload.MultiTurn(workload.MultiTurnConfig{
		Users: max(1, int(conv*c.Duration.Seconds())), Rounds: c.Rounds, Groups: c.Groups,
		System: c.System, Question: c.Question, Output: c.Output, Think: c.Think, Rate: conv, Seed: c.Seed,
	})
	if err != nil {
		return nil, fmt.Errorf("churn load: %w", err)
	}
	// Turns arrive in order within a conversation, so the cut keeps every Prev link.
	n := len(w.Requests)
	for n > 0 && w.Requests[n-1].At > c.Duration {
		n--
	}
	w.Requests = w.Requests[:n]
	return w, nil
}

// Record is one request of a run as its client saw it.
type Record struct {
	// Sent is when the request was sent, Ended when its answer ended (or it failed).
	Sent, Ended time.Time
	// Outcome is how it ended.
	Outcome chaos.Outcome
	// Worker is the x-kvroute-worker header: the worker id that answered.
	Worker string
	// Prompt and Cached are the answer's usage.prompt_tokens and
	// usage.prompt_tokens_details.cached_tokens (0 when absent).
	Prompt, Cached int
	// Overlap and Blocks are the router's x-kvroute-cached-blocks header
	// (<overlap>/<total>): the prompt blocks it predicted the worker holds, and the
	// prompt's blocks; both 0 when absent.
	Overlap, Blocks int
	// Detail describes a failure.
	Detail string
}

// Recorder keeps the records of a run. Safe for concurrent use; must not be copied.
type Recorder struct {
	// mu guards the fields below.
	mu      sync.Mutex
	records []Record
	served  map[string][]time.Time // by worker: when its completed answers ended
}

func (r *Recorder) add(rec Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec)
	if rec.Outcome == chaos.Completed && rec.Worker != "" {
		if r.served == nil {
			r.served = map[string][]time.Time{}
		}
		r.served[rec.Worker] = append(r.served[rec.Worker], rec.Ended)
	}
}

// FirstServed returns the end of the first completed answer of worker that ended after
// t, and whether there is one.
func (r *Recorder) FirstServed(worker string, t time.Time) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var first time.Time
	for _, e := range r.served[worker] {
		if e.After(t) && (first.IsZero() || e.Before(first)) {
			first = e
		}
	}
	return first, !first.IsZero()
}

// ServedSince returns, by worker, how many completed answers ended after t.
func (r *Recorder) ServedSince(t time.Time) map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for w, ends := range r.served {
		for _, e := range ends {
			if e.After(t) {
				out[w]++
			}
		}
	}
	return out
}

// Window summarises the requests sent in [from, to); a zero to means no end.
func (r *Recorder) Window(from, to time.Time) Window {
	r.mu.Lock()
	defer r.mu.Unlock()
	var w Window
	for _, rec := range r.records {
		if rec.Sent.Before(from) || (!to.IsZero() && !rec.Sent.Before(to)) {
			continue
		}
		w.Sent++
		switch rec.Outcome {
		case chaos.Completed:
			w.Completed++
			w.Prompt += int64(rec.Prompt)
			w.Cached += int64(rec.Cached)
			w.Overlap += int64(rec.Overlap)
			w.Blocks += int64(rec.Blocks)
		case chaos.CleanError:
			w.CleanErrors++
		default:
			w.Lost++
			if len(w.LostSamples) < 5 {
				w.LostSamples = append(w.LostSamples, rec.Outcome.String()+": "+rec.Detail)
			}
		}
	}
	return w
}

// Window counts the requests sent in a span of time.
type Window struct {
	// Sent = Completed + CleanErrors + Lost. Lost counts every request that got no
	// complete answer and no clean error: a transport error, a cut or malformed body, a
	// refused connection, no answer within the deadline.
	Sent, Completed, CleanErrors, Lost int
	// Prompt and Cached sum the usage of completed requests; Overlap and Blocks their
	// router predictions in blocks.
	Prompt, Cached, Overlap, Blocks int64
	// LostSamples describes up to five lost requests.
	LostSamples []string
}

// HitRate is the workers' reported hit rate: cached over prompt tokens, in [0, 1]; 0
// without completed requests.
func (w Window) HitRate() float64 { return ratio(w.Cached, w.Prompt) }

// Predicted is the router's predicted hit rate: predicted over total prompt blocks.
func (w Window) Predicted() float64 { return ratio(w.Overlap, w.Blocks) }

func ratio(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// Run sends w's requests, streamed, each at its arrival time from now (a conversation's
// next turn also waits for the previous one to end), records them in rec, and returns
// when all have ended. Once ctx ends no further request is sent; those in flight are
// not cancelled (each has its own deadline), so a drain is observed as clients see it.
func Run(ctx context.Context, cfg LoadConfig, w *workload.Workload, rec *Recorder) {
	cfg.defaults()
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024,
		DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
	}}
	defer client.CloseIdleConnections()
	_ = workload.Dispatch(ctx, w, func(i int) { rec.add(sendOne(client, cfg, &w.Requests[i])) })
}

// sendOne sends one streamed completion with a token-id prompt and records it.
func sendOne(client *http.Client, cfg LoadConfig, r *workload.Request) Record {
	body, _ := json.Marshal(map[string]any{
		"model": cfg.Model, "prompt": r.Prompt, "max_tokens": r.MaxTokens, "ignore_eos": true,
		"stream": true, "stream_options": map[string]any{"include_usage": true},
	})
	rec := Record{Sent: time.Now()}
	x := chaos.Post(client, cfg.URL+"/v1/completions", body, true, cfg.Deadline)
	rec.Ended, rec.Outcome, rec.Worker = time.Now(), x.Outcome, x.Worker
	if x.Outcome != chaos.Completed {
		rec.Detail = x.Detail
		return rec
	}
	rec.Prompt, rec.Cached = streamUsage(x.Body)
	if o, b, ok := strings.Cut(x.Header.Get("x-kvroute-cached-blocks"), "/"); ok {
		rec.Overlap, _ = strconv.Atoi(o)
		rec.Blocks, _ = strconv.Atoi(b)
	}
	return rec
}

// streamUsage returns the prompt and cached tokens of the usage chunk of an SSE stream
// (0, 0 without one).
func streamUsage(b []byte) (prompt, cached int) {
	for _, line := range bytes.Split(b, []byte("\n")) {
		data, ok := bytes.CutPrefix(line, []byte("data: "))
		if !ok || !bytes.Contains(data, []byte(`"usage"`)) {
			continue
		}
		var ch struct {
			Usage *struct {
				PromptTokens int `json:"prompt_tokens"`
				Details      *struct {
					CachedTokens int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			} `json:"usage"`
		}
		if json.Unmarshal(data, &ch) != nil || ch.Usage == nil {
			continue
		}
		prompt = ch.Usage.PromptTokens
		if ch.Usage.Details != nil {
			cached = ch.Usage.Details.CachedTokens
		}
	}
	return prompt, cached
}
