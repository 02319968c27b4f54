package workload

import (
	"errors"
	"math/rand/v2"
	"time"
)

// SharedPrefixConfig is llm-d's and SGLang's benchmark shape: Groups system prompts of
// System tokens, each followed by Prompts distinct questions of Question tokens, Output
// tokens out, arrivals Poisson at Rate per second in random order.
type SharedPrefixConfig struct {
	Groups, Prompts, System, Question, Output int
	Rate                                      float64
	Seed                                      uint64
}

// SharedPrefix builds the shared-prefix workload.
func SharedPrefix(c SharedPrefixConfig) (*Workload, error) {
	if c.Groups < 1 || c.Prompts < 1 || c.System < 0 || c.Question < 1 || c.Output < 1 || c.Rate <= 0 {
		return nil, errors.New("shared-prefix: groups, prompts, question, output and rate must be positive")
	}
	r := rand.New(rand.NewPCG(c.Seed, 0x5ba7ed))
	n := c.Groups * c.Prompts
	order := r.Perm(n)
	at := poissonArrivals(r, n, c.Rate)
	reqs := make([]Request, n)
	for i, k := range order {
		g, p := k/c.Prompts, k%c.Prompts
		prompt := make([]uint32, 0, c.System+c.Question)
		prompt = fillTokens(prompt, "system", c.Seed<<20|uint64(g), c.System)
		prompt = fillTokens(prompt, "question", c.Seed<<40|uint64(g)<<20|uint64(p), c.Question)
		reqs[i] = Request{At: at[i], Prompt: prompt, MaxTokens: c.Output, Prev: -1}
	}
	return &Workload{Name: "shared-prefix", Requests: reqs}, nil
}

// MultiTurnConfig is multi-turn chat: Users conversations start at Poisson times (Rate
// per second); user u shares system prompt u mod Groups (System tokens); each of Rounds
// turns appends Question tokens, asks for Output tokens, and the next turn's history holds
// the question and a stand-in reply of Output tokens. Turn r+1 is due a think time after
// turn r was due, uniform in [Think/2, 3*Think/2] (jitter keeps conversations from
// falling into lockstep with a round-robin cycle), and is sent no earlier than turn r
// finished.
type MultiTurnConfig struct {
	Users, Rounds, Groups, System, Question, Output int
	Think                                           time.Duration
	Rate                                            float64
	Seed                                            uint64
}

// MultiTurn builds the multi-turn workload.
func MultiTurn(c MultiTurnConfig) (*Workload, error) {
	if c.Users < 1 || c.Rounds < 1 || c.Groups < 1 || c.System < 0 || c.Question < 1 || c.Output < 1 || c.Rate <= 0 || c.Think < 0 {
		return nil, errors.New("multi-turn: users, rounds, groups, question, output and rate must be positive")
	}
	r := rand.New(rand.NewPCG(c.Seed, 0x7a1c))
	starts := poissonArrivals(r, c.Users, c.Rate)
	reqs := make([]Request, 0, c.Users*c.Rounds)
	for u := range c.Users {
		hist := fillTokens(nil, "system", c.Seed<<20|uint64(u%c.Groups), c.System)
		prev := -1
		at := starts[u]
		for k := range c.Rounds {
			if k > 0 {
				at += time.Duration((0.5 + r.Float64()) * float64(c.Think))
			}
			key := c.Seed<<40 | uint64(u)<<16 | uint64(k)
			hist = fillTokens(hist, "question", key, c.Question)
			prompt := append([]uint32(nil), hist...)
			reqs = append(reqs, Request{At: at, Prompt: prompt, MaxTokens: c.Output, Prev: prev})
			prev = len(reqs) - 1
			hist = fillTokens(hist, "reply", key, c.Output)
		}
	}
	return &Workload{Name: "multi-turn", Requests: sortByArrival(reqs)}, nil
}
