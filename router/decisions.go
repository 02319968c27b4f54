package router

import (
	"slices"
	"sync"
	"time"

	"github.com/kvroute/kvroute/scorer"
)

// Decision is one routing decision with every candidate's figures, for the admin API
// and the dashboard.
type Decision struct {
	Time         time.Time           `json:"time"`
	RequestID    string              `json:"request_id"`
	Model        string              `json:"model"`
	Policy       string              `json:"policy"`
	PromptTokens int                 `json:"prompt_tokens"`
	Blocks       int                 `json:"blocks"`
	Exact        bool                `json:"exact"` // token-exact hashes (not approx)
	Chosen       string              `json:"chosen"`
	Attempt      int                 `json:"attempt"`
	Candidates   []DecisionCandidate `json:"candidates"`
}

// DecisionCandidate is one candidate's figures at decision time; costs are in blocks.
type DecisionCandidate struct {
	Worker         string  `json:"worker"`
	OverlapBlocks  int     `json:"overlap_blocks"`
	AffinityBlocks int     `json:"affinity_blocks,omitempty"` // routing history (scorer.Candidate.AffinityBlocks)
	InFlight       int64   `json:"in_flight"`
	PendingPrefill int64   `json:"pending_prefill_tokens"`
	ActiveBlocks   int64   `json:"active_blocks"`
	PrefillCost    float64 `json:"prefill_cost"`
	DecodeCost     float64 `json:"decode_cost"`
	QueueCost      float64 `json:"queue_cost"`
	TotalCost      float64 `json:"total_cost"`
}

// decisionLog is a fixed-size ring of the most recent decisions. Recording reuses the
// slots' candidate slices, so it does not allocate once warm.
type decisionLog struct {
	// mu guards the fields below.
	mu   sync.Mutex
	ring []Decision
	next int
	full bool
}

func newDecisionLog(n int) *decisionLog { return &decisionLog{ring: make([]Decision, n)} }

// record stores a decision; cands and costs are copied (costs may be nil).
func (l *decisionLog) record(d Decision, cands []scorer.Candidate, costs []scorer.Cost) {
	l.mu.Lock()
	defer l.mu.Unlock()
	slot := &l.ring[l.next]
	reuse := slot.Candidates[:0]
	*slot = d
	for i, c := range cands {
		dc := DecisionCandidate{
			Worker: c.ID, OverlapBlocks: c.OverlapBlocks, AffinityBlocks: c.AffinityBlocks, InFlight: c.InFlight,
			PendingPrefill: c.PendingPrefillTokens, ActiveBlocks: c.ActiveBlocks,
		}
		if costs != nil {
			k := costs[i]
			dc.PrefillCost, dc.DecodeCost, dc.QueueCost, dc.TotalCost = k.Prefill, k.Decode, k.Queue, k.Total
		}
		reuse = append(reuse, dc)
	}
	slot.Candidates = reuse
	l.next = (l.next + 1) % len(l.ring)
	if l.next == 0 {
		l.full = true
	}
}

// Decisions returns up to n of the most recent routing decisions, newest first. The
// result is the caller's.
func (s *Server) Decisions(n int) []Decision { return s.decisions.recent(n) }

// recent returns up to n decisions, newest first, as deep copies.
func (l *decisionLog) recent(n int) []Decision {
	l.mu.Lock()
	defer l.mu.Unlock()
	size := l.next
	if l.full {
		size = len(l.ring)
	}
	n = min(n, size)
	out := make([]Decision, 0, n)
	for i := 1; i <= n; i++ {
		d := l.ring[(l.next-i+len(l.ring))%len(l.ring)]
		d.Candidates = slices.Clone(d.Candidates)
		out = append(out, d)
	}
	return out
}
