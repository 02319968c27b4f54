package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Outcome is how one client request ended.
type Outcome int

const (
	// Completed: a 2xx answer, complete (a stream ends with data: [DONE]).
	Completed Outcome = iota
	// CleanError: an OpenAI error JSON with a non-2xx status, or a stream that ends with
	// an SSE error event (data: {"error":...}).
	CleanError
	// Refused: the router never read the request: the connection was refused (a closed
	// listener), or the router closed an idle keep-alive connection as the request was
	// being sent on it (Go's "server closed idle connection", the keep-alive race of RFC
	// 9112 section 9.6, seen when a drain closes idle connections). A balancer or client
	// retries such requests elsewhere.
	Refused
	// Lost: anything else: a transport error after the request was sent, a stream cut
	// without an error event, an error body that is not OpenAI-shaped.
	Lost
	// Hung: no complete answer within the client's deadline.
	Hung
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"completed", "clean error", "refused", "lost", "hung"}

func (o Outcome) String() string {
	if o < 0 || o >= numOutcomes {
		return fmt.Sprintf("Outcome(%d)", int(o))
	}
	return outcomeNames[o]
}

// LoadConfig describes a closed-loop chat workload: Concurrency clients each send one
// request after another until the context given to [RunLoad] ends.
type LoadConfig struct {
	// URL is the router's base URL, e.g. http://127.0.0.1:8080.
	URL string
	// Model is the model name sent in every request.
	Model string
	// Concurrency is the number of clients. Default 8.
	Concurrency int
	// StreamFraction is the fraction of streaming requests, in [0, 1]. Default 0 (none).
	StreamFraction float64
	// Prefixes is the number of distinct shared system prompts, so workers' caches and
	// the router's index hold shared prefixes. Default 4.
	Prefixes int
	// SystemWords and UserWords size the system prompt and the user turn. Defaults 200
	// and 20.
	SystemWords, UserWords int
	// MaxTokens is each request's max_tokens (sent with ignore_eos, so streams have
	// exactly that many tokens). Default 16.
	MaxTokens int
	// Deadline bounds each request from send to the end of its body; past it the
	// request counts as hung. Default 30s.
	Deadline time.Duration
	// Pause is the wait between two requests of a client. Default 0.
	Pause time.Duration
	// Seed makes the prompts deterministic.
	Seed uint64
}

func (c *LoadConfig) defaults() {
	if c.Concurrency <= 0 {
		c.Concurrency = 8
	}
	if c.Prefixes <= 0 {
		c.Prefixes = 4
	}
	if c.SystemWords <= 0 {
		c.SystemWords = 200
	}
	if c.UserWords <= 0 {
		c.UserWords = 20
	}
	if c.MaxTokens <= 0 {
		c.MaxTokens = 16
	}
	if c.Deadline <= 0 {
		c.Deadline = 30 * time.Second
	}
}

// Tally counts the outcomes of a workload's requests. Safe for concurrent use; must not
// be copied.
type Tally struct {
	active    atomic.Int64 // requests sent by RunLoad and not finished yet
	answering atomic.Int64 // of those, the ones whose response headers have arrived
	// mu guards the fields below.
	mu      sync.Mutex
	counts  [numOutcomes]int
	streams [numOutcomes]int
	workers map[string]int
	samples map[Outcome][]string
}

// Add records one request's outcome; worker is the x-kvroute-worker header ("" when
// none), detail a short description kept as a sample for failures.
func (t *Tally) Add(o Outcome, stream bool, worker, detail string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.counts[o]++
	if stream {
		t.streams[o]++
	}
	if t.workers == nil {
		t.workers = map[string]int{}
		t.samples = map[Outcome][]string{}
	}
	if o == Completed && worker != "" {
		t.workers[worker]++
	}
	if o != Completed && len(t.samples[o]) < 5 {
		t.samples[o] = append(t.samples[o], detail)
	}
}

// Active returns how many requests [RunLoad] has sent that have not ended yet.
func (t *Tally) Active() int64 { return t.active.Load() }

// Answering returns how many requests [RunLoad] has sent whose response headers have
// arrived and whose body has not ended: requests the server has accepted for sure.
func (t *Tally) Answering() int64 { return t.answering.Load() }

// Count returns how many requests ended with o.
func (t *Tally) Count(o Outcome) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.counts[o]
}

// StreamCount returns how many streaming requests ended with o.
func (t *Tally) StreamCount(o Outcome) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.streams[o]
}

// Sent returns the number of requests recorded.
func (t *Tally) Sent() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, c := range t.counts {
		n += c
	}
	return n
}

// ByWorker returns how many completed requests each worker served.
func (t *Tally) ByWorker() map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]int, len(t.workers))
	for k, v := range t.workers {
		out[k] = v
	}
	return out
}

// Samples returns up to five details of requests that ended with o.
func (t *Tally) Samples(o Outcome) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.samples[o]...)
}

// String summarises the tally on one line.
func (t *Tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	for o := Outcome(0); o < numOutcomes; o++ {
		if o > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", o, t.counts[o])
	}
	return b.String()
}

// RunLoad sends cfg's workload until ctx ends, then waits for the requests in flight,
// which are not cancelled by ctx (each has its own deadline), and returns. Outcomes are
// added to tally.
func RunLoad(ctx context.Context, cfg LoadConfig, tally *Tally) {
	cfg.defaults()
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: cfg.Concurrency,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
	}}
	defer client.CloseIdleConnections()
	systems := make([]string, cfg.Prefixes)
	for i := range systems {
		systems[i] = words(rand.New(rand.NewPCG(cfg.Seed, uint64(i))), cfg.SystemWords)
	}
	var wg sync.WaitGroup
	for c := 0; c < cfg.Concurrency; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(cfg.Seed+1, uint64(c)))
			for ctx.Err() == nil {
				stream := rng.Float64() < cfg.StreamFraction
				body := requestBody(cfg, systems[rng.IntN(len(systems))], words(rng, cfg.UserWords), stream)
				tally.active.Add(1)
				x := post(client, cfg.URL+"/v1/chat/completions", body, stream, cfg.Deadline, &tally.answering)
				tally.Add(x.Outcome, stream, x.Worker, x.Detail)
				tally.active.Add(-1)
				if cfg.Pause > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(cfg.Pause):
					}
				}
			}
		}()
	}
	wg.Wait()
}

func requestBody(cfg LoadConfig, system, user string, stream bool) []byte {
	req := map[string]any{
		"model":      cfg.Model,
		"messages":   []map[string]string{{"role": "system", "content": system}, {"role": "user", "content": user}},
		"max_tokens": cfg.MaxTokens,
		"ignore_eos": true,
	}
	if stream {
		req["stream"] = true
		req["stream_options"] = map[string]any{"include_usage": true}
	}
	b, _ := json.Marshal(req)
	return b
}

func words(rng *rand.Rand, n int) string {
	w := make([]string, n)
	for i := range w {
		w[i] = fmt.Sprintf("w%d", rng.IntN(5000))
	}
	return strings.Join(w, " ")
}

// Send posts one chat completion to url and classifies how it ended. The whole exchange,
// body included, is bounded by deadline.
func Send(client *http.Client, url string, body []byte, stream bool, deadline time.Duration) (o Outcome, worker, detail string) {
	x := post(client, url+"/v1/chat/completions", body, stream, deadline, nil)
	return x.Outcome, x.Worker, x.Detail
}

// Exchange is one request as its client saw it.
type Exchange struct {
	// Outcome is how the request ended.
	Outcome Outcome
	// Worker is the x-kvroute-worker header ("" when none); Detail a short description
	// of the end (the status and the body's tail, or the error).
	Worker, Detail string
	// Header is the response header, nil when no response arrived; Body the response
	// body as read (possibly cut short).
	Header http.Header
	Body   []byte
}

// Post posts body (an OpenAI completion or chat completion request) to url, the
// endpoint's full address, and classifies how it ended as [Send] does. The whole
// exchange, body included, is bounded by deadline.
func Post(client *http.Client, url string, body []byte, stream bool, deadline time.Duration) Exchange {
	return post(client, url, body, stream, deadline, nil)
}

// post is Post that counts, in answering, the requests whose headers have arrived and
// whose body has not ended.
func post(client *http.Client, url string, body []byte, stream bool, deadline time.Duration, answering *atomic.Int64) Exchange {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return Exchange{Outcome: Lost, Detail: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return Exchange{Outcome: transportOutcome(ctx, err), Detail: err.Error()}
	}
	defer resp.Body.Close()
	if answering != nil {
		answering.Add(1)
		defer answering.Add(-1)
	}
	x := Exchange{Worker: resp.Header.Get("x-kvroute-worker"), Header: resp.Header}
	x.Body, err = io.ReadAll(resp.Body)
	switch {
	case err == nil:
		x.Outcome = classify(resp.StatusCode, stream, x.Body)
		x.Detail = fmt.Sprintf("status %d: %.300s", resp.StatusCode, tail(x.Body, 300))
	case stream && resp.StatusCode == http.StatusOK && endsWithErrorEvent(x.Body):
		// A cut stream may still have ended with an error event before the cut.
		x.Outcome, x.Detail = CleanError, "error event then "+err.Error()
	default:
		x.Outcome = transportOutcome(ctx, err)
		x.Detail = fmt.Sprintf("status %d, read body after %d bytes: %v", resp.StatusCode, len(x.Body), err)
	}
	return x
}

// transportOutcome classifies a transport error: hung past the deadline, refused
// before anything was sent, or lost.
func transportOutcome(ctx context.Context, err error) Outcome {
	switch {
	case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded):
		return Hung
	case errors.Is(err, syscall.ECONNREFUSED), strings.Contains(err.Error(), "server closed idle connection"):
		return Refused
	}
	return Lost
}

// classify judges a complete response body.
func classify(status int, stream bool, b []byte) Outcome {
	if status < 200 || status > 299 {
		if isErrorJSON(b) {
			return CleanError
		}
		return Lost
	}
	if !stream {
		var out struct {
			Choices []json.RawMessage `json:"choices"`
		}
		if json.Unmarshal(b, &out) == nil && len(out.Choices) > 0 {
			return Completed
		}
		return Lost
	}
	if bytes.HasSuffix(b, []byte("data: [DONE]\n\n")) {
		return Completed
	}
	if endsWithErrorEvent(b) {
		return CleanError
	}
	return Lost
}

// isErrorJSON reports whether b is an OpenAI error object with a message.
func isErrorJSON(b []byte) bool {
	var e struct {
		Error *struct {
			Message string `json:"message"`
			Type    string `json:"type"`
		} `json:"error"`
	}
	return json.Unmarshal(b, &e) == nil && e.Error != nil && e.Error.Message != "" && e.Error.Type != ""
}

// endsWithErrorEvent reports whether the last SSE event of b is data: {"error":...}.
func endsWithErrorEvent(b []byte) bool {
	b = bytes.TrimRight(b, "\n")
	i := bytes.LastIndex(b, []byte("\n\n"))
	last := b[i+1:]
	if i < 0 {
		last = b
	}
	data, ok := bytes.CutPrefix(bytes.TrimLeft(last, "\n"), []byte("data: "))
	return ok && isErrorJSON(data)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
