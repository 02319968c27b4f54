// Package traffic drives a chat workload against an OpenAI-compatible endpoint and keeps
// the figures a demo shows: request rate, time to first token, prompt-cache hit rate
// (from the workers' usage.prompt_tokens_details.cached_tokens) and which worker served
// what (x-kvroute-worker).
//
// The workload is closed-loop multi-turn chat: Users conversations run at once; each
// starts from one of Groups shared system prompts, asks Rounds questions with the
// history growing, then starts over. Everything is deterministic under Seed, so the same
// config sends the same prompts.
package traffic

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Config describes the workload. Zero fields take the defaults of [DefaultConfig].
type Config struct {
	URL   string // router base URL, e.g. http://127.0.0.1:8080
	Model string
	// Users is the number of concurrent conversations. Default 8.
	Users int
	// Groups is the number of distinct shared system prompts. Default 4.
	Groups int
	// SystemWords and TurnWords size the system prompt and each user turn. Defaults 600, 40.
	SystemWords, TurnWords int
	// Rounds is the number of turns before a conversation starts over. Default 6.
	Rounds int
	// MaxTokens caps each reply. Default 32.
	MaxTokens int
	// Think is the pause between a reply and the next turn. Default 200ms.
	Think time.Duration
	Seed  uint64
}

// DefaultConfig returns the demo's workload.
func DefaultConfig() Config {
	return Config{Users: 8, Groups: 4, SystemWords: 600, TurnWords: 40, Rounds: 6, MaxTokens: 32, Think: 200 * time.Millisecond, Seed: 1}
}

// Stats accumulates results; safe for concurrent use.
type Stats struct {
	// mu guards the fields below.
	mu       sync.Mutex
	requests int
	errors   int
	prompt   int64
	cached   int64
	ttft     []time.Duration // since the last Snapshot
	p50, p99 time.Duration   // of the last interval that had requests
	byWorker map[string]int
	lastErr  string
}

// Snapshot is a summary of the results since the previous snapshot (rates, latencies)
// and since the start (totals).
type Snapshot struct {
	Requests, Errors int            // totals
	HitRate          float64        // cached / prompt tokens, totals
	TTFTp50, TTFTp99 time.Duration  // of the last interval with requests
	Interval         int            // requests since the previous snapshot
	ByWorker         map[string]int // totals
	LastError        string
}

// Snapshot returns the figures and starts a new interval.
func (s *Stats) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := Snapshot{Requests: s.requests, Errors: s.errors, Interval: len(s.ttft), ByWorker: map[string]int{}, LastError: s.lastErr}
	if s.prompt > 0 {
		snap.HitRate = float64(s.cached) / float64(s.prompt)
	}
	for k, v := range s.byWorker {
		snap.ByWorker[k] = v
	}
	if len(s.ttft) > 0 {
		slices.Sort(s.ttft)
		s.p50 = s.ttft[len(s.ttft)/2]
		s.p99 = s.ttft[min(len(s.ttft)-1, len(s.ttft)*99/100)]
	}
	snap.TTFTp50, snap.TTFTp99 = s.p50, s.p99
	s.ttft = s.ttft[:0]
	return snap
}

// String formats a snapshot as one line.
func (snap Snapshot) String() string {
	workers := make([]string, 0, len(snap.ByWorker))
	for w := range snap.ByWorker {
		workers = append(workers, w)
	}
	sort.Strings(workers)
	var b strings.Builder
	fmt.Fprintf(&b, "requests %d  errors %d  cache hit %.1f%%  ttft p50 %s p99 %s  by worker",
		snap.Requests, snap.Errors, 100*snap.HitRate, snap.TTFTp50.Round(time.Millisecond), snap.TTFTp99.Round(time.Millisecond))
	for _, w := range workers {
		fmt.Fprintf(&b, " %s:%d", w, snap.ByWorker[w])
	}
	return b.String()
}

func (s *Stats) record(worker string, ttft time.Duration, prompt, cached int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byWorker == nil {
		s.byWorker = map[string]int{}
	}
	if err != nil {
		s.errors++
		s.lastErr = err.Error()
		return
	}
	s.requests++
	s.prompt += int64(prompt)
	s.cached += int64(cached)
	s.ttft = append(s.ttft, ttft)
	s.byWorker[worker]++
}

// Run sends the workload until ctx ends. It returns nil when ctx ends.
func Run(ctx context.Context, cfg Config, stats *Stats) error {
	def := DefaultConfig()
	for _, f := range []struct {
		v *int
		d int
	}{{&cfg.Users, def.Users}, {&cfg.Groups, def.Groups}, {&cfg.SystemWords, def.SystemWords}, {&cfg.TurnWords, def.TurnWords}, {&cfg.Rounds, def.Rounds}, {&cfg.MaxTokens, def.MaxTokens}} {
		if *f.v <= 0 {
			*f.v = f.d
		}
	}
	if cfg.URL == "" || cfg.Model == "" {
		return errors.New("traffic: URL and Model are required")
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Users}}
	systems := make([]string, cfg.Groups)
	for g := range systems {
		systems[g] = words(rand.New(rand.NewPCG(cfg.Seed, uint64(g))), cfg.SystemWords)
	}
	var wg sync.WaitGroup
	for u := 0; u < cfg.Users; u++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(cfg.Seed+1000, uint64(u)))
			for ctx.Err() == nil {
				converse(ctx, client, cfg, systems[rng.IntN(len(systems))], rng, stats)
			}
		}()
	}
	wg.Wait()
	return nil
}

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func converse(ctx context.Context, client *http.Client, cfg Config, system string, rng *rand.Rand, stats *Stats) {
	msgs := []message{{Role: "system", Content: system}}
	for r := 0; r < cfg.Rounds && ctx.Err() == nil; r++ {
		msgs = append(msgs, message{Role: "user", Content: words(rng, cfg.TurnWords)})
		reply, err := chat(ctx, client, cfg, msgs, stats)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			return
		}
		msgs = append(msgs, message{Role: "assistant", Content: reply})
		select {
		case <-ctx.Done():
		case <-time.After(cfg.Think):
		}
	}
}

// chat sends one streaming request and records its outcome.
func chat(ctx context.Context, client *http.Client, cfg Config, msgs []message, stats *Stats) (string, error) {
	body, _ := json.Marshal(map[string]any{
		"model": cfg.Model, "messages": msgs, "stream": true, "max_tokens": cfg.MaxTokens,
		"stream_options": map[string]any{"include_usage": true},
	})
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cfg.URL+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			stats.record("", 0, 0, 0, err)
		}
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		err := fmt.Errorf("status %d: %s", resp.StatusCode, b)
		stats.record("", 0, 0, 0, err)
		return "", err
	}
	var (
		ttft         time.Duration
		reply        strings.Builder
		prompt, hits int
		done         bool
	)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if line == "[DONE]" {
			done = true
			break
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Usage *struct {
				PromptTokens int `json:"prompt_tokens"`
				Details      *struct {
					Cached int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			} `json:"usage"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(line), &chunk); err != nil {
			continue
		}
		if chunk.Error != nil {
			err := errors.New(chunk.Error.Message)
			stats.record("", 0, 0, 0, err)
			return "", err
		}
		for _, c := range chunk.Choices {
			if c.Delta.Content != "" && ttft == 0 {
				ttft = time.Since(start)
			}
			reply.WriteString(c.Delta.Content)
		}
		if chunk.Usage != nil {
			prompt = chunk.Usage.PromptTokens
			if chunk.Usage.Details != nil {
				hits = chunk.Usage.Details.Cached
			}
		}
	}
	if !done {
		err := errors.New("stream ended without [DONE]")
		if sc.Err() != nil {
			err = fmt.Errorf("stream ended without [DONE]: %w", sc.Err())
		}
		if ctx.Err() == nil {
			stats.record("", 0, 0, 0, err)
		}
		return "", err
	}
	stats.record(resp.Header.Get("x-kvroute-worker"), ttft, prompt, hits, nil)
	return reply.String(), nil
}

var vocab = strings.Fields(`the a of to and in is that for it on with as was at by be this from or have an
they which one you had not but what all were when we there can been has more if will would who so no
cache router prefix token block worker model prompt latency memory request stream batch queue`)

func words(rng *rand.Rand, n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(vocab[rng.IntN(len(vocab))])
	}
	return b.String()
}
