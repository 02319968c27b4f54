package stack

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	dto "github.com/prometheus/client_model/go"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/indexer"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/router/admin"
	"github.com/kvroute/kvroute/upstream/discovery/dns/dnstest"
)

// pods are kvsim workers on distinct loopback addresses sharing one set of ports, as
// pods of one Deployment do (127.0.0.2, 127.0.0.3, ...).
type pods struct {
	http, events, replay int
	mu                   sync.Mutex
	byHost               map[string]*sim.Worker
}

// sharedPorts picks n ports free on every host at once.
func sharedPorts(t *testing.T, hosts []string, n int) []int {
	t.Helper()
	ports, err := sim.SharedPorts(hosts, n)
	if err != nil {
		t.Fatalf("%v (extra loopback addresses are needed)", err)
	}
	return ports
}

func newPods(t *testing.T, hosts []string) *pods {
	p := sharedPorts(t, hosts, 3)
	return &pods{http: p[0], events: p[1], replay: p[2], byHost: map[string]*sim.Worker{}}
}

// start starts a kvsim worker on host.
func (p *pods) start(t *testing.T, ctx context.Context, host string) *sim.Worker {
	t.Helper()
	wc := sim.DefaultConfig()
	wc.Model = "m"
	w, err := sim.StartWorker(ctx, host, wc, host, p.http, p.events, p.replay)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.byHost[host] = w
	p.mu.Unlock()
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// startFleetStack runs a stack from cfg (admin on loopback with a token) until the test
// ends and returns it with its API and admin base URLs.
func startFleetStack(t *testing.T, cfg *configs.Config, opts ...func(*Stack)) (st *Stack, api, adminURL string) {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.Admin.Token = "secret"
	cfg.Health.Interval = 50 * time.Millisecond
	cfg.Health.ModelsInterval = time.Second
	cfg.Timeouts.Shutdown = 10 * time.Second
	cfg.Tokenize.Timeout = 10 * time.Second
	cfg.CacheAware.MetricsInterval = 100 * time.Millisecond
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	st, err := NewStack(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range opts {
		o(st)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- st.Run(ctx, ln, func() { close(ready) }) }()
	<-ready
	t.Cleanup(func() {
		http.DefaultTransport.(*http.Transport).CloseIdleConnections()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stack: %v", err)
		}
	})
	return st, "http://" + ln.Addr().String(), "http://" + st.AdminAddr()
}

// traffic sends chat requests from a few users without pause until stopped, each user
// starting a new conversation every 4 requests, and counts the answers: every request must get a 200 while workers join and leave.
type traffic struct {
	sent, ok atomic.Int64
	mu       sync.Mutex
	failures []string
	byWorker map[string]int
	lastSent map[string]time.Time // by worker: when the latest request it answered was sent
	stop     chan struct{}
	wg       sync.WaitGroup
	api      string
}

func startTraffic(t *testing.T, api string, users int) *traffic {
	tr := &traffic{byWorker: map[string]int{}, lastSent: map[string]time.Time{}, stop: make(chan struct{}), api: api}
	for u := range users {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(u), 7))
			var system string
			for i := 0; ; i++ {
				if i%4 == 0 { // a new conversation every 4 requests: new workers get new ones
					system = fmt.Sprintf("You are assistant %d.%d. %s", u, i, someWords(rng, 200))
				}
				select {
				case <-tr.stop:
					return
				default:
				}
				tr.sent.Add(1)
				sent := time.Now()
				r := chatOnce(http.DefaultClient, api, []chatMsg{{Role: "system", Content: system}, {Role: "user", Content: someWords(rng, 20)}}, 4)
				tr.mu.Lock()
				if r.err != nil || r.status != http.StatusOK {
					tr.failures = append(tr.failures, fmt.Sprintf("status %d err %v", r.status, r.err))
				} else {
					tr.ok.Add(1)
					tr.byWorker[r.worker]++
					if sent.After(tr.lastSent[r.worker]) {
						tr.lastSent[r.worker] = sent
					}
				}
				tr.mu.Unlock()
			}
		}()
	}
	t.Cleanup(tr.end)
	return tr
}

func (tr *traffic) end() {
	select {
	case <-tr.stop:
	default:
		close(tr.stop)
	}
	tr.wg.Wait()
}

// served reports how many requests worker answered so far.
func (tr *traffic) served(worker string) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.byWorker[worker]
}

// sentAfter reports whether worker answered a request sent after t.
func (tr *traffic) sentAfter(worker string, t time.Time) bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.lastSent[worker].After(t)
}

// indexed reports whether the index holds entries of worker id.
func indexed(st *Stack, id string) bool {
	return slices.ContainsFunc(st.Index.Stats().Workers, func(ws indexer.WorkerStats) bool { return ws.Worker.ID == id })
}

// Workers found by DNS on addresses that share one port join, take traffic and leave
// with the records, while traffic flows: no request fails, a removed worker's entries
// leave the index, a garbage address is skipped.
func TestDNSDiscoveredFleetChurn(t *testing.T) {
	hosts := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	pp := newPods(t, hosts)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, h := range hosts {
		pp.start(t, ctx, h)
	}
	zone := dnstest.NewZone()
	srv := dnstest.Start(t, zone, "127.0.0.1:0", false)
	zone.Set(t, "workers.test.", "A 127.0.0.2", "A 127.0.0.3")

	cfg := configs.Default()
	cfg.Discovery.DNS = &configs.DNSDiscovery{Name: "workers.test", Port: pp.http, Server: srv.Addr,
		Interval: 50 * time.Millisecond, WorkerTemplate: configs.WorkerTemplate{EventsPort: pp.events, ReplayPort: pp.replay}}
	yamlCfg, err := configs.Load([]byte(fmt.Sprintf("discovery:\n  dns: {name: workers.test, port: %d, events_port: %d, replay_port: %d, interval: 50ms, server: %q}\n",
		pp.http, pp.events, pp.replay, srv.Addr)))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Discovery = yamlCfg.Discovery // with its defaults
	st, api, _ := startFleetStack(t, &cfg)
	id := func(h string) string { return net.JoinHostPort(h, strconv.Itoa(pp.http)) }

	poll.CheckFor(t, 10*time.Second, "both DNS workers available", func() bool {
		return len(st.Pool.Candidates(nil, "m")) == 2
	})
	tr := startTraffic(t, api, 4)
	poll.CheckFor(t, 20*time.Second, "both workers to serve and be indexed", func() bool {
		return tr.served(id(hosts[0])) > 0 && tr.served(id(hosts[1])) > 0 && indexed(st, id(hosts[0])) && indexed(st, id(hosts[1]))
	})

	// Scale up, with a garbage address in the answer.
	zone.Set(t, "workers.test.", "A 127.0.0.2", "A 127.0.0.3", "A 127.0.0.4", "A 0.0.0.0")
	joined := time.Now()
	poll.CheckFor(t, 20*time.Second, "the new worker to take traffic", func() bool { return tr.served(id(hosts[2])) > 0 })
	t.Logf("new worker took traffic %s after its record appeared", time.Since(joined).Round(time.Millisecond))
	if got := metricSum(t, st.Registry, "kvroute_discovery_rejected_total"); got < 1 {
		t.Errorf("garbage address not counted as rejected (%v)", got)
	}

	// Scale down: 127.0.0.2 leaves; its entries leave the index and it gets no traffic.
	zone.Set(t, "workers.test.", "A 127.0.0.3", "A 127.0.0.4")
	poll.CheckFor(t, 20*time.Second, "the removed worker to leave the pool", func() bool {
		return st.Pool.Worker(id(hosts[0])) == nil && len(st.Pool.Leaving()) == 0
	})
	poll.CheckFor(t, 5*time.Second, "the removed worker to leave the index", func() bool { return !indexed(st, id(hosts[0])) })
	if series := seriesOf(t, st, id(hosts[0])); len(series) > 0 {
		t.Errorf("metric series of the removed worker remain: %v", series)
	}
	// Traffic keeps flowing; none sent from now on may reach the gone worker (one sent
	// before may still be answered: its client counts it a little after the router).
	left := time.Now()
	time.Sleep(300 * time.Millisecond)
	if tr.sentAfter(id(hosts[0]), left) {
		t.Errorf("the removed worker answered a request sent after it left")
	}

	// The DNS server goes away: the last known fleet stays.
	srv.Stop()
	time.Sleep(300 * time.Millisecond)
	if n := len(st.Pool.Workers()); n != 2 {
		t.Errorf("%d workers after the DNS server went away, want the last known 2", n)
	}
	tr.end()
	if len(tr.failures) > 0 {
		t.Fatalf("%d of %d requests failed during churn, first: %s", len(tr.failures), tr.sent.Load(), tr.failures[0])
	}
	t.Logf("%d requests, all answered 200", tr.ok.Load())
}

// Workers added and removed through the admin API and by a reload of the static list
// (POST /api/reload) join and leave while traffic flows.
func TestAdminAndReloadMembership(t *testing.T) {
	hosts := []string{"127.0.0.5", "127.0.0.6", "127.0.0.7"}
	pp := newPods(t, hosts)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, h := range hosts {
		pp.start(t, ctx, h)
	}
	url := func(h string) string { return fmt.Sprintf("http://%s:%d", h, pp.http) }
	file := filepath.Join(t.TempDir(), "kvroute.yaml")
	writeCfg := func(hs ...string) {
		var b strings.Builder
		b.WriteString("workers:\n")
		for _, h := range hs {
			fmt.Fprintf(&b, "  - {id: %s, url: %s}\n", h, url(h))
		}
		if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeCfg(hosts[0])
	cfg, err := configs.LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	st, api, adm := startFleetStack(t, cfg)
	tr := startTraffic(t, api, 3)

	do := func(method, path, body string, token bool) (int, []byte) {
		req, _ := http.NewRequest(method, adm+path, strings.NewReader(body))
		if token {
			req.Header.Set("Authorization", "Bearer secret")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}

	// Add through the API: 201 with the worker as GET /api/workers/{id} shows it.
	code, body := do("POST", "/api/workers", fmt.Sprintf(`{"url": %q, "id": "api1"}`, url(hosts[1])), true)
	if code != http.StatusCreated {
		t.Fatalf("POST /api/workers: %d %s", code, body)
	}
	var v admin.WorkerView
	if err := json.Unmarshal(body, &v); err != nil || v.ID != "api1" || v.Source != "api" {
		t.Fatalf("POST answer %s (%v)", body, err)
	}
	poll.CheckFor(t, 20*time.Second, "the API worker to take traffic", func() bool { return tr.served("api1") > 0 })
	// Bad input: no token, unknown key, a duplicate id, a duplicate URL, garbage.
	for _, tc := range []struct {
		body  string
		token bool
		want  int
	}{
		{`{"url": "http://127.0.0.9:1"}`, false, http.StatusUnauthorized},
		{`{"url": "http://127.0.0.9:1", "weight": 3}`, true, http.StatusBadRequest},
		{fmt.Sprintf(`{"url": "http://127.0.0.9:1", "id": %q}`, hosts[0]), true, http.StatusConflict},
		{fmt.Sprintf(`{"url": %q, "id": "x"}`, url(hosts[1])), true, http.StatusConflict},
		{`{"url": "not a url"}`, true, http.StatusBadRequest},
		{`{"url": "http://127.0.0.9:1"} {}`, true, http.StatusBadRequest},
		{strings.Repeat(" ", 70<<10) + `{"url": "http://127.0.0.9:1"}`, true, http.StatusBadRequest},
	} {
		if code, body := do("POST", "/api/workers", tc.body, tc.token); code != tc.want {
			t.Errorf("POST %.60q: %d %s, want %d", tc.body, code, body, tc.want)
		}
	}

	// Reload: the file now lists hosts[2] instead of hosts[0].
	writeCfg(hosts[2])
	code, body = do("POST", "/api/reload", "", true)
	if code != http.StatusOK || !bytes.Contains(body, []byte("+"+hosts[2])) || !bytes.Contains(body, []byte("-"+hosts[0])) {
		t.Fatalf("reload: %d %s", code, body)
	}
	poll.CheckFor(t, 20*time.Second, "the reloaded worker to take traffic and the removed one to leave", func() bool {
		return tr.served(hosts[2]) > 0 && st.Pool.Worker(hosts[0]) == nil && len(st.Pool.Leaving()) == 0
	})

	// Delete through the API: 202, then gone.
	if code, body := do("DELETE", "/api/workers/api1", "", true); code != http.StatusAccepted {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	if code, _ := do("DELETE", "/api/workers/api1", "", true); code != http.StatusNotFound {
		t.Errorf("second DELETE: %d, want 404", code)
	}
	if code, _ := do("GET", "/api/workers/api1", "", false); code != http.StatusNotFound {
		t.Errorf("GET of a removed worker: %d, want 404", code)
	}
	poll.CheckFor(t, 20*time.Second, "the deleted worker to be gone", func() bool { return len(st.Pool.Leaving()) == 0 })
	tr.end()
	if len(tr.failures) > 0 {
		t.Fatalf("%d of %d requests failed, first: %s", len(tr.failures), tr.sent.Load(), tr.failures[0])
	}
	if got := ids(st); !slices.Equal(got, []string{hosts[2]}) {
		t.Fatalf("workers at the end: %v", got)
	}
}

// seriesOf lists the metric families with a series labelled worker=id.
func seriesOf(t *testing.T, st *Stack, id string) []string {
	t.Helper()
	fams, err := st.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			if slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == "worker" && l.GetValue() == id }) {
				out = append(out, f.GetName())
				break
			}
		}
	}
	return out
}

func ids(st *Stack) []string {
	var out []string
	for _, w := range st.Pool.Workers() {
		out = append(out, w.ID)
	}
	return out
}

// SIGHUP applies an edited workers list as POST /api/reload does.
func TestSIGHUPReloadsWorkers(t *testing.T) {
	hosts := []string{"127.0.0.8", "127.0.0.9"}
	pp := newPods(t, hosts)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, h := range hosts {
		pp.start(t, ctx, h)
	}
	file := filepath.Join(t.TempDir(), "kvroute.yaml")
	write := func(h string) {
		if err := os.WriteFile(file, fmt.Appendf(nil, "workers:\n  - {id: %s, url: 'http://%s:%d'}\n", h, h, pp.http), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(hosts[0])
	cfg, err := configs.LoadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	st, _, _ := startFleetStack(t, cfg, func(st *Stack) { st.ReloadOnSIGHUP = true })
	write(hosts[1])
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, 10*time.Second, "SIGHUP to swap the workers", func() bool {
		return slices.Equal(ids(st), []string{hosts[1]}) && len(st.Pool.Leaving()) == 0
	})
}

// kubePod is a worker pod of the test's Kubernetes API: Running at ip with an "http"
// container port.
func kubePod(name, ip string, port int, ready bool) *corev1.Pod {
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "llm", Labels: map[string]string{"app": "vllm"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "vllm",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: int32(port)}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}},
	}
}

// Pods from client-go's fake clientset, with kvsim behind their IPs on one shared port:
// they join when they get an IP, take traffic only while Ready, and leave when deleted,
// while traffic flows without a failed request.
func TestKubernetesDiscoveredFleet(t *testing.T) {
	hosts := []string{"127.0.0.10", "127.0.0.11", "127.0.0.12"}
	pp := newPods(t, hosts)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, h := range hosts {
		pp.start(t, ctx, h)
	}
	client := fake.NewClientset()
	pods := client.CoreV1().Pods("llm")
	mustCreate := func(p *corev1.Pod) {
		if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	update := func(name string, f func(*corev1.Pod)) {
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		f(p)
		if _, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mustCreate(kubePod("vllm-a", hosts[0], pp.http, true))
	mustCreate(kubePod("vllm-b", hosts[1], pp.http, false))
	mustCreate(kubePod("vllm-bad", "999.1.1.1", pp.http, true)) // garbage address: skipped

	cfg := configs.Default()
	yc, err := configs.Load(fmt.Appendf(nil, "discovery:\n  kubernetes: {namespace: llm, label_selector: app=vllm, port_name: http, events_port: %d, replay_port: %d}\n", pp.events, pp.replay))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Discovery = yc.Discovery
	st, api, _ := startFleetStack(t, &cfg, func(st *Stack) { st.KubeClient = client })
	poll.CheckFor(t, 20*time.Second, "the ready pod to take traffic alone", func() bool {
		return slices.Equal(ids(st), []string{"vllm-a", "vllm-b"}) && len(st.Pool.Candidates(nil, "m")) == 1
	})
	tr := startTraffic(t, api, 3)
	poll.CheckFor(t, 20*time.Second, "vllm-a to serve", func() bool { return tr.served("vllm-a") > 0 })
	if tr.served("vllm-b") != 0 {
		t.Fatal("an unready pod took traffic")
	}
	update("vllm-b", func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionTrue })
	poll.CheckFor(t, 20*time.Second, "vllm-b to serve once ready", func() bool { return tr.served("vllm-b") > 0 })
	mustCreate(kubePod("vllm-c", hosts[2], pp.http, true))
	poll.CheckFor(t, 20*time.Second, "a new pod to serve", func() bool { return tr.served("vllm-c") > 0 })

	// vllm-a turns unready (drained), then is deleted (gone).
	update("vllm-a", func(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse })
	poll.CheckFor(t, 10*time.Second, "vllm-a to stop being a candidate", func() bool {
		w := st.Pool.Worker("vllm-a")
		return w != nil && w.State().State == "not_ready"
	})
	if err := pods.Delete(ctx, "vllm-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, 20*time.Second, "vllm-a to leave the pool and the index", func() bool {
		return st.Pool.Worker("vllm-a") == nil && len(st.Pool.Leaving()) == 0 && !indexed(st, "vllm-a")
	})
	tr.end()
	if len(tr.failures) > 0 {
		t.Fatalf("%d of %d requests failed, first: %s", len(tr.failures), tr.sent.Load(), tr.failures[0])
	}
	if got := metricSum(t, st.Registry, "kvroute_discovery_rejected_total"); got < 1 {
		t.Errorf("the garbage pod address was not counted (%v)", got)
	}
	if w := st.Pool.Worker("vllm-b"); w == nil || w.Source != "kubernetes" {
		t.Errorf("vllm-b: %+v", w)
	}
}
