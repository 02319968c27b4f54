package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/upstream/discovery"
)

// sourceName is the source's [Source.Name] and its metrics' source label.
const sourceName = "kubernetes"

// namespaceFile is where a pod finds its own namespace (the service account's
// projected volume); a variable so tests can point it elsewhere.
var namespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// Default timings, see [Source].
const (
	// defaultDebounce coalesces a burst of pod events (a rollout, the initial list)
	// into one report; well below the ~100ms a change may take to reach the pool.
	defaultDebounce = 20 * time.Millisecond
	// syncWarnAfter is how long Run waits for the first full list before it logs that
	// the API is not answering (and keeps waiting).
	syncWarnAfter = 10 * time.Second
)

// Options configure a [Source].
type Options struct {
	// Client talks to the Kubernetes API. Nil: one built from the config's kubeconfig
	// if set, else the in-cluster config (service account), else $KUBECONFIG (or
	// ~/.kube/config) through clientcmd.
	Client kubernetes.Interface
	// Dynamic reads the InferencePool of discovery.kubernetes.inference_pool (unused
	// without one). Nil: built as Client is.
	Dynamic dynamic.Interface
	// Registerer registers the kvroute_discovery_* metrics ([discovery.NewMetrics]);
	// nil leaves them unregistered.
	Registerer prometheus.Registerer
	// Logger logs API errors (once per streak), recoveries and rejected pods; nil
	// discards.
	Logger *slog.Logger
}

// Source discovers workers from the pods of one namespace that match a label selector,
// through a client-go shared informer (see the package documentation). Run may be
// called once; Name is safe for concurrent use.
type Source struct {
	cfg      configs.KubernetesDiscovery
	ns       string
	selector labels.Selector
	client   kubernetes.Interface
	dynamic  dynamic.Interface // nil unless cfg.InferencePool is set
	metrics  *discovery.Metrics
	log      *slog.Logger
	debounce time.Duration

	// failing is true from a list/watch error until the next event from the API: the
	// first error of a streak is logged at warning level, the others at debug.
	failing atomic.Bool
	// events counts the informer's events; applied is the value events had when the
	// last view was computed, so every event up to it is in that view. Tests wait on
	// them instead of sleeping.
	events, applied atomic.Int64

	// rejected maps each pod name rejected by the last computed view to its reason, so
	// a pod that stays bad is logged and counted once, not at every recompute. Only
	// Run's goroutine touches it.
	rejected map[string]string
}

// New returns a Source for cfg, which must have passed [configs.Config.Validate] (as
// [configs.Load] does); it checks the label selector again and builds the API client
// when opts.Client is nil. It starts nothing: [Source.Run] does.
func New(cfg configs.KubernetesDiscovery, opts Options) (*Source, error) {
	sel, err := checkSelection(cfg)
	if err != nil {
		return nil, err
	}
	sample := cfg.Worker("sample", "192.0.2.1", max(cfg.Port, 80))
	if err := configs.ValidateWorker(&sample); err != nil {
		return nil, fmt.Errorf("kubernetes discovery: worker template: %w", err)
	}
	m, err := discovery.NewMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("kubernetes discovery: %w", err)
	}
	client, dyn := opts.Client, opts.Dynamic
	if client == nil || (dyn == nil && cfg.InferencePool != "") {
		rc, err := restConfig(cfg.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubernetes discovery: %w", err)
		}
		if client == nil {
			if client, err = kubernetes.NewForConfig(rc); err != nil {
				return nil, fmt.Errorf("kubernetes discovery: kubernetes client: %w", err)
			}
		}
		if dyn == nil && cfg.InferencePool != "" {
			if dyn, err = dynamic.NewForConfig(rc); err != nil {
				return nil, fmt.Errorf("kubernetes discovery: dynamic client: %w", err)
			}
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ns := cfg.Namespace
	if ns == "" {
		ns = defaultNamespace()
	}
	return &Source{cfg: cfg, ns: ns, selector: sel, client: client, dynamic: dyn, metrics: m,
		log: log.With("source", sourceName, "namespace", ns), debounce: defaultDebounce}, nil
}

// checkSelection checks how cfg selects pods: a label selector and a port (or port
// name), or an InferencePool alone. It returns the parsed selector (nil for a pool).
func checkSelection(cfg configs.KubernetesDiscovery) (labels.Selector, error) {
	if cfg.InferencePool != "" {
		if cfg.LabelSelector != "" || cfg.Port != 0 || cfg.PortName != "" {
			return nil, fmt.Errorf("kubernetes discovery: inference_pool %q excludes label_selector, port and port_name", cfg.InferencePool)
		}
		return nil, nil
	}
	sel, err := labels.Parse(cfg.LabelSelector)
	if err != nil {
		return nil, fmt.Errorf("kubernetes discovery: label_selector %q: %w", cfg.LabelSelector, err)
	}
	if sel.Empty() {
		return nil, fmt.Errorf("kubernetes discovery: label_selector %q selects every pod", cfg.LabelSelector)
	}
	if (cfg.Port == 0) == (cfg.PortName == "") {
		return nil, fmt.Errorf("kubernetes discovery: exactly one of port (%d) and port_name (%q) is required", cfg.Port, cfg.PortName)
	}
	return sel, nil
}

// restConfig is the API client config from kubeconfig if set, else the in-cluster
// config, else clientcmd's default loading rules ($KUBECONFIG, then ~/.kube/config).
func restConfig(kubeconfig string) (*rest.Config, error) {
	var rc *rest.Config
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %q: %w", kubeconfig, err)
		}
		rc = c
	} else {
		c, inErr := rest.InClusterConfig()
		if inErr != nil {
			var fileErr error
			c, fileErr = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
				clientcmd.NewDefaultClientConfigLoadingRules(), &clientcmd.ConfigOverrides{}).ClientConfig()
			if fileErr != nil {
				return nil, fmt.Errorf("no kubernetes client config: in-cluster: %w; $KUBECONFIG or ~/.kube/config: %w "+
					"(set discovery.kubernetes.kubeconfig outside a cluster)", inErr, fileErr)
			}
		}
		rc = c
	}
	rc = rest.CopyConfig(rc)
	rc.UserAgent = "kvroute"
	return rc, nil
}

// defaultNamespace is the namespace of the pod running the router, else "default".
func defaultNamespace() string {
	if b, err := os.ReadFile(namespaceFile); err == nil {
		if ns := strings.TrimSpace(string(b)); ns != "" {
			return ns
		}
	}
	return "default"
}

// Name returns "kubernetes".
func (s *Source) Name() string { return sourceName }

// Namespace returns the namespace the source watches: the configured one, else the
// router's own, else "default".
func (s *Source) Namespace() string { return s.ns }

// Run watches the pods until ctx ends and reports the view through update: first once
// the informer's cache has synced (the first full list, however long the API takes to
// answer), then after every change to it, at most once per debounce interval. It
// returns nil when ctx ends, and an error only if the informer cannot be set up.
func (s *Source) Run(ctx context.Context, update func([]discovery.Member)) error {
	if s.cfg.InferencePool != "" {
		return s.runPool(ctx, update)
	}
	return s.runPods(ctx, update)
}

// runPods is Run for a label selector: the pods matching s.selector.
func (s *Source) runPods(ctx context.Context, update func([]discovery.Member)) error {
	ctx, cancel := context.WithCancel(ctx)
	// client-go logs through the context's logger (klog's contextual logging): into
	// ours, at debug level, instead of klog's stderr; the source logs what matters.
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(debugHandler{s.log.Handler()}))
	factory := informers.NewSharedInformerFactoryWithOptions(s.client, s.cfg.Resync,
		informers.WithNamespace(s.ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = s.selector.String() }))
	// Shutdown waits for the informer's goroutines, which end with ctx: cancel first
	// (deferred calls run last in, first out).
	defer factory.Shutdown()
	defer cancel()

	pods := factory.Core().V1().Pods()
	informer := pods.Informer()
	lister := pods.Lister()

	dirty, err := s.watch(informer, "pod", func() { s.events.Add(1) })
	if err != nil {
		return err
	}
	factory.StartWithContext(ctx)

	// The first report waits for the first full list: before it the cache holds a part
	// of the fleet, and reporting that would drain the rest. An unreachable API is
	// retried by the reflector (with backoff) for as long as ctx lasts.
	for {
		wctx, wcancel := context.WithTimeout(ctx, syncWarnAfter)
		res := factory.WaitForCacheSyncWithContext(wctx)
		wcancel()
		if res.Err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		s.log.Warn("kubernetes discovery: pod list not synced yet; still trying", "selector", s.selector.String(),
			"waited", syncWarnAfter)
	}
	s.metrics.Lookup(sourceName, true)

	var last []discovery.Member
	first := true
	timer := time.NewTimer(s.debounce)
	timer.Stop() // armed by Reset below; since Go 1.23 a stopped timer delivers nothing
	for {
		seen := s.events.Load()
		view, err := s.view(lister)
		if err != nil {
			// The cache lister fails only on a bad selector, which New has refused;
			// never report an empty view because of it.
			s.log.Error("kubernetes discovery: list the pod cache", "err", err)
		} else if first || !reflect.DeepEqual(view, last) {
			first = false
			last = view
			s.metrics.Members(sourceName, len(view))
			update(slices.Clone(view))
		}
		s.applied.Store(seen)
		select {
		case <-ctx.Done():
			return nil
		case <-dirty:
		}
		// Coalesce the rest of a burst into this report.
		timer.Reset(s.debounce)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
	}
}

// debugHandler passes client-go's log records on at debug level (errors stay errors):
// its "watch ended with error" would otherwise repeat, at info level, the warning the
// source logs once per streak.
type debugHandler struct{ slog.Handler }

// Enabled reports whether h handles records of level l once lowered.
func (h debugHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.Handler.Enabled(ctx, lower(l))
}

// Handle passes r on with its level lowered.
func (h debugHandler) Handle(ctx context.Context, r slog.Record) error {
	r.Level = lower(r.Level)
	return h.Handler.Handle(ctx, r)
}

// WithAttrs returns h's handler with attrs, still lowering levels.
func (h debugHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return debugHandler{h.Handler.WithAttrs(attrs)}
}

// WithGroup returns h's handler in group name, still lowering levels.
func (h debugHandler) WithGroup(name string) slog.Handler {
	return debugHandler{h.Handler.WithGroup(name)}
}

func lower(l slog.Level) slog.Level {
	if l >= slog.LevelError {
		return l
	}
	return min(l, slog.LevelDebug)
}

// watch wires informer's watch errors to the API's health and its events to the
// returned channel (buffer 1: a burst of events is one wake-up); each event also calls
// counted when not nil. what names the resource in errors.
func (s *Source) watch(informer cache.SharedIndexInformer, what string, counted func()) (<-chan struct{}, error) {
	dirty := make(chan struct{}, 1)
	poke := func() {
		if counted != nil {
			counted()
		}
		s.apiOK()
		select {
		case dirty <- struct{}{}:
		default:
		}
	}
	if err := informer.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		s.apiError(err)
	}); err != nil {
		return nil, fmt.Errorf("kubernetes discovery: %s watch error handler: %w", what, err)
	}
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(_, _ any) { poke() },
		DeleteFunc: func(any) { poke() },
	}); err != nil {
		return nil, fmt.Errorf("kubernetes discovery: %s event handler: %w", what, err)
	}
	return dirty, nil
}

// apiOK notes an event from the API: it counts, and ends an error streak.
func (s *Source) apiOK() {
	s.metrics.Lookup(sourceName, true)
	if s.failing.Swap(false) {
		s.log.Info("kubernetes discovery: API answering again")
	}
}

// apiError notes a failed list or watch: client-go keeps its cache and retries with
// backoff, so the view stays as it was; the error is counted and logged once per
// streak.
func (s *Source) apiError(err error) {
	// Logged before counted: whoever sees the count finds the line.
	if s.failing.Swap(true) {
		s.log.Debug("kubernetes discovery: list/watch failed again; keeping the last view", "err", err)
	} else {
		s.log.Warn("kubernetes discovery: list/watch failed; keeping the last view and retrying", "err", err)
	}
	s.metrics.Lookup(sourceName, false)
}

// view computes the current members from the informer's cache, sorted by id, and
// updates s.rejected (counting and logging the newly rejected pods).
func (s *Source) view(lister listersv1.PodLister) ([]discovery.Member, error) {
	// The selector is applied again here: the API applies it to lists and watches,
	// this guards against a server (or a fake) that does not.
	pods, err := lister.Pods(s.ns).List(s.selector)
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	slices.SortFunc(pods, func(a, b *corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	members := make([]discovery.Member, 0, len(pods))
	rejected := make(map[string]string)
	for _, p := range pods {
		m, reason, err := s.member(p)
		switch {
		case reason != "":
			rejected[p.Name] = reason
			if s.rejected[p.Name] != reason {
				s.log.Warn("kubernetes discovery: pod skipped", "pod", p.Name, "reason", reason, "err", err)
				s.metrics.Rejected(sourceName, reason)
			}
		case m != nil:
			members = append(members, *m)
		}
	}
	s.rejected = rejected
	return members, nil
}

// errNoIP is member's answer for a pod not yet given an IP: skipped, not rejected.
var errNoIP = errors.New("no pod IP yet")

// member returns the member for pod p; nil with reason "" for a pod that is no worker
// (no IP yet, finished), nil with a reason and an error for a rejected pod.
func (s *Source) member(p *corev1.Pod) (*discovery.Member, string, error) {
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil, "", nil
	}
	if p.Status.PodIP == "" {
		return nil, "", errNoIP
	}
	addr, err := netip.ParseAddr(p.Status.PodIP)
	if err != nil {
		return nil, discovery.RejectBadAddress, fmt.Errorf("pod IP %q: %w", p.Status.PodIP, err)
	}
	addr = addr.Unmap()
	if why := discovery.Unusable(addr); why != "" {
		return nil, discovery.RejectBadAddress, fmt.Errorf("pod IP %q: %s", p.Status.PodIP, why)
	}
	port := s.cfg.Port
	if port == 0 {
		if port = namedPort(p, s.cfg.PortName); port == 0 {
			return nil, discovery.RejectBadPort, fmt.Errorf("no container port named %q", s.cfg.PortName)
		}
	}
	w := s.cfg.Worker(p.Name, addr.String(), port)
	if role, ok := p.Labels[configs.RoleLabel]; ok {
		w.Role = role // the pod's own role (P/D disaggregation), checked just below
	}
	if err := configs.ValidateWorker(&w); err != nil {
		return nil, discovery.RejectInvalidWorker, err
	}
	return &discovery.Member{Worker: w, Ready: p.DeletionTimestamp == nil && podReady(p)}, "", nil
}

// namedPort returns the number of the first container port of p named name, else 0.
func namedPort(p *corev1.Pod, name string) int {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == name && cp.ContainerPort > 0 && cp.ContainerPort <= 65535 {
				return int(cp.ContainerPort)
			}
		}
	}
	return 0
}

// podReady reports whether p's Ready condition is True.
func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

var _ discovery.Source = (*Source)(nil)
