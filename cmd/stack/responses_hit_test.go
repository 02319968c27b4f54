package stack

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
)

// responsesOnce sends one conversation turn as a stateless Responses request (the whole
// history as input items, store false) and reads the usage the worker reported.
func responsesOnce(client *http.Client, url string, msgs []chatMsg, maxTokens int) chatResult {
	var items []map[string]any
	instructions := ""
	for _, m := range msgs {
		switch m.Role {
		case "system":
			instructions = m.Content
		case "assistant":
			items = append(items, map[string]any{"type": "message", "role": "assistant",
				"content": []map[string]any{{"type": "output_text", "text": m.Content}}})
		default:
			items = append(items, map[string]any{"role": m.Role, "content": []map[string]any{{"type": "input_text", "text": m.Content}}})
		}
	}
	body, _ := json.Marshal(map[string]any{"model": "m", "instructions": instructions, "input": items,
		"max_output_tokens": maxTokens, "store": false})
	res := chatResult{started: time.Now()}
	resp, err := client.Post(url+"/v1/responses", "application/json", strings.NewReader(string(body)))
	if err != nil {
		res.err = err
		return res
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	res.ended, res.status, res.worker = time.Now(), resp.StatusCode, resp.Header.Get("x-kvroute-worker")
	if resp.StatusCode != 200 {
		res.err = fmt.Errorf("status %d: %s", resp.StatusCode, b)
		return res
	}
	var out struct {
		Output []struct {
			Content []struct {
				Text string `json:"text"`
			} `json:"content"`
		} `json:"output"`
		Usage struct {
			InputTokens int `json:"input_tokens"`
			Details     struct {
				Cached int `json:"cached_tokens"`
			} `json:"input_tokens_details"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(b, &out); err != nil || len(out.Output) == 0 || len(out.Output[0].Content) == 0 {
		res.err = fmt.Errorf("bad response %s: %w", b, err)
		return res
	}
	res.prompt, res.cached, res.reply = out.Usage.InputTokens, out.Usage.Details.Cached, out.Output[0].Content[0].Text
	return res
}

// multiTurnHitRate runs users concurrent conversations of turns turns (a 300-word
// system prompt, 60-word user turns, 24-token replies) through a fresh 4-worker stack
// with send, and returns the workers' reported cached share of all prompt tokens.
func multiTurnHitRate(t *testing.T, policy string, users, turns int, send func(*http.Client, string, []chatMsg, int) chatResult) (float64, *simStack) {
	ss := startSimStack(t, 4, func(_ *sim.FleetConfig, c *configs.Config) { c.Policy = policy })
	client := &http.Client{Timeout: 30 * time.Second}
	var mu sync.Mutex
	var prompt, cached int
	var wg sync.WaitGroup
	for u := range users {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(u), 22))
			msgs := []chatMsg{{Role: "system", Content: someWords(rng, 300)}}
			for turn := range turns {
				msgs = append(msgs, chatMsg{Role: "user", Content: someWords(rng, 60)})
				r := send(client, ss.url, msgs, 24)
				if r.err != nil {
					t.Errorf("user %d turn %d: %v", u, turn, r.err)
					return
				}
				mu.Lock()
				prompt, cached = prompt+r.prompt, cached+r.cached
				mu.Unlock()
				msgs = append(msgs, chatMsg{Role: "assistant", Content: r.reply})
			}
		}()
	}
	wg.Wait()
	if prompt == 0 {
		t.Fatal("no prompt tokens reported")
	}
	return float64(cached) / float64(prompt), ss
}

// The same multi-turn workload sent as Responses requests (instructions and input
// items with input_text/output_text parts) and as chat: cache-aware routing hashes the
// Responses input as the equivalent chat (engine /tokenize of the mapped messages), so
// the workers' hit rates are within 5 points (issue #22; bench/RESULTS.md).
func TestResponsesHitRateMatchesChat(t *testing.T) {
	const users, turns = 8, 5
	chat, _ := multiTurnHitRate(t, "cache_aware", users, turns, chatOnce)
	resp, ss := multiTurnHitRate(t, "cache_aware", users, turns, responsesOnce)
	rr, _ := multiTurnHitRate(t, "round_robin", users, turns, responsesOnce)
	t.Logf("hit rate over %d users x %d turns on 4 workers: chat %.3f, responses %.3f (round_robin responses %.3f)", users, turns, chat, resp, rr)
	if rr >= resp {
		t.Errorf("round_robin's hit rate %.3f is not below cache_aware's %.3f", rr, resp)
	}
	if math.Abs(chat-resp) > 0.05 {
		t.Errorf("responses hit rate %.3f, chat %.3f: more than 5 points apart", resp, chat)
	}
	if d := ss.stack.Server.Decisions(1); len(d) != 1 || !d[0].Exact {
		t.Errorf("the Responses requests were not hashed exactly (engine /tokenize): %+v", d)
	}
}
