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
	Command   string    `json:"command"`
	Started   time.Time `json:"started"`
	Finished  time.Time `json:"finished"`
	Machine   Machine   `json:"machine"`
	Settings  Settings  `json:"settings"`
	NginxConf string    `json:"nginx_conf,omitempty"`
	Windows   []Window  `json:"windows"`
	Summaries []Summary `json:"summaries"`
	Added     []Added   `json:"added_latency"`
	Goals     []Goal    `json:"goals"`
	Profiles  []Profile `json:"profiles,omitempty"`
	// Peaks are the closed-loop windows of a peak run (Config.Peak), PeakSummaries
	// their summaries, PeakBasis per workload whose peak set the rate of the latency
	// windows.
	Peaks         []Window          `json:"peak_windows,omitempty"`
	PeakSummaries []Summary         `json:"peak_summaries,omitempty"`
	PeakBasis     map[string]string `json:"peak_basis,omitempty"`
	cfg           *Config           // not reported: the settings above are
	samples       [][]Sample        // OK samples per window, parallel to Windows
	peakSamples   [][]Sample        // the same for Peaks
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
	// PeakConns is the closed-loop clients of a peak run's peak windows; 0 when the run
	// measured no peak.
	PeakConns int `json:"peak_conns,omitempty"`
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
	// The settings keep their own copy: a peak run sets the rates later (setPeakRate).
	r.Settings.Workloads = append([]Workload(nil), cfg.Workloads...)
	if cfg.Peak {
		r.Settings.PeakConns = cfg.PeakConns
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

func (r *Report) addPeak(w Window, ok []Sample) {
	r.Peaks = append(r.Peaks, w)
	r.peakSamples = append(r.peakSamples, ok)
}

// halfPeak returns the peak throughput (successful requests per wall second, the median
// over the rounds' windows) that sets a workload's rate in a peak run: nginx's, else
// kvroute's, else direct's, and a phrase naming it.
func (r *Report) halfPeak(workload string) (float64, string) {
	for _, t := range []string{"nginx", "kvroute", "direct"} {
		var rates []float64
		for _, w := range r.Peaks {
			if w.Workload == workload && w.Target == t && w.WallS > 0 {
				rates = append(rates, float64(w.OK)/w.WallS)
			}
		}
		if len(rates) > 0 {
			m := median(rates)
			return m, fmt.Sprintf("%s's peak (%.0f req/s, median of %d rounds)", t, m, len(rates))
		}
	}
	return 0, ""
}

// setPeakRate records the rate a peak run chose for workload number wi.
func (r *Report) setPeakRate(wi int, rate float64, basis string) {
	r.Settings.Workloads[wi].Rate = rate
	if r.PeakBasis == nil {
		r.PeakBasis = map[string]string{}
	}
	r.PeakBasis[r.Settings.Workloads[wi].Name] = "half of " + basis
}

// median returns the median of v (not empty); v is sorted in place.
func median(v []float64) float64 {
	sort.Float64s(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// finish computes the summaries, added latencies and goals from the windows.
func (r *Report) finish() {
	r.Finished = time.Now().UTC()
	r.Machine.LoadAfter = loadAvg()
	r.Added, r.Goals = nil, nil
	r.Summaries = summaries(r.cfg.Workloads, r.Windows, r.samples)
	r.PeakSummaries = summaries(r.cfg.Workloads, r.Peaks, r.peakSamples)
	for _, w := range r.cfg.Workloads {
		direct := findSummary(r.Summaries, w.Name, "direct")
		if direct == nil {
			continue
		}
		added := map[string]map[string]Added{}
		for _, s := range r.Summaries {
			if s.Workload != w.Name || s.Target == "direct" {
				continue
			}
			t := s.Target
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
		if findSummary(r.Summaries, w.Name, "kvroute") == nil || findSummary(r.Summaries, w.Name, "nginx") == nil {
			continue
		}
		if r.cfg.Peak {
			r.peakGoals(w, added)
		} else {
			r.fixedRateGoals(w, added)
		}
	}
}

// fixedRateGoals are issue 2's goals: added p99 at most 1.5x nginx's, and at least half
// of nginx's requests per proxy CPU-second, at the workload's fixed rate.
func (r *Report) fixedRateGoals(w Workload, added map[string]map[string]Added) {
	for _, m := range latencyMetrics(w) {
		k, n := added["kvroute"][m].P99, added["nginx"][m].P99
		g := newGoal(w.Name, "added p99 ("+metricLabel(m)+"), kvroute / nginx", k, n, "<= 1.5", func(x float64) bool { return x <= 1.5 })
		g.setRounds(r.perRound(r.Windows, w.Name, func(win, direct *Window) float64 {
			return pct(win, m, 99) - pct(direct, m, 99)
		}))
		r.Goals = append(r.Goals, g)
	}
	kv, ng := findSummary(r.Summaries, w.Name, "kvroute"), findSummary(r.Summaries, w.Name, "nginx")
	g := newGoal(w.Name, "req/s per proxy CPU-second, kvroute / nginx", kv.PerProxyCPU, ng.PerProxyCPU, ">= 0.5", func(x float64) bool { return x >= 0.5 })
	g.setRounds(r.perRound(r.Windows, w.Name, perProxyCPU))
	r.Goals = append(r.Goals, g)
}

// peakGoals are issue 21's goals: requests per proxy CPU-second at the peak at least
// 0.9x nginx's with round_robin (0.8x with another policy), and the added latency, p50
// and p99, at half of nginx's peak at most 1.2x nginx's.
func (r *Report) peakGoals(w Workload, added map[string]map[string]Added) {
	for _, m := range latencyMetrics(w) {
		for _, q := range []int{50, 99} {
			k, n := added["kvroute"][m].P99, added["nginx"][m].P99
			if q == 50 {
				k, n = added["kvroute"][m].P50, added["nginx"][m].P50
			}
			g := newGoal(w.Name, fmt.Sprintf("added p%d (%s) at half of the peak, kvroute / nginx", q, metricLabel(m)), k, n, "<= 1.2", func(x float64) bool { return x <= 1.2 })
			g.setRounds(r.perRound(r.Windows, w.Name, func(win, direct *Window) float64 {
				return pct(win, m, q) - pct(direct, m, q)
			}))
			r.Goals = append(r.Goals, g)
		}
	}
	kv, ng := findSummary(r.PeakSummaries, w.Name, "kvroute"), findSummary(r.PeakSummaries, w.Name, "nginx")
	if kv == nil || ng == nil {
		return
	}
	want := 0.9
	if r.cfg.Policy != "round_robin" {
		want = 0.8
	}
	g := newGoal(w.Name, "req/s per proxy CPU-second at the peak, kvroute / nginx", kv.PerProxyCPU, ng.PerProxyCPU,
		fmt.Sprintf(">= %.1f", want), func(x float64) bool { return x >= want })
	g.setRounds(r.perRound(r.Peaks, w.Name, perProxyCPU))
	r.Goals = append(r.Goals, g)
}

func latencyMetrics(w Workload) []string {
	if w.Stream {
		return []string{"end", "first_chunk"}
	}
	return []string{"end"}
}

func perProxyCPU(win, _ *Window) float64 {
	if win.CPU.Proxy <= 0 {
		return math.NaN()
	}
	return float64(win.OK) / win.CPU.Proxy
}

// summaries aggregates windows (with their OK samples) per workload and target, targets
// in report order.
func summaries(workloads []Workload, windows []Window, samples [][]Sample) []Summary {
	var out []Summary
	for _, w := range workloads {
		var targets []string
		for _, win := range windows {
			if win.Workload == w.Name && !contains(targets, win.Target) {
				targets = append(targets, win.Target)
			}
		}
		sort.SliceStable(targets, func(i, j int) bool { return targetOrder(targets[i]) < targetOrder(targets[j]) })
		for _, t := range targets {
			s := Summary{Workload: w.Name, Target: t}
			var ok []Sample
			for i, win := range windows {
				if win.Workload != w.Name || win.Target != t {
					continue
				}
				s.Sent += win.Sent
				s.OK += win.OK
				s.WallS += win.WallS
				s.CPU.add(win.CPU)
				ok = append(ok, samples[i]...)
			}
			s.Failed = s.Sent - s.OK
			s.Latency, s.First, s.Lateness = summarize(ok, w.Stream)
			if s.WallS > 0 {
				s.Throughput = float64(s.OK) / s.WallS
			}
			if s.CPU.Proxy > 0 {
				s.PerProxyCPU = float64(s.OK) / s.CPU.Proxy
			}
			out = append(out, s)
		}
	}
	return out
}

func findSummary(ss []Summary, workload, target string) *Summary {
	for i := range ss {
		if ss[i].Workload == workload && ss[i].Target == target {
			return &ss[i]
		}
	}
	return nil
}

// pct returns a window's p50 or p99 of the metric ("end" or "first_chunk").
func pct(w *Window, metric string, q int) float64 {
	p := &w.Latency
	if metric == "first_chunk" && w.First != nil {
		p = w.First
	}
	if q == 50 {
		return p.P50
	}
	return p.P99
}

// perRound returns, for each round, value(kvroute) / value(nginx), where value sees the
// target's window of that round and direct's; NaN when a window is missing or nginx's
// value is not positive.
func (r *Report) perRound(windows []Window, workload string, value func(win, direct *Window) float64) []float64 {
	find := func(round int, target string) *Window {
		for i := range windows {
			if w := &windows[i]; w.Round == round && w.Workload == workload && w.Target == target {
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
		if nv := value(n, d); nv > 0 {
			out[i] = value(k, d) / nv
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
		g.Median = median(ok)
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
