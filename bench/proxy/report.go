package proxy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/procfs"
)

// Report is the outcome of a benchmark run; it renders as markdown and JSON.
type Report struct {
	// Command is the command line that produced the report; set by the caller.
	Command   string     `json:"command"`
	Started   time.Time  `json:"started"`
	Finished  time.Time  `json:"finished"`
	Machine   Machine    `json:"machine"`
	Settings  Settings   `json:"settings"`
	NginxConf string     `json:"nginx_conf,omitempty"`
	Windows   []Window   `json:"windows"`
	Summaries []Summary  `json:"summaries"`
	Added     []Added    `json:"added_latency"`
	Goals     []Goal     `json:"goals"`
	Profiles  []Profile  `json:"profiles,omitempty"`
	cfg       *Config    // not reported: the settings above are
	samples   [][]Sample // OK samples per window, parallel to Windows
}

// Machine describes where the run happened.
type Machine struct {
	CPUModel   string `json:"cpu_model"`
	Cores      int    `json:"cores"`
	Kernel     string `json:"kernel"`
	GoVersion  string `json:"go_version"`
	Nginx      string `json:"nginx_version,omitempty"`
	Kvroute    string `json:"kvroute_version,omitempty"`
	LoadBefore string `json:"loadavg_before"`
	LoadAfter  string `json:"loadavg_after"`
}

// Settings are the benchmark parameters.
type Settings struct {
	Mode            string     `json:"mode"`
	Workloads       []Workload `json:"workloads"`
	Rounds          int        `json:"rounds"`
	DurationS       float64    `json:"duration_s"`
	WarmupS         float64    `json:"warmup_s"`
	Workers         int        `json:"workers"`
	RequestBytes    int        `json:"request_bytes"`
	CompletionBytes int        `json:"completion_bytes"`
	Chunks          int        `json:"chunks"`
	ChunkGap        string     `json:"chunk_gap"`
	Tokenize        bool       `json:"upstream_tokenize"`
	NginxWorkers    int        `json:"nginx_worker_processes,omitempty"`
	Policy          string     `json:"kvroute_policy,omitempty"`
	KvrouteTokenize string     `json:"kvroute_tokenize,omitempty"`
}

// CPU is CPU time in seconds during a measured window (or the sum over windows).
type CPU struct {
	// Proxy is the proxy's processes (nginx: master and workers); 0 for direct.
	Proxy float64 `json:"proxy"`
	// Upstream is the fake upstream process.
	Upstream float64 `json:"upstream"`
	// Loadgen is the harness process, which runs the load generator.
	Loadgen float64 `json:"loadgen"`
	// Machine is every process on every core (from /proc/stat).
	Machine float64 `json:"machine"`
	// Others is Machine minus the three above: other people's work on the machine.
	Others float64 `json:"others"`
}

func (c *CPU) add(o CPU) {
	c.Proxy += o.Proxy
	c.Upstream += o.Upstream
	c.Loadgen += o.Loadgen
	c.Machine += o.Machine
	c.Others += o.Others
}

// Window is one measured window: one target, one workload, one round. Latencies are of
// the successful requests only; failures are counted in Errors.
type Window struct {
	Round    int            `json:"round"`
	Workload string         `json:"workload"`
	Target   string         `json:"target"`
	Sent     int            `json:"sent"`
	OK       int            `json:"ok"`
	Errors   map[string]int `json:"errors,omitempty"`
	WallS    float64        `json:"wall_s"`
	// Latency is to the last byte of the answer, from the scheduled send time.
	Latency Percentiles `json:"latency"`
	// First is to the first chunk of a stream; nil for non-streaming workloads.
	First *Percentiles `json:"first_chunk,omitempty"`
	// Lateness is how late the generator sent requests compared with the schedule.
	Lateness Percentiles `json:"dispatch_lateness"`
	CPU      CPU         `json:"cpu_s"`
}

// Summary aggregates the windows of one target on one workload over all rounds.
type Summary struct {
	Workload string       `json:"workload"`
	Target   string       `json:"target"`
	Sent     int          `json:"sent"`
	OK       int          `json:"ok"`
	Failed   int          `json:"failed"`
	WallS    float64      `json:"wall_s"`
	Latency  Percentiles  `json:"latency"`
	First    *Percentiles `json:"first_chunk,omitempty"`
	Lateness Percentiles  `json:"dispatch_lateness"`
	CPU      CPU          `json:"cpu_s"`
	// Throughput is successful requests per wall second.
	Throughput float64 `json:"throughput_rps"`
	// PerProxyCPU is successful requests per CPU-second of the proxy; 0 for direct.
	PerProxyCPU float64 `json:"rps_per_proxy_cpu_s"`
}

// Added is a proxy's added latency: its percentile minus direct's, in microseconds.
type Added struct {
	Workload string  `json:"workload"`
	Target   string  `json:"target"`
	Metric   string  `json:"metric"` // "end" or "first_chunk"
	P50      float64 `json:"p50_us"`
	P99      float64 `json:"p99_us"`
}

// Goal is one of the goals with the measured ratio of kvroute to nginx.
type Goal struct {
	Workload string  `json:"workload"`
	Name     string  `json:"name"`
	Kvroute  float64 `json:"kvroute"`
	Nginx    float64 `json:"nginx"`
	Ratio    float64 `json:"ratio"`
	Want     string  `json:"want"`
	// Met is nil when the ratio is undefined (nginx's value is not positive).
	Met *bool `json:"met"`
	// RoundRatios is the same ratio computed within each round (NaN, written null, when
	// undefined in that round); Median is their median over the defined ones. Pooled
	// percentiles are dominated by the worst round; the median is not.
	RoundRatios []float64 `json:"-"`
	Median      float64   `json:"-"`
}

func newReport(cfg *Config) *Report {
	r := &Report{Started: time.Now().UTC(), cfg: cfg, Machine: machineFacts(cfg.Nginx)}
	if cfg.Kvroute != nil {
		// `kvroute version`; a kvroute that does not know it leaves the field empty.
		c := exec.Command(cfg.Kvroute.Argv[0], append(cfg.Kvroute.Argv[1:], "version")...)
		c.Env = append(os.Environ(), cfg.Kvroute.Env...)
		if out, err := c.Output(); err == nil {
			r.Machine.Kvroute = strings.TrimSpace(string(out))
		}
	}
	r.Settings = Settings{
		Mode: cfg.Mode, Workloads: cfg.Workloads, Rounds: cfg.Rounds, DurationS: cfg.Duration.Seconds(),
		WarmupS: cfg.Warmup.Seconds(), Workers: cfg.Workers, RequestBytes: cfg.RequestBytes,
		CompletionBytes: cfg.CompletionBytes, Chunks: cfg.Chunks, ChunkGap: cfg.ChunkGap.String(),
		Tokenize: !cfg.NoTokenize, Policy: cfg.Policy, KvrouteTokenize: cfg.Tokenize,
	}
	if cfg.Nginx != "" {
		r.Settings.NginxWorkers = cfg.NginxWorkers
	}
	return r
}

func machineFacts(nginx string) Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), LoadBefore: loadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if nginx != "" {
		if out, err := exec.Command(nginx, "-v").CombinedOutput(); err == nil {
			m.Nginx = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "nginx version:"))
		}
	}
	return m
}

func loadAvg() string {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return ""
	}
	l, err := fs.LoadAvg()
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%.2f %.2f %.2f", l.Load1, l.Load5, l.Load15)
}

// newWindow summarises target number ti of a run. The upstream, loadgen, machine and
// others CPU are of the whole run, shared by all its targets.
func newWindow(round int, w Workload, target string, ti int, res *LoadResult, before, after snapshot) (Window, []Sample) {
	win := Window{Round: round + 1, Workload: w.Name, Target: target, WallS: after.at.Sub(before.at).Seconds()}
	var ok []Sample
	for _, s := range res.Samples {
		if s.Target != ti {
			continue
		}
		win.Sent++
		if s.Err == "" {
			ok = append(ok, s)
			continue
		}
		if win.Errors == nil {
			win.Errors = map[string]int{}
		}
		win.Errors[s.Err]++
	}
	win.OK = len(ok)
	win.Latency, win.First, win.Lateness = summarize(ok, w.Stream)
	win.CPU = CPU{
		Proxy:    after.proxy[ti] - before.proxy[ti],
		Upstream: after.upstream - before.upstream,
		Loadgen:  after.loadgen - before.loadgen,
		Machine:  after.machine - before.machine,
	}
	win.CPU.Others = win.CPU.Machine - win.CPU.Upstream - win.CPU.Loadgen
	for i := range after.proxy {
		win.CPU.Others -= after.proxy[i] - before.proxy[i]
	}
	return win, ok
}

func summarize(ok []Sample, stream bool) (end Percentiles, first *Percentiles, late Percentiles) {
	e, f, l := make([]time.Duration, len(ok)), make([]time.Duration, len(ok)), make([]time.Duration, len(ok))
	for i, s := range ok {
		e[i], f[i], l[i] = s.End, s.First, s.Lateness
	}
	end, late = percentiles(e), percentiles(l)
	if stream {
		p := percentiles(f)
		first = &p
	}
	return end, first, late
}

func (r *Report) addWindow(w Window, ok []Sample) {
	r.Windows = append(r.Windows, w)
	r.samples = append(r.samples, ok)
}

// finish computes the summaries, added latencies and goals from the windows.
func (r *Report) finish() {
	r.Finished = time.Now().UTC()
	r.Machine.LoadAfter = loadAvg()
	r.Summaries, r.Added, r.Goals = nil, nil, nil
	for _, w := range r.cfg.Workloads {
		var targets []string
		for _, win := range r.Windows {
			if win.Workload == w.Name && !contains(targets, win.Target) {
				targets = append(targets, win.Target)
			}
		}
		sort.SliceStable(targets, func(i, j int) bool { return targetOrder(targets[i]) < targetOrder(targets[j]) })
		for _, t := range targets {
			s := Summary{Workload: w.Name, Target: t}
			var ok []Sample
			for i, win := range r.Windows {
				if win.Workload != w.Name || win.Target != t {
					continue
				}
				s.Sent += win.Sent
				s.OK += win.OK
				s.WallS += win.WallS
				s.CPU.add(win.CPU)
				ok = append(ok, r.samples[i]...)
			}
			s.Failed = s.Sent - s.OK
			s.Latency, s.First, s.Lateness = summarize(ok, w.Stream)
			if s.WallS > 0 {
				s.Throughput = float64(s.OK) / s.WallS
			}
			if s.CPU.Proxy > 0 {
				s.PerProxyCPU = float64(s.OK) / s.CPU.Proxy
			}
			r.Summaries = append(r.Summaries, s)
		}
		find := func(t string) *Summary {
			for i := range r.Summaries {
				if r.Summaries[i].Workload == w.Name && r.Summaries[i].Target == t {
					return &r.Summaries[i]
				}
			}
			return nil
		}
		direct := find("direct")
		if direct == nil {
			continue
		}
		added := map[string]map[string]Added{}
		for _, t := range targets {
			if t == "direct" {
				continue
			}
			s := find(t)
			added[t] = map[string]Added{}
			a := Added{Workload: w.Name, Target: t, Metric: "end", P50: s.Latency.P50 - direct.Latency.P50, P99: s.Latency.P99 - direct.Latency.P99}
			r.Added = append(r.Added, a)
			added[t]["end"] = a
			if w.Stream && s.First != nil && direct.First != nil {
				a := Added{Workload: w.Name, Target: t, Metric: "first_chunk", P50: s.First.P50 - direct.First.P50, P99: s.First.P99 - direct.First.P99}
				r.Added = append(r.Added, a)
				added[t]["first_chunk"] = a
			}
		}
		kv, ng := find("kvroute"), find("nginx")
		if kv == nil || ng == nil {
			continue
		}
		metrics := []string{"end"}
		if w.Stream {
			metrics = append(metrics, "first_chunk")
		}
		for _, m := range metrics {
			k, n := added["kvroute"][m].P99, added["nginx"][m].P99
			g := newGoal(w.Name, "added p99 ("+metricLabel(m)+"), kvroute / nginx", k, n, "<= 1.5", func(x float64) bool { return x <= 1.5 })
			g.setRounds(r.perRound(w.Name, func(t string, win *Window, direct *Window) float64 {
				return p99(win, m) - p99(direct, m)
			}))
			r.Goals = append(r.Goals, g)
		}
		g := newGoal(w.Name, "req/s per proxy CPU-second, kvroute / nginx", kv.PerProxyCPU, ng.PerProxyCPU, ">= 0.5", func(x float64) bool { return x >= 0.5 })
		g.setRounds(r.perRound(w.Name, func(t string, win *Window, _ *Window) float64 {
			if win.CPU.Proxy <= 0 {
				return math.NaN()
			}
			return float64(win.OK) / win.CPU.Proxy
		}))
		r.Goals = append(r.Goals, g)
	}
}

// p99 returns a window's p99 of the metric ("end" or "first_chunk").
func p99(w *Window, metric string) float64 {
	if metric == "first_chunk" && w.First != nil {
		return w.First.P99
	}
	return w.Latency.P99
}

// perRound returns, for each round, value(kvroute) / value(nginx), where value sees the
// target's window of that round and direct's; NaN when a window is missing or nginx's
// value is not positive.
func (r *Report) perRound(workload string, value func(target string, win, direct *Window) float64) []float64 {
	find := func(round int, target string) *Window {
		for i := range r.Windows {
			if w := &r.Windows[i]; w.Round == round && w.Workload == workload && w.Target == target {
				return w
			}
		}
		return nil
	}
	out := make([]float64, r.cfg.Rounds)
	for i := range out {
		d, k, n := find(i+1, "direct"), find(i+1, "kvroute"), find(i+1, "nginx")
		out[i] = math.NaN()
		if d == nil || k == nil || n == nil {
			continue
		}
		if nv := value("nginx", n, d); nv > 0 {
			out[i] = value("kvroute", k, d) / nv
		}
	}
	return out
}

// setRounds stores the per-round ratios and their median.
func (g *Goal) setRounds(ratios []float64) {
	g.RoundRatios = ratios
	var ok []float64
	for _, v := range ratios {
		if !math.IsNaN(v) {
			ok = append(ok, v)
		}
	}
	g.Median = math.NaN()
	if len(ok) > 0 {
		sort.Float64s(ok)
		if len(ok)%2 == 1 {
			g.Median = ok[len(ok)/2]
		} else {
			g.Median = (ok[len(ok)/2-1] + ok[len(ok)/2]) / 2
		}
	}
}

func newGoal(workload, name string, kv, ng float64, want string, ok func(float64) bool) Goal {
	g := Goal{Workload: workload, Name: name, Kvroute: kv, Nginx: ng, Want: want}
	if ng > 0 {
		g.Ratio = kv / ng
		met := ok(g.Ratio)
		g.Met = &met
	} else {
		g.Ratio = math.NaN()
	}
	return g
}

// MarshalJSON writes a NaN ratio as null.
func (g Goal) MarshalJSON() ([]byte, error) {
	type plain Goal
	var ratio *float64
	if !math.IsNaN(g.Ratio) {
		ratio = &g.Ratio
	}
	nullNaN := func(v float64) *float64 {
		if math.IsNaN(v) {
			return nil
		}
		return &v
	}
	rounds := make([]*float64, len(g.RoundRatios))
	for i, v := range g.RoundRatios {
		rounds[i] = nullNaN(v)
	}
	return json.Marshal(struct {
		plain
		Ratio       *float64   `json:"ratio"`
		RoundRatios []*float64 `json:"round_ratios"`
		Median      *float64   `json:"median_round_ratio"`
	}{plain(g), ratio, rounds, nullNaN(g.Median)})
}

func metricLabel(m string) string {
	if m == "first_chunk" {
		return "first chunk"
	}
	return "full response"
}

func targetOrder(t string) int {
	switch t {
	case "direct":
		return 0
	case "kvroute":
		return 1
	case "nginx":
		return 2
	}
	return 3
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// JSON returns the report as indented JSON.
func (r *Report) JSON() ([]byte, error) {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("report json: %w", err)
	}
	return append(b, '\n'), nil
}
