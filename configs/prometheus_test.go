package configs

import (
	"os/exec"
	"testing"
)

// The shipped alert rules are valid and fire as their unit tests say (promtool, from
// Debian's prometheus package: scripts/deps.d/70-promtool.sh).
func TestPrometheusRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: run scripts/deps.d/70-promtool.sh (Debian package prometheus)")
	}
	for _, args := range [][]string{
		{"check", "rules", "prometheus/kvroute-alerts.yaml"},
		{"test", "rules", "prometheus/kvroute-alerts_test.yaml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}
