package configs_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvroute/kvroute/cmd/stack"
	"github.com/kvroute/kvroute/configs"
)

// grafanaDashboard is the part of Grafana's dashboard model the test checks.
type grafanaDashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name string `json:"name"`
			Type string `json:"type"`
		} `json:"list"`
	} `json:"templating"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

var metricName = regexp.MustCompile(`\bkvroute_[a-z0-9_]+`)

// registered reports whether reg holds a collector for the metric name: registering a
// probe with that name and its own help text fails exactly when a metric of that name is
// already registered (the registry rejects a second descriptor of one name with another
// help or other labels).
func registered(reg *prometheus.Registry, name string) bool {
	probe := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: "grafana_test probe"})
	if err := reg.Register(probe); err != nil {
		return true
	}
	reg.Unregister(probe)
	return false
}

// The Grafana dashboard is valid JSON of Grafana's model, and every kvroute_* metric it
// queries is registered by a router Stack (the one `kvroute serve` runs, with ZMQ event
// feeds and engine tokenization, as configured by default).
func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile("grafana/kvroute.json")
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	dec := json.NewDecoder(strings.NewReader(string(data)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("grafana/kvroute.json: %v", err)
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion < 30 || len(d.Panels) < 10 {
		t.Errorf("dashboard uid %q title %q schema %d, %d panels", d.UID, d.Title, d.SchemaVersion, len(d.Panels))
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	for _, want := range []string{"datasource", "worker", "model"} {
		if !vars[want] {
			t.Errorf("no $%s template variable", want)
		}
	}

	cfg := configs.Default()
	cfg.Admin.Listen = ""
	cfg.Workers = []configs.Worker{{ID: "a", URL: "http://127.0.0.1:1", Events: "tcp://127.0.0.1:2", MaxConns: 1}}
	st, err := stack.NewStack(&cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if registered(st.Registry, "kvroute_grafana_test_absent_total") {
		t.Fatal("the probe finds a metric nobody registered: the check below would prove nothing")
	}

	ids := map[int]bool{}
	queried := map[string]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Title == "" || p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %d %q: no title or a bad gridPos %+v", p.ID, p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: datasource %+v, %d targets; want ${datasource} and queries", p.Title, p.Datasource, len(p.Targets))
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if tg.RefID == "" || refs[tg.RefID] || strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") ||
				strings.Count(tg.Expr, "{") != strings.Count(tg.Expr, "}") {
				t.Errorf("panel %q: target %q: missing or repeated refId, or unbalanced brackets", p.Title, tg.Expr)
			}
			refs[tg.RefID] = true
			names := metricName.FindAllString(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: target %q queries no kvroute metric", p.Title, tg.Expr)
			}
			for _, n := range names {
				queried[n] = true
			}
		}
	}
	var missing []string
	for n := range queried {
		base := n
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(n, suffix); ok && registered(st.Registry, b) {
				base = b
			}
		}
		if !registered(st.Registry, base) {
			missing = append(missing, n)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("the dashboard queries metrics no code registers: %v", missing)
	}
	if len(queried) < 25 {
		t.Errorf("the dashboard queries only %d metrics", len(queried))
	}
}
