package upstream

import (
	"testing"
	"time"

	"github.com/kvroute/kvroute/configs"
)

// A drained worker is no candidate but stays available and keeps its in-flight count;
// undraining restores it.
func TestDrainCandidates(t *testing.T) {
	cfg := configs.Default()
	cfg.Workers = []configs.Worker{
		{ID: "a", URL: "http://127.0.0.1:1", Models: []string{"m"}, MaxConns: 1},
		{ID: "b", URL: "http://127.0.0.1:2", Models: []string{"m"}, MaxConns: 1},
	}
	p, err := NewPool(&cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range p.Workers() {
		w.mu.Lock()
		w.checkHealthy = true
		w.updateAvailable()
		w.mu.Unlock()
	}
	a := p.Worker("a")
	load := a.Begin(10, 1, time.Minute)
	if !a.Drain() || a.Drain() {
		t.Fatal("Drain: first call must report a change, the second none")
	}
	if got := p.Candidates(nil, "m"); len(got) != 1 || got[0].ID != "b" {
		t.Errorf("candidates while a is drained = %v, want [b]", ids(got))
	}
	if !a.Available() || a.InFlight() != 1 || a.DrainedSince().IsZero() {
		t.Errorf("drained worker: available %v in-flight %d since %v; want true, 1, set", a.Available(), a.InFlight(), a.DrainedSince())
	}
	load.End()
	if !a.Undrain() || a.Undrain() || a.Drained() {
		t.Fatal("Undrain: first call must report a change, the second none")
	}
	if got := p.Candidates(nil, "m"); len(got) != 2 {
		t.Errorf("candidates after undrain = %v, want [a b]", ids(got))
	}
}

func ids(ws []*Worker) []string {
	out := make([]string, len(ws))
	for i, w := range ws {
		out[i] = w.ID
	}
	return out
}
