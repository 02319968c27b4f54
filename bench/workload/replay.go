package workload

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Outcome is the client's view of one request.
type Outcome struct {
	// Sent is when the request was sent, from the start of the replay.
	Sent time.Duration
	// TTFT is the time to the first streamed token; E2E to the end of the stream.
	TTFT, E2E time.Duration
	// ITL is the mean gap between streamed tokens after the first (0 for one token).
	ITL time.Duration
	// Tokens is the number of output tokens: the usage's completion_tokens, or the
	// number of content chunks when the stream carries no usage (a chunk may hold
	// several tokens: kvsim's stream_chunk_tokens). Cached is the usage's cached_tokens.
	Tokens, Cached, Prompt int
	// Worker is the x-kvroute-worker header ("" when absent).
	Worker string
	// PredictedBlocks is the router's expected cached overlap in blocks, from the
	// x-kvroute-cached-blocks header (<overlap>/<total>); -1 when absent.
	PredictedBlocks int
	// Err is the failure, "" on success.
	Err string
}

// ReplayConfig tells [Replay] where to send a workload.
type ReplayConfig struct {
	// URL is the base URL of the router, e.g. http://127.0.0.1:8080.
	URL string
	// Model is the "model" field of every request, unless Models is set.
	Model string
	// Models, when set, are the models requests name instead of Model (say, the LoRA
	// adapters of one base model), spread by [SpreadModels]: a conversation keeps one
	// model, and conversations that open with the same prompt block share it.
	Models []string
	// Client sends the requests; nil means a client with a large idle pool.
	Client *http.Client
	// Progress, when set, is called after each finished request with the count so far.
	Progress func(done, total int)
}

// Replay sends every request of w at its arrival time (and after its Prev finished),
// streaming, and returns one Outcome per request, by index. It returns early with ctx's
// error when ctx ends; requests then in flight are cancelled, and those not sent yet
// have a zero Outcome.
func Replay(ctx context.Context, w *Workload, c ReplayConfig) ([]Outcome, error) {
	client := c.Client
	if client == nil {
		client = &http.Client{Transport: &http.Transport{MaxIdleConns: 4096, MaxIdleConnsPerHost: 4096, DisableCompression: true}}
	}
	n := len(w.Requests)
	models := SpreadModels(w, c.Models)
	out := make([]Outcome, n)
	var finished atomic.Int64
	start := time.Now()
	err := Dispatch(ctx, w, func(i int) {
		model := c.Model
		if models != nil {
			model = models[i]
		}
		out[i] = send(ctx, client, c.URL, model, &w.Requests[i], start)
		k := finished.Add(1)
		if c.Progress != nil {
			c.Progress(int(k), n)
		}
	})
	if err == nil {
		// Every request was started, but ctx may have ended while some were in flight:
		// they were cancelled, and the replay is cut as when ctx ends before a start.
		err = ctx.Err()
	}
	if err != nil {
		return out, fmt.Errorf("replay: %w", err)
	}
	return out, nil
}

// Dispatch calls send(i) for each request i of w, each call on its own goroutine, at the
// request's arrival time from now and once the call for its Prev has returned: arrivals
// are open loop but for a conversation's turns. Once ctx ends it starts no further call
// (a request still waiting for its Prev is not sent either). It returns when every call
// it started has returned: nil when all were started, else ctx's error.
func Dispatch(ctx context.Context, w *Workload, send func(i int)) error {
	done := make([]chan struct{}, len(w.Requests))
	for i := range done {
		done[i] = make(chan struct{})
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	start := time.Now()
	for i := range w.Requests {
		r := &w.Requests[i]
		if d := time.Until(start.Add(r.At)); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done[i])
			if r.Prev >= 0 {
				select {
				case <-done[r.Prev]:
				case <-ctx.Done():
					return
				}
			}
			if ctx.Err() == nil {
				send(i)
			}
		}()
	}
	return nil
}

// spreadBlock is the prompt prefix, in tokens, that tells SpreadModels' groups apart: one
// KV block of vLLM's default size.
const spreadBlock = 16

// SpreadModels returns the model of each request of w when requests are spread over
// models, nil when models is empty. A request takes the model of its conversation's
// first request (following Prev), and first requests are grouped by their first
// spreadBlock prompt tokens: groups take the models round-robin in order of first
// arrival. So a conversation stays on one model (an adapter's history stays its own), and
// conversations that open with the same system prompt share a model, as an application
// with its system prompt uses one adapter: a shared prefix is not split between adapters,
// which could not share its blocks.
func SpreadModels(w *Workload, models []string) []string {
	if len(models) == 0 {
		return nil
	}
	out := make([]string, len(w.Requests))
	group := map[string]int{}
	for i, r := range w.Requests {
		if r.Prev >= 0 {
			out[i] = out[r.Prev] // Prev < i: already assigned
			continue
		}
		k := r.Prompt[:min(spreadBlock, len(r.Prompt))]
		key := string(binaryKey(k))
		g, ok := group[key]
		if !ok {
			g = len(group)
			group[key] = g
		}
		out[i] = models[g%len(models)]
	}
	return out
}

// binaryKey renders token ids as bytes, for a map key.
func binaryKey(ids []uint32) []byte {
	b := make([]byte, 0, 4*len(ids))
	for _, id := range ids {
		b = append(b, byte(id), byte(id>>8), byte(id>>16), byte(id>>24))
	}
	return b
}

// body is the /v1/completions request Replay sends.
type body struct {
	Model         string   `json:"model"`
	Prompt        []uint32 `json:"prompt"`
	MaxTokens     int      `json:"max_tokens"`
	IgnoreEOS     bool     `json:"ignore_eos"`
	Stream        bool     `json:"stream"`
	StreamOptions struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// chunk is the part of a streamed completion chunk Replay reads.
type chunk struct {
	Choices []struct {
		Text string `json:"text"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		PromptDetails    *struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"prompt_tokens_details"`
	} `json:"usage"`
}

// send runs one request and measures it.
func send(ctx context.Context, client *http.Client, url, model string, r *Request, start time.Time) Outcome {
	t0 := time.Now()
	o := Outcome{Sent: t0.Sub(start), PredictedBlocks: -1}
	var b body
	b.Model, b.Prompt, b.MaxTokens, b.IgnoreEOS, b.Stream = model, r.Prompt, r.MaxTokens, true, true
	b.StreamOptions.IncludeUsage = true
	payload, err := json.Marshal(&b)
	if err != nil {
		o.Err = err.Error()
		return o
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/completions", bytes.NewReader(payload))
	if err != nil {
		o.Err = err.Error()
		return o
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		o.Err = err.Error()
		return o
	}
	defer func() { _ = resp.Body.Close() }()
	o.Worker = resp.Header.Get("x-kvroute-worker")
	if v, _, ok := strings.Cut(resp.Header.Get("x-kvroute-cached-blocks"), "/"); ok {
		if n, err := strconv.Atoi(v); err == nil {
			o.PredictedBlocks = n
		}
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		o.Err = "status " + strconv.Itoa(resp.StatusCode) + ": " + string(msg)
		return o
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var first, last time.Time
	completion := -1 // from the usage chunk
	for sc.Scan() {
		line := sc.Bytes()
		data, ok := bytes.CutPrefix(line, []byte("data: "))
		if !ok || bytes.Equal(data, []byte("[DONE]")) {
			continue
		}
		var ch chunk
		if err := json.Unmarshal(data, &ch); err != nil {
			o.Err = fmt.Sprintf("decode chunk: %v", err)
			return o
		}
		if len(ch.Choices) > 0 {
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			last = now
			o.Tokens++
		}
		if ch.Usage != nil {
			o.Prompt, completion = ch.Usage.PromptTokens, ch.Usage.CompletionTokens
			if ch.Usage.PromptDetails != nil {
				o.Cached = ch.Usage.PromptDetails.CachedTokens
			}
		}
	}
	if err := sc.Err(); err != nil {
		o.Err = fmt.Sprintf("read stream: %v", err)
		return o
	}
	end := time.Now()
	o.E2E = end.Sub(t0)
	if first.IsZero() {
		o.Err = "no token streamed"
		return o
	}
	o.TTFT = first.Sub(t0)
	if completion > 0 {
		// Chunks may carry several tokens each; kvsim sends the first token alone, so
		// the other Tokens-1 arrive between first and last and ITL stays per token.
		o.Tokens = completion
	}
	if o.Tokens > 1 {
		o.ITL = last.Sub(first) / time.Duration(o.Tokens-1)
	}
	return o
}
