package chaos

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/router/admin"
)

// Config reloads through the admin API (POST /api/reload) while requests run: each one
// applies the changed cache_aware weights at once and nothing else, and no request is
// lost or hangs across the swaps of the policy.
func TestConfigReloadUnderLoad(t *testing.T) {
	const token = "chaos-admin-token"
	path := filepath.Join(t.TempDir(), "kvroute.yaml")
	e := startEnv(t, EnvOptions{ConfigFile: path, Mutate: func(_ *sim.FleetConfig, c *configs.Config) {
		c.Admin.Listen, c.Admin.Token = "127.0.0.1:0", token
	}})
	if e.Stack.AdminAddr() == "" {
		t.Fatal("admin API not listening")
	}
	// The file the router was started from, with a different overlap weight.
	overlap := regexp.MustCompile(`(?m)^(\s+overlap_weight:).*$`)
	writeConfig := func(w float64) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !overlap.Match(b) {
			t.Fatalf("no overlap_weight in %s", b)
		}
		if err := os.WriteFile(path, overlap.ReplaceAll(b, []byte(fmt.Sprintf("${1} %v", w))), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	reload := func() (admin.ReloadReport, error) {
		var rep admin.ReloadReport
		req, _ := http.NewRequest(http.MethodPost, "http://"+e.Stack.AdminAddr()+"/api/reload", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return rep, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return rep, fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		return rep, json.Unmarshal(b, &rep)
	}

	l := startLoad(LoadConfig{URL: e.URL, Concurrency: 8, StreamFraction: 0.5})
	l.waitRequests(t, 10)
	reloads := 6
	if full {
		reloads = 30
	}
	weights := []float64{2, 6, 1, 4}
	for i := 0; i < reloads; i++ {
		w := weights[i%len(weights)]
		writeConfig(w)
		rep, err := reload()
		if err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		if len(rep.Applied) != 1 || len(rep.RestartRequired) != 0 {
			t.Errorf("reload %d (overlap_weight %v): applied %q, restart required %q; want only the weight applied", i, w, rep.Applied, rep.RestartRequired)
		}
		time.Sleep(phase(200*time.Millisecond, 500*time.Millisecond))
	}
	tally := l.stop()
	checkContract(t, e, "config reload under load (POST /api/reload, new cache_aware weights)", tally,
		fmt.Sprintf("%d reloads, each applied the new overlap_weight and required no restart", reloads))
}
