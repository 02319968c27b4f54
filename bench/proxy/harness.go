package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
)

// Workload is one kind of request offered at a fixed rate.
type Workload struct {
	// Name labels the workload in the report.
	Name string `json:"name"`
	// Stream asks for an SSE stream of Config.Chunks chunks instead of one JSON answer.
	Stream bool `json:"stream"`
	// Rate is the offered load in requests per second.
	Rate float64 `json:"rate_rps"`
}

// Config configures a benchmark run. Zero fields get the defaults stated.
type Config struct {
	// Workloads are measured in order. Default: DefaultWorkloads.
	Workloads []Workload
	// Mode says how the targets share the time: ModeMixed (the default) or
	// ModeSequential.
	Mode string
	// Rounds is the number of times every target is measured on every workload, each
	// round in a different target order. Default 3.
	Rounds int
	// Duration is the measured window of one workload and round (ModeMixed) or of one
	// target, workload and round (ModeSequential). Default 20s.
	Duration time.Duration
	// Warmup is the unmeasured load sent at the same rate before each window (it opens
	// the connections). Default 2s.
	Warmup time.Duration
	// Workers is the number of fake workers (ports of the one fake upstream process) the
	// proxies balance over, round robin. Default 2.
	Workers int
	// RequestBytes is the size of the chat request body. Default 2048.
	RequestBytes int
	// CompletionBytes is the size of a non-streaming answer. Default 2048.
	CompletionBytes int
	// Chunks is the number of SSE chunks of a streaming answer. Default 200.
	Chunks int
	// ChunkGap is the upstream's pause between chunks. Default 0.
	ChunkGap time.Duration
	// NoTokenize makes the fake upstream answer 404 to /tokenize. Default false: it
	// serves /tokenize as vLLM does (kvroute asks it for the prompt's tokens).
	NoTokenize bool
	// Upstream starts the fake upstream process; the harness appends UpstreamMain's
	// flags. Required.
	Upstream Command
	// Kvroute starts kvroute; the harness appends "serve --listen ADDR --worker URL...
	// --policy POLICY [--tokenize MODE]". Nil leaves kvroute out.
	Kvroute *Command
	// Policy is kvroute's routing policy (its --policy flag). Default round_robin.
	Policy string
	// Tokenize is kvroute's tokenize mode (its --tokenize flag: auto, engine, approx or
	// local:PATH); "" leaves kvroute's default.
	Tokenize string
	// DataPlane is kvroute's data plane (its --data-plane flag: fasthttp or event_loop);
	// "" is kvroute's default.
	DataPlane string
	// DataPlaneLoops is kvroute's --data-plane-loops; 0 leaves kvroute's default.
	DataPlaneLoops int
	// Nginx is the nginx executable; "" leaves nginx out.
	Nginx string
	// NginxWorkers is nginx's worker_processes. Default runtime.NumCPU().
	NginxWorkers int
	// Perf is the perf executable used to profile kvroute after the measurement, under
	// the same load for ProfileDuration per workload; "" skips profiling.
	Perf string
	// ProfileDuration is the length of each profile. Default 10s.
	ProfileDuration time.Duration
	// Dir holds nginx's files and the profiles. Default: a new temporary directory,
	// removed at the end.
	Dir string
	// Log receives progress lines; nil discards them.
	Log io.Writer
	// Peak, when set, first measures each target's peak throughput, PeakConns clients in
	// a closed loop (as wrk -c does), one target per window; then it measures latency
	// with each workload offered at half of nginx's peak (kvroute's without nginx,
	// direct's without either), one target per window (the mode is sequential whatever
	// Mode says). The workloads' rates are set by the run. Default false.
	Peak bool
	// PeakConns is the number of closed-loop clients of a peak window. Default 16.
	PeakConns int
}

// The ways the targets of a run share the time.
const (
	// ModeMixed measures all targets in the same windows: the generator sends request i
	// to target i mod n, each target at the workload's rate, so noise from other work on
	// the machine reaches every target alike, request by request. The proxies compete
	// with each other for the CPU as well.
	ModeMixed = "mixed"
	// ModeSequential measures one target per window, the targets one after the other in
	// an order rotated every round; each proxy has the machine to itself (but for other
	// people's work) during its window.
	ModeSequential = "sequential"
)

// DefaultWorkloads are the two workloads of the proxy-overhead benchmark: a 2 KB
// non-streaming chat request at 1000 req/s and a 200-chunk stream at 100 req/s, both
// low enough to leave two shared cores unsaturated.
var DefaultWorkloads = []Workload{
	{Name: "chat-2k", Stream: false, Rate: 1000},
	{Name: "stream-200", Stream: true, Rate: 100},
}

func (c *Config) defaults() error {
	if len(c.Workloads) == 0 {
		c.Workloads = DefaultWorkloads
	}
	// A peak run sets the rates: never write them into the caller's slice.
	c.Workloads = append([]Workload(nil), c.Workloads...)
	if c.Peak {
		c.Mode = ModeSequential
		if c.PeakConns <= 0 {
			c.PeakConns = 16
		}
		for i := range c.Workloads {
			c.Workloads[i].Rate = 1 // set from the peak before it is used
		}
	}
	switch c.Mode {
	case "":
		c.Mode = ModeMixed
	case ModeMixed, ModeSequential:
	default:
		return fmt.Errorf("harness: mode %q: want %q or %q", c.Mode, ModeMixed, ModeSequential)
	}
	if c.Rounds <= 0 {
		c.Rounds = 3
	}
	if c.Duration <= 0 {
		c.Duration = 20 * time.Second
	}
	if c.Warmup <= 0 {
		c.Warmup = 2 * time.Second
	}
	if c.Workers <= 0 {
		c.Workers = 2
	}
	if c.Policy == "" {
		c.Policy = "round_robin"
	}
	if c.RequestBytes <= 0 {
		c.RequestBytes = 2048
	}
	if c.CompletionBytes <= 0 {
		c.CompletionBytes = 2048
	}
	if c.Chunks <= 0 {
		c.Chunks = 200
	}
	if c.NginxWorkers <= 0 {
		c.NginxWorkers = runtime.NumCPU()
	}
	if c.ProfileDuration <= 0 {
		c.ProfileDuration = 10 * time.Second
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	if len(c.Upstream.Argv) == 0 {
		return errors.New("harness: no fake upstream command")
	}
	for _, w := range c.Workloads {
		if w.Rate <= 0 || w.Name == "" {
			return fmt.Errorf("harness: workload %q: needs a name and a positive rate, got %v", w.Name, w.Rate)
		}
	}
	return nil
}

// target is one way of reaching the workers: directly or through a proxy.
type target struct {
	name string
	urls []string
	proc *process
	// pids lists the processes whose CPU time is the proxy's; nil for direct.
	pids []int
}

// harness is one benchmark run in progress.
type harness struct {
	cfg      Config
	fs       procfs.FS
	dir      string
	upstream *process
	workers  []string // base URLs of the fake workers
	targets  []*target
	report   *Report
}

// Run starts the fake upstream and the proxies, measures every target on every workload
// in cfg.Rounds interleaved rounds, and returns the report. The child processes are
// stopped before it returns.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	h := &harness{cfg: cfg, fs: fs}
	if cfg.Dir != "" {
		// nginx resolves relative paths against its prefix: hand it absolute ones.
		if h.dir, err = filepath.Abs(cfg.Dir); err != nil {
			return nil, fmt.Errorf("harness: %w", err)
		}
	} else {
		d, err := os.MkdirTemp("", "kvbench-proxy-")
		if err != nil {
			return nil, fmt.Errorf("harness: %w", err)
		}
		defer func() { _ = os.RemoveAll(d) }()
		h.dir = d
	}
	h.report = newReport(&cfg)
	defer func() { _ = h.stopAll() }() // after an error; the normal path checks it below
	if err := h.start(ctx); err != nil {
		return nil, err
	}
	if cfg.Peak {
		if err := h.measurePeaks(ctx); err != nil {
			return nil, err
		}
	}
	if err := h.measure(ctx); err != nil {
		return nil, err
	}
	if cfg.Perf != "" && cfg.Kvroute != nil {
		if err := h.profile(ctx); err != nil {
			return nil, err
		}
	}
	if err := h.stopAll(); err != nil {
		return nil, err
	}
	h.report.finish()
	return h.report, nil
}

func (h *harness) logf(format string, args ...any) {
	fmt.Fprintf(h.cfg.Log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// start launches the fake upstream, then each proxy, and waits until each is ready.
func (h *harness) start(ctx context.Context) error {
	var args []string
	for i := 0; i < h.cfg.Workers; i++ {
		a, err := freeAddr()
		if err != nil {
			return err
		}
		args = append(args, "--listen", a)
		h.workers = append(h.workers, "http://"+a)
	}
	args = append(args, "--chunks", strconv.Itoa(h.cfg.Chunks), "--chunk-gap", h.cfg.ChunkGap.String(),
		"--completion-bytes", strconv.Itoa(h.cfg.CompletionBytes))
	if h.cfg.NoTokenize {
		args = append(args, "--no-tokenize")
	}
	up, err := startProcess("fake upstream", h.cfg.Upstream, filepath.Join(h.dir, "upstream.log"), args...)
	if err != nil {
		return err
	}
	h.upstream = up
	for _, w := range h.workers {
		if err := up.waitReady(ctx, w+"/health", 10*time.Second); err != nil {
			return err
		}
	}
	h.targets = append(h.targets, &target{name: "direct", urls: h.workers})
	h.logf("fake upstream pid %d on %v", up.pid(), h.workers)

	if h.cfg.Kvroute != nil {
		t, err := retryPortTaken(func() (*target, error) { return h.startKvroute(ctx) })
		if err != nil {
			return err
		}
		h.targets = append(h.targets, t)
	}
	if h.cfg.Nginx != "" {
		t, err := retryPortTaken(func() (*target, error) { return h.startNginx(ctx) })
		if err != nil {
			return err
		}
		h.targets = append(h.targets, t)
	}
	return nil
}

// retryPortTaken starts a proxy again on another free port when the one freeAddr chose
// was taken by another process before the child could bind it (the child fails with
// "address already in use"; a large binary takes a while to start, which widens the
// window on a busy machine), at most three times.
func retryPortTaken(start func() (*target, error)) (*target, error) {
	for attempt := 1; ; attempt++ {
		t, err := start()
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return t, err
		}
		if t != nil && t.proc != nil {
			_ = t.proc.stop(time.Second)
		}
	}
}

func (h *harness) startKvroute(ctx context.Context) (*target, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := []string{"serve", "--listen", addr, "--policy", h.cfg.Policy}
	if h.cfg.Tokenize != "" {
		args = append(args, "--tokenize", h.cfg.Tokenize)
	}
	if h.cfg.DataPlane != "" {
		args = append(args, "--data-plane", h.cfg.DataPlane)
	}
	if h.cfg.DataPlaneLoops > 0 {
		args = append(args, "--data-plane-loops", strconv.Itoa(h.cfg.DataPlaneLoops))
	}
	for _, w := range h.workers {
		args = append(args, "--worker", w)
	}
	p, err := startProcess("kvroute", *h.cfg.Kvroute, filepath.Join(h.dir, "kvroute.log"), args...)
	if err != nil {
		return nil, err
	}
	t := &target{name: "kvroute", urls: []string{"http://" + addr}, proc: p, pids: []int{p.pid()}}
	if err := p.waitReady(ctx, "http://"+addr+"/ready", 15*time.Second); err != nil {
		return t, err
	}
	h.logf("kvroute pid %d on %s", p.pid(), addr)
	return t, nil
}

func (h *harness) startNginx(ctx context.Context) (*target, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(h.dir, "nginx")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("nginx dir: %w", err)
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxConf(dir, addr, h.workers, h.cfg.NginxWorkers, os.Geteuid() == 0)), 0o644); err != nil {
		return nil, fmt.Errorf("nginx conf: %w", err)
	}
	h.report.NginxConf = conf
	p, err := startProcess("nginx", Command{Argv: []string{h.cfg.Nginx}}, filepath.Join(dir, "stderr.log"), "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	if err != nil {
		return nil, err
	}
	t := &target{name: "nginx", urls: []string{"http://" + addr}, proc: p}
	if err := p.waitReady(ctx, "http://"+addr+"/health", 10*time.Second); err != nil {
		return t, err
	}
	pids, err := withChildren(h.fs, p.pid())
	if err != nil {
		return t, fmt.Errorf("nginx workers: %w", err)
	}
	t.pids = pids
	h.logf("nginx master pid %d, workers %v on %s", p.pid(), pids[1:], addr)
	return t, nil
}

// nginxConf is a plain round-robin reverse proxy with keep-alive connections to the
// workers, no buffering of responses (streams pass through as they come) and no access
// log (kvroute keeps none either).
func nginxConf(dir, listen string, workers []string, procs int, root bool) string {
	var b strings.Builder
	if root {
		// Workers would run as nobody; keep everything in the temp dir readable.
		b.WriteString("user root;\n")
	}
	fmt.Fprintf(&b, `daemon off;
master_process on;
worker_processes %d;
pid %s/nginx.pid;
error_log %s/error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
    access_log off;
    client_body_temp_path %s/client_body;
    proxy_temp_path %s/proxy;
    fastcgi_temp_path %s/fastcgi;
    uwsgi_temp_path %s/uwsgi;
    scgi_temp_path %s/scgi;
    client_max_body_size 32m;
    client_body_buffer_size 64k;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream workers {
`, procs, dir, dir, dir, dir, dir, dir, dir)
	for _, w := range workers {
		fmt.Fprintf(&b, "        server %s;\n", strings.TrimPrefix(w, "http://"))
	}
	fmt.Fprintf(&b, `        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen %s reuseport backlog=4096;
        location / {
            proxy_pass http://workers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }
    }
}
`, listen)
	return b.String()
}

// stopAll stops the children, proxies first; it reports a child that had crashed.
func (h *harness) stopAll() error {
	var errs []error
	for _, t := range h.targets {
		if t.proc != nil {
			if err := t.proc.stop(10 * time.Second); err != nil {
				errs = append(errs, err)
			}
			t.proc = nil
		}
	}
	if h.upstream != nil {
		if err := h.upstream.stop(10 * time.Second); err != nil {
			errs = append(errs, err)
		}
		h.upstream = nil
	}
	return errors.Join(errs...)
}

// snapshot is the CPU counters at one moment.
type snapshot struct {
	at                         time.Time
	proxy                      []float64 // per target of the window
	upstream, loadgen, machine float64
}

func (h *harness) snap(ts []*target) (snapshot, error) {
	s := snapshot{at: time.Now(), proxy: make([]float64, len(ts))}
	var err error
	for i, t := range ts {
		if t.pids != nil {
			if s.proxy[i], err = cpuSeconds(h.fs, t.pids); err != nil {
				return s, err
			}
		}
	}
	if s.upstream, err = cpuSeconds(h.fs, []int{h.upstream.pid()}); err != nil {
		return s, err
	}
	if s.loadgen, err = cpuSeconds(h.fs, []int{os.Getpid()}); err != nil {
		return s, err
	}
	if s.machine, err = machineBusy(h.fs); err != nil {
		return s, err
	}
	return s, nil
}

// measure runs the rounds.
func (h *harness) measure(ctx context.Context) error {
	n := len(h.targets)
	for r := 0; r < h.cfg.Rounds; r++ {
		for _, w := range h.cfg.Workloads {
			order := make([]*target, n)
			for k := range order {
				order[k] = h.targets[(k+r)%n]
			}
			groups := [][]*target{order}
			if h.cfg.Mode == ModeSequential {
				groups = groups[:0]
				for _, t := range order {
					groups = append(groups, []*target{t})
				}
			}
			for _, g := range groups {
				wins, oks, err := h.window(ctx, g, w, r)
				if err != nil {
					return err
				}
				for i, win := range wins {
					h.report.addWindow(win, oks[i])
					h.logf("round %d %-10s %-8s ok %d/%d p50 %.0fus p99 %.0fus proxy cpu %.2fs others %.2f cores",
						r+1, w.Name, win.Target, win.OK, win.Sent, win.Latency.P50, win.Latency.P99, win.CPU.Proxy, win.CPU.Others/win.WallS)
				}
			}
		}
	}
	return nil
}

// measurePeaks measures every target's peak on every workload, one target per window
// in rotated order, then sets each workload's rate to half of the peak that
// Report.halfPeak picks.
func (h *harness) measurePeaks(ctx context.Context) error {
	n := len(h.targets)
	for wi, w := range h.cfg.Workloads {
		for r := 0; r < h.cfg.Rounds; r++ {
			for k := 0; k < n; k++ {
				t := h.targets[(k+r)%n]
				win, ok, err := h.peakWindow(ctx, t, w, r)
				if err != nil {
					return err
				}
				h.report.addPeak(win, ok)
				h.logf("round %d %-10s %-8s peak %.0f req/s ok %d/%d p50 %.0fus p99 %.0fus proxy cpu %.2fs others %.2f cores",
					r+1, w.Name, win.Target, float64(win.OK)/win.WallS, win.OK, win.Sent, win.Latency.P50, win.Latency.P99, win.CPU.Proxy, win.CPU.Others/win.WallS)
			}
		}
		peak, basis := h.report.halfPeak(w.Name)
		if peak <= 0 {
			return fmt.Errorf("peak %s: no successful request", w.Name)
		}
		h.cfg.Workloads[wi].Rate = peak / 2
		h.report.setPeakRate(wi, peak/2, basis)
		h.logf("%s: latency windows at %.0f req/s, half of %s", w.Name, peak/2, basis)
	}
	return nil
}

// peakWindow measures target t alone on workload w in a closed loop: warm-up, then the
// measured run with the CPU counters read before and after.
func (h *harness) peakWindow(ctx context.Context, t *target, w Workload, round int) (Window, []Sample, error) {
	ts := []*target{t}
	if _, err := RunClosed(ctx, h.loadOptions(ts, w, h.cfg.Warmup), h.cfg.PeakConns); err != nil {
		return Window{}, nil, fmt.Errorf("peak warm-up %s %s: %w", w.Name, t.name, err)
	}
	before, err := h.snap(ts)
	if err != nil {
		return Window{}, nil, err
	}
	res, err := RunClosed(ctx, h.loadOptions(ts, w, h.cfg.Duration), h.cfg.PeakConns)
	if err != nil {
		return Window{}, nil, fmt.Errorf("peak %s %s: %w", w.Name, t.name, err)
	}
	after, err := h.snap(ts)
	if err != nil {
		return Window{}, nil, err
	}
	if err := h.checkAlive(t); err != nil {
		return Window{}, nil, err
	}
	win, ok := newWindow(round, w, t.name, 0, res, before, after)
	return win, ok, nil
}

func (h *harness) loadOptions(ts []*target, w Workload, d time.Duration) LoadOptions {
	o := LoadOptions{
		Body:   ChatRequestBody(DefaultModel, h.cfg.RequestBytes, w.Stream),
		Stream: w.Stream, Rate: w.Rate, Duration: d,
	}
	for _, t := range ts {
		o.Targets = append(o.Targets, t.urls)
	}
	if w.Stream {
		for _, c := range buildChunks(DefaultModel, h.cfg.Chunks) {
			o.Expect = append(o.Expect, c...)
		}
	} else {
		o.Expect = buildCompletion(DefaultModel, h.cfg.CompletionBytes)
	}
	return o
}

// window measures the targets ts together on one workload: warm-up, then the measured
// run with the CPU counters read before and after. It returns one Window per target,
// with its successful samples.
func (h *harness) window(ctx context.Context, ts []*target, w Workload, round int) ([]Window, [][]Sample, error) {
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.name
	}
	if _, err := RunLoad(ctx, h.loadOptions(ts, w, h.cfg.Warmup)); err != nil {
		return nil, nil, fmt.Errorf("warm-up %s %v: %w", w.Name, names, err)
	}
	before, err := h.snap(ts)
	if err != nil {
		return nil, nil, err
	}
	res, err := RunLoad(ctx, h.loadOptions(ts, w, h.cfg.Duration))
	if err != nil {
		return nil, nil, fmt.Errorf("%s %v: %w", w.Name, names, err)
	}
	after, err := h.snap(ts)
	if err != nil {
		return nil, nil, err
	}
	for _, t := range ts {
		if err := h.checkAlive(t); err != nil {
			return nil, nil, err
		}
	}
	wins := make([]Window, len(ts))
	oks := make([][]Sample, len(ts))
	for i, t := range ts {
		wins[i], oks[i] = newWindow(round, w, t.name, i, res, before, after)
	}
	return wins, oks, nil
}

func (h *harness) checkAlive(t *target) error {
	for _, p := range []*process{h.upstream, t.proc} {
		if p == nil {
			continue
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited during the measurement: %w\n%s", p.name, p.exitError(), p.out.String())
		default:
		}
	}
	return nil
}
