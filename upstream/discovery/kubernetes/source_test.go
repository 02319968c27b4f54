package kubernetes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/upstream/discovery"
)

// wait bounds every poll: generous, as the machine may be loaded and client-go's
// reflector backs off for up to a few seconds after an error.
const wait = 15 * time.Second

const ns = "llm"

// recorder keeps the views a source reported.
type recorder struct {
	mu    sync.Mutex
	views [][]discovery.Member // mu guards views
}

func (r *recorder) update(ms []discovery.Member) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.views = append(r.views, slices.Clone(ms))
}

// last returns the last view as "id:ready" or "id:drain" strings and the number of
// views reported.
func (r *recorder) last() ([]string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.views) == 0 {
		return nil, 0
	}
	return summary(r.views[len(r.views)-1]), len(r.views)
}

func (r *recorder) lastView() []discovery.Member {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.views[len(r.views)-1]
}

func summary(v []discovery.Member) []string {
	out := make([]string, len(v))
	for i, m := range v {
		state := "drain"
		if m.Ready {
			state = "ready"
		}
		out[i] = m.Worker.ID + ":" + state
	}
	return out
}

// logBuffer is a log sink safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // mu guards buf
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// count returns the number of times s occurs in the log.
func (b *logBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

// harness is one source running against a fake clientset.
type harness struct {
	t       *testing.T
	src     *Source
	markers int
	client  *fake.Clientset
	rec     *recorder
	reg     *prometheus.Registry
	logs    *logBuffer
	stop    func() time.Duration // cancels Run and returns how long it took to return
}

// testConfig watches pods labelled app=vllm in ns on the container port named http.
func testConfig() configs.KubernetesDiscovery {
	return configs.KubernetesDiscovery{
		WorkerTemplate: configs.WorkerTemplate{Scheme: "http", DPRanks: 1, MaxConns: 16, EventsPort: 5557, ReplayPort: 5558},
		Namespace:      ns, LabelSelector: "app=vllm", PortName: "http", Resync: time.Minute,
	}
}

// run starts a source for cfg on client; it is stopped when the test ends.
func run(t *testing.T, cfg configs.KubernetesDiscovery, client *fake.Clientset) *harness {
	t.Helper()
	return runWith(t, cfg, client, nil)
}

// runWith is run with dyn as the dynamic client (InferencePools).
func runWith(t *testing.T, cfg configs.KubernetesDiscovery, client *fake.Clientset, dyn dynamic.Interface) *harness {
	t.Helper()
	h := &harness{t: t, client: client, rec: &recorder{}, reg: prometheus.NewPedanticRegistry(), logs: &logBuffer{}}
	log := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s, err := New(cfg, Options{Client: client, Dynamic: dyn, Registerer: h.reg, Logger: log})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.src = s
	if s.Name() != "kubernetes" {
		t.Fatalf("Name() = %q, want kubernetes", s.Name())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, h.rec.update) }()
	var once sync.Once
	var took time.Duration
	h.stop = func() time.Duration {
		once.Do(func() {
			start := time.Now()
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v, want nil", err)
				}
			case <-time.After(wait):
				t.Errorf("Run did not return within %v of its context ending", wait)
			}
			took = time.Since(start)
		})
		return took
	}
	t.Cleanup(func() { h.stop() })
	return h
}

// metric returns the value of the series of name with the given label values (pairs
// name, value), 0 when absent.
func (h *harness) metric(name string, labels ...string) float64 {
	h.t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		h.t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func (h *harness) lookups(result string) float64 {
	return h.metric("kvroute_discovery_lookups_total", "source", "kubernetes", "result", result)
}

func (h *harness) rejected(reason string) float64 {
	return h.metric("kvroute_discovery_rejected_total", "source", "kubernetes", "reason", reason)
}

// waitView waits until the last view reported is want ("id:ready" or "id:drain").
func (h *harness) waitView(want ...string) {
	h.t.Helper()
	poll.CheckFor(h.t, wait, "view ["+strings.Join(want, " ")+"]", func() bool {
		got, n := h.rec.last()
		return n > 0 && slices.Equal(got, want)
	})
	if g := h.metric("kvroute_discovery_members", "source", "kubernetes"); g != float64(len(want)) {
		h.t.Fatalf("kvroute_discovery_members = %v, want %d", g, len(want))
	}
}

// checkViews checks that exactly n views were reported, the last being want.
func (h *harness) checkViews(n int, want ...string) {
	h.t.Helper()
	got, m := h.rec.last()
	if m != n || !slices.Equal(got, want) {
		h.t.Fatalf("views reported: %d, last %v; want %d, last %v", m, got, n, want)
	}
}

// settle waits until the source has computed a view from every change made so far: it
// creates a marker pod outside the selector (the fake's watch delivers it anyway, and
// the source's own selector keeps it out of the view), waits for its event, then for a
// view computed after it.
func (h *harness) settle() {
	h.t.Helper()
	from := h.src.events.Load()
	h.markers++
	h.create(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("marker-%d", h.markers), Namespace: ns,
		Labels: map[string]string{"app": "marker"}}})
	poll.CheckFor(h.t, wait, "the marker's event", func() bool { return h.src.events.Load() > from })
	seen := h.src.events.Load()
	poll.CheckFor(h.t, wait, "a view computed after the marker", func() bool { return h.src.applied.Load() >= seen })
}

func (h *harness) create(p *corev1.Pod) {
	h.t.Helper()
	if _, err := h.client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		h.t.Fatalf("create pod %s: %v", p.Name, err)
	}
}

// change gets pod name, applies f to it and updates it.
func (h *harness) change(name string, f func(*corev1.Pod)) {
	h.t.Helper()
	p, err := h.client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatalf("get pod %s: %v", name, err)
	}
	f(p)
	if _, err := h.client.CoreV1().Pods(ns).Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		h.t.Fatalf("update pod %s: %v", name, err)
	}
}

func (h *harness) delete(name string) {
	h.t.Helper()
	if err := h.client.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		h.t.Fatalf("delete pod %s: %v", name, err)
	}
}

// pod is a vLLM pod in ns labelled app=vllm, with the HTTP port named http (8000) in
// its second container, IP ip ("" for none yet) and Ready condition ready.
func pod(name, ip string, ready bool) *corev1.Pod {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": "vllm"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "sidecar", Ports: []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9400}}},
			{Name: "vllm", Ports: []corev1.ContainerPort{{Name: "zmq", ContainerPort: 5557}, {Name: "http", ContainerPort: 8000}}},
		}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}},
	}
}

func setReady(ready bool) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse}}
		if ready {
			p.Status.Conditions[0].Status = corev1.ConditionTrue
		}
	}
}

// A pod's life: no IP (not reported), an IP but not ready (drained), ready, unready
// again, terminating (drained), deleted or finished (gone). Every report is the full
// sorted view and only changes are reported.
func TestPodLifecycle(t *testing.T) {
	h := run(t, testConfig(), fake.NewClientset())
	h.waitView() // the first view, empty, once the cache has synced
	h.checkViews(1)

	h.create(pod("w1", "", false))
	h.settle()
	h.checkViews(1) // a pod without an IP is not reported

	h.change("w1", func(p *corev1.Pod) { p.Status.PodIP = "10.0.0.1" })
	h.waitView("w1:drain")
	h.checkViews(2, "w1:drain")

	h.change("w1", setReady(true))
	h.waitView("w1:ready")
	w := h.rec.lastView()[0].Worker
	want := configs.Worker{ID: "w1", URL: "http://10.0.0.1:8000", DPRanks: 1, MaxConns: 16,
		Events: "tcp://10.0.0.1:5557", Replay: "tcp://10.0.0.1:5558", Role: configs.RoleBoth}
	if fmt.Sprint(w) != fmt.Sprint(want) {
		t.Fatalf("worker = %+v, want %+v", w, want)
	}

	h.create(pod("w2", "fd00::2", true))
	h.waitView("w1:ready", "w2:ready")
	if u := h.rec.lastView()[1].Worker.URL; u != "http://[fd00::2]:8000" {
		t.Fatalf("IPv6 worker URL = %q, want http://[fd00::2]:8000", u)
	}

	h.change("w1", setReady(false))
	h.waitView("w1:drain", "w2:ready")

	h.change("w2", func(p *corev1.Pod) {
		now := metav1.Now()
		p.DeletionTimestamp = &now // terminating: still Ready, but drained
	})
	h.waitView("w1:drain", "w2:drain")

	h.delete("w2")
	h.waitView("w1:drain")

	h.change("w1", func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed })
	h.waitView()

	_, n := h.rec.last()
	h.change("w1", func(p *corev1.Pod) { p.Labels["rev"] = "2" }) // no change to the view
	h.settle()
	h.checkViews(n)
}

// A pod's kvroute.io/role label is its worker's role; a label that names no role
// leaves the pod out, as any invalid worker.
func TestRoleLabel(t *testing.T) {
	pre, bad := pod("p", "10.0.0.1", true), pod("x", "10.0.0.3", true)
	pre.Labels[configs.RoleLabel] = "prefill"
	bad.Labels[configs.RoleLabel] = "gpu"
	h := run(t, testConfig(), fake.NewClientset(pre, pod("d", "10.0.0.2", true), bad))
	h.waitView("d:ready", "p:ready")
	for _, m := range h.rec.lastView() {
		if want := map[string]string{"p": configs.RolePrefill, "d": configs.RoleBoth}[m.Worker.ID]; m.Worker.Role != want {
			t.Errorf("worker %s role %q, want %q", m.Worker.ID, m.Worker.Role, want)
		}
	}
}

// The pods present before Run are in the first view, reported once.
func TestInitialPods(t *testing.T) {
	h := run(t, testConfig(), fake.NewClientset(pod("a", "10.0.0.1", true), pod("b", "10.0.0.2", false), pod("c", "", true)))
	h.waitView("a:ready", "b:drain")
	h.settle()
	h.checkViews(1, "a:ready", "b:drain")
}

// The HTTP port comes from the container port named port_name (any container), or
// from port; a pod without the named port is skipped and counted once while it stays
// so.
func TestPorts(t *testing.T) {
	noPort := pod("noport", "10.0.0.3", true)
	noPort.Spec.Containers = noPort.Spec.Containers[:1]
	h := run(t, testConfig(), fake.NewClientset(pod("a", "10.0.0.1", true), noPort))
	h.waitView("a:ready")
	if u := h.rec.lastView()[0].Worker.URL; u != "http://10.0.0.1:8000" {
		t.Fatalf("URL = %q, want the named port 8000", u)
	}
	if r := h.rejected("bad_port"); r != 1 {
		t.Fatalf("rejected bad_port = %v, want 1", r)
	}
	h.create(pod("b", "10.0.0.2", true)) // recomputes the view with noport still bad
	h.waitView("a:ready", "b:ready")
	if r := h.rejected("bad_port"); r != 1 {
		t.Fatalf("rejected bad_port = %v after another event, want still 1", r)
	}
	if c := h.logs.count("pod=noport reason=bad_port"); c != 1 {
		t.Fatalf("noport logged %d times, want 1", c)
	}
	// Fixed: the port gets its name back, and the rejection is counted again if it is
	// lost again.
	h.change("noport", func(p *corev1.Pod) { p.Spec.Containers = pod("", "", false).Spec.Containers })
	h.waitView("a:ready", "b:ready", "noport:ready")

	cfg := testConfig()
	cfg.PortName, cfg.Port = "", 9000
	h2 := run(t, cfg, fake.NewClientset(noPort))
	h2.waitView("noport:ready")
	if u := h2.rec.lastView()[0].Worker.URL; u != "http://10.0.0.3:9000" {
		t.Fatalf("URL = %q, want the configured port 9000", u)
	}
}

// Pods whose IP no worker can have are skipped and counted, and so are workers that
// fail configs.ValidateWorker; the other pods are reported.
func TestBadPodsSkipped(t *testing.T) {
	objs := []runtime.Object{pod("good", "10.0.0.1", true), pod("bad name", "10.0.0.2", true)}
	for i, ip := range []string{"garbage", "10.0.0.300", "0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255", "0.1.2.3", "fe80::1", "fe80::1%eth0"} {
		objs = append(objs, pod(fmt.Sprintf("bad%d", i), ip, true))
	}
	h := run(t, testConfig(), fake.NewClientset(objs...))
	h.waitView("good:ready")
	if r := h.rejected("bad_address"); r != 10 {
		t.Fatalf("rejected bad_address = %v, want 10", r)
	}
	if r := h.rejected("invalid_worker"); r != 1 {
		t.Fatalf("rejected invalid_worker = %v, want 1", r)
	}
	// An IPv4-mapped IPv6 pod IP is the IPv4 address.
	h.create(pod("mapped", "::ffff:10.0.0.9", true))
	h.waitView("good:ready", "mapped:ready")
	if u := h.rec.lastView()[1].Worker.URL; u != "http://10.0.0.9:8000" {
		t.Fatalf("mapped URL = %q, want http://10.0.0.9:8000", u)
	}
}

// Only the pods of the namespace matching the selector are members. The informer asks
// the API for exactly those (namespace and selector on every list and watch); the fake
// clientset filters lists by label but not watches, and the source filters the cache
// again, so a pod relabelled out of the selector leaves the view.
func TestLabelSelector(t *testing.T) {
	other := pod("other", "10.0.0.2", true)
	other.Labels = map[string]string{"app": "web"}
	elsewhere := pod("elsewhere", "10.0.0.3", true)
	elsewhere.Namespace = "prod"
	client := fake.NewClientset(pod("a", "10.0.0.1", true), other, elsewhere)
	h := run(t, testConfig(), client)
	h.waitView("a:ready")

	late := pod("late", "10.0.0.4", true)
	late.Labels = map[string]string{"app": "web"}
	h.create(late) // arrives through the watch, which the fake does not filter
	_, n := h.rec.last()
	h.settle() // the marker's event arriving shows the fake's watch is unfiltered
	h.checkViews(n, "a:ready")
	h.create(pod("b", "10.0.0.5", true))
	h.waitView("a:ready", "b:ready")

	h.change("a", func(p *corev1.Pod) { p.Labels["app"] = "old" })
	h.waitView("b:ready")

	var lists, watches int
	for _, a := range client.Actions() {
		if a.GetResource().Resource != "pods" || (a.GetVerb() != "list" && a.GetVerb() != "watch") {
			continue
		}
		var sel string
		switch a := a.(type) {
		case k8stesting.ListActionImpl:
			lists++
			sel = a.ListOptions.LabelSelector
		case k8stesting.WatchActionImpl:
			watches++
			sel = a.ListOptions.LabelSelector
		}
		if a.GetNamespace() != ns || sel != "app=vllm" {
			t.Errorf("%s in namespace %q with selector %q, want %q and app=vllm", a.GetVerb(), a.GetNamespace(), sel, ns)
		}
	}
	if lists == 0 || watches == 0 {
		t.Fatalf("%d lists and %d watches of pods, want at least one of each", lists, watches)
	}
}

// failingAPI makes the fake clientset's pod lists and watches fail while down is set,
// and can end the watches it handed out, as an API server going away does.
type failingAPI struct {
	mu       sync.Mutex
	down     bool // mu guards down and watchers
	watchers []*watch.RaceFreeFakeWatcher
}

var errAPIDown = errors.New("connection refused")

func newFailingAPI(client *fake.Clientset) *failingAPI {
	f := &failingAPI{}
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.down {
			return true, nil, errAPIDown
		}
		return false, nil, nil
	})
	client.PrependWatchReactor("pods", func(a k8stesting.Action) (bool, watch.Interface, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.down {
			return true, nil, errAPIDown
		}
		wa := a.(k8stesting.WatchActionImpl)
		w, err := client.Tracker().Watch(a.GetResource(), a.GetNamespace(), wa.ListOptions)
		if err != nil {
			return true, nil, err
		}
		if rf, ok := w.(*watch.RaceFreeFakeWatcher); ok {
			f.watchers = append(f.watchers, rf)
		}
		return true, w, nil
	})
	return f
}

// setDown fails every later list and watch (down) or lets them through; going down
// also ends the open watches.
func (f *failingAPI) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
	if down {
		for _, w := range f.watchers {
			w.Stop()
		}
		f.watchers = nil
	}
}

// An API that goes away keeps the last view: the errors are counted, logged once per
// streak, and nothing is reported until the API is back.
func TestAPIDownKeepsView(t *testing.T) {
	client := fake.NewClientset(pod("a", "10.0.0.1", true), pod("b", "10.0.0.2", false))
	api := newFailingAPI(client)
	h := run(t, testConfig(), client)
	h.waitView("a:ready", "b:drain")

	api.setDown(true)
	poll.CheckFor(t, wait, "two list/watch errors", func() bool { return h.lookups("error") >= 2 })
	h.checkViews(1, "a:ready", "b:drain")
	if g := h.metric("kvroute_discovery_members", "source", "kubernetes"); g != 2 {
		t.Fatalf("kvroute_discovery_members = %v while the API is down, want 2", g)
	}
	if c := h.logs.count("list/watch failed; keeping the last view"); c != 1 {
		t.Fatalf("the error streak was logged %d times at warning level, want 1", c)
	}

	// While it is down the fleet changes; the source sees it once the API is back.
	if err := client.Tracker().Delete(corev1.SchemeGroupVersion.WithResource("pods"), ns, "b"); err != nil {
		t.Fatal(err)
	}
	if err := client.Tracker().Add(pod("c", "10.0.0.3", true)); err != nil {
		t.Fatal(err)
	}
	api.setDown(false)
	h.waitView("a:ready", "c:ready")
	poll.CheckFor(t, wait, "the recovery log", func() bool { return h.logs.count("API answering again") == 1 })
}

// An API unreachable at start: no view is reported (not even an empty one), the
// errors are counted, the source keeps trying, and cancelling ends Run promptly.
func TestAPIDownAtStart(t *testing.T) {
	client := fake.NewClientset(pod("a", "10.0.0.1", true))
	api := newFailingAPI(client)
	api.setDown(true)
	h := run(t, testConfig(), client)
	poll.CheckFor(t, wait, "a list error", func() bool { return h.lookups("error") >= 1 })
	if _, n := h.rec.last(); n != 0 {
		t.Fatalf("%d views reported with the API down from the start, want none", n)
	}
	api.setDown(false)
	h.waitView("a:ready")

	client2 := fake.NewClientset()
	newFailingAPI(client2).setDown(true)
	h2 := run(t, testConfig(), client2)
	poll.CheckFor(t, wait, "a list error", func() bool { return h2.lookups("error") >= 1 })
	if took := h2.stop(); took > 2*time.Second {
		t.Fatalf("Run took %v to return after cancel while waiting for the first sync", took)
	}
}

// Cancelling the context ends a synced Run promptly.
func TestCancelEndsRun(t *testing.T) {
	h := run(t, testConfig(), fake.NewClientset(pod("a", "10.0.0.1", true)))
	h.waitView("a:ready")
	if took := h.stop(); took > 2*time.Second {
		t.Fatalf("Run took %v to return after cancel", took)
	}
}

// New refuses what Run could not use and finds the namespace and the client.
func TestNew(t *testing.T) {
	client := fake.NewClientset()
	for _, tc := range []struct {
		name string
		edit func(*configs.KubernetesDiscovery)
		err  string
	}{
		{"bad selector", func(c *configs.KubernetesDiscovery) { c.LabelSelector = "app in (a" }, `label_selector "app in (a"`},
		{"empty selector", func(c *configs.KubernetesDiscovery) { c.LabelSelector = " " }, "selects every pod"},
		{"no port", func(c *configs.KubernetesDiscovery) { c.PortName = "" }, "exactly one of port"},
		{"two ports", func(c *configs.KubernetesDiscovery) { c.Port = 80 }, "exactly one of port"},
		{"bad template", func(c *configs.KubernetesDiscovery) { c.Scheme = "ftp" }, "worker template"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			tc.edit(&cfg)
			_, err := New(cfg, Options{Client: client})
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("New: %v, want an error containing %q", err, tc.err)
			}
		})
	}

	dir := t.TempDir()
	nsFile := filepath.Join(dir, "namespace")
	old := namespaceFile
	t.Cleanup(func() { namespaceFile = old })
	namespaceFile = nsFile
	cfg := testConfig()
	cfg.Namespace = ""
	s, err := New(cfg, Options{Client: client})
	if err != nil || s.Namespace() != "default" {
		t.Fatalf("New without namespace file: %v, namespace %q; want default", err, s.Namespace())
	}
	if err := os.WriteFile(nsFile, []byte("inference\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err = New(cfg, Options{Client: client}); err != nil || s.Namespace() != "inference" {
		t.Fatalf("New with namespace file: %v, namespace %q; want inference", err, s.Namespace())
	}
	cfg.Namespace = "explicit"
	if s, err = New(cfg, Options{Client: client}); err != nil || s.Namespace() != "explicit" {
		t.Fatalf("New with namespace: %v, namespace %q; want explicit", err, s.Namespace())
	}
}

// Without a client, New builds one from the kubeconfig, else the in-cluster config,
// else $KUBECONFIG, and says what it tried when none works.
func TestNewClient(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // not in a cluster
	t.Setenv("HOME", t.TempDir())           // no ~/.kube/config
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.Kubeconfig = kc
	if _, err := New(cfg, Options{}); err != nil {
		t.Fatalf("New with kubeconfig %s: %v", kc, err)
	}
	cfg.Kubeconfig = filepath.Join(dir, "missing")
	if _, err := New(cfg, Options{}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("New with a missing kubeconfig: %v, want an error naming it", err)
	}

	cfg.Kubeconfig = ""
	t.Setenv("KUBECONFIG", kc)
	if _, err := New(cfg, Options{}); err != nil {
		t.Fatalf("New with $KUBECONFIG: %v", err)
	}
	t.Setenv("KUBECONFIG", "")
	_, err := New(cfg, Options{})
	if err == nil || !strings.Contains(err.Error(), "in-cluster") || !strings.Contains(err.Error(), "KUBECONFIG") {
		t.Fatalf("New with no config anywhere: %v, want an error naming in-cluster and $KUBECONFIG", err)
	}
}
