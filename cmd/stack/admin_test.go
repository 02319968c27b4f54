package stack

import (
	"math"
	"testing"

	"github.com/kvroute/kvroute/router"
)

// An infinite cost (the load guard's) is shown as null and flagged load_guarded.
func TestExplainAllGuarded(t *testing.T) {
	inf := math.Inf(1)
	ex := explainAll([]router.Decision{{Chosen: "a", Candidates: []router.DecisionCandidate{{Worker: "a", TotalCost: 3}, {Worker: "b", TotalCost: inf}}}})
	if c := ex[0].Candidates; c[0].TotalCost == nil || *c[0].TotalCost != 3 || c[0].LoadGuarded || c[1].TotalCost != nil || !c[1].LoadGuarded {
		t.Errorf("explainAll candidates %+v: want the infinite cost as null and load_guarded", c)
	}
}
