package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/kvroute/kvroute/upstream/discovery"
)

// InferencePoolGVR is the resource of the InferencePools the source reads:
// inference.networking.k8s.io/v1, inferencepools.
var InferencePoolGVR = schema.GroupVersionResource{Group: "inference.networking.k8s.io", Version: "v1", Resource: "inferencepools"}

// RejectBadPool is the reason label of kvroute_discovery_rejected_total for an
// InferencePool the source cannot use (no selector, no target port, wrong types).
const RejectBadPool = "bad_pool"

// inferencePool is the part of an InferencePool (v1) the source reads, decoded from
// the dynamic client's unstructured object by runtime.DefaultUnstructuredConverter:
// a field of the wrong type is a decoding error, never a panic.
type inferencePool struct {
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		TargetPorts []struct {
			Number int32 `json:"number"`
		} `json:"targetPorts"`
	} `json:"spec"`
}

// poolSpec is what a pool tells the pod watch: which pods, on which port.
type poolSpec struct {
	selector map[string]string
	port     int
}

func (p poolSpec) equal(o poolSpec) bool {
	return p.port == o.port && maps.Equal(p.selector, o.selector)
}

// parsePool decodes and checks an InferencePool object.
func parsePool(obj map[string]any) (poolSpec, error) {
	var ip inferencePool
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj, &ip); err != nil {
		return poolSpec{}, fmt.Errorf("decode: %w", err)
	}
	ml := ip.Spec.Selector.MatchLabels
	if len(ml) == 0 {
		return poolSpec{}, errors.New("spec.selector.matchLabels is empty: the pool selects no pods (or every pod)")
	}
	if _, err := labels.ValidatedSelectorFromSet(ml); err != nil {
		return poolSpec{}, fmt.Errorf("spec.selector.matchLabels: %w", err)
	}
	if len(ip.Spec.TargetPorts) == 0 {
		return poolSpec{}, errors.New("spec.targetPorts is empty")
	}
	n := ip.Spec.TargetPorts[0].Number
	if n < 1 || n > 65535 {
		return poolSpec{}, fmt.Errorf("spec.targetPorts[0].number: %d is not a port from 1 to 65535", n)
	}
	return poolSpec{selector: maps.Clone(ml), port: int(n)}, nil
}

// ParseInferencePool decodes an InferencePool object (as JSON decodes it, or the
// dynamic client's unstructured content) as the source does: the pods it selects
// (spec.selector.matchLabels, non-empty and valid) and their port (the first
// spec.targetPorts number, 1 to 65535), or an error saying what is wrong.
func ParseInferencePool(obj map[string]any) (matchLabels map[string]string, port int, err error) {
	spec, err := parsePool(obj)
	return spec.selector, spec.port, err
}

// runPool is Run for an InferencePool: it watches the pool (a dynamic informer on
// the one object) and runs a pod watch (runPods) for its current selector and port,
// restarting it when they change. Only one pod watch runs at a time, and the next
// starts once the last has returned, so update is never called concurrently.
func (s *Source) runPool(ctx context.Context, update func([]discovery.Member)) error {
	ctx, cancel := context.WithCancel(ctx)
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(debugHandler{s.log.Handler()}))
	name := s.cfg.InferencePool
	log := s.log.With("inference_pool", name)
	factory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(s.dynamic, s.cfg.Resync, s.ns,
		func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + name })
	defer factory.Shutdown()
	defer cancel()

	gi := factory.ForResource(InferencePoolGVR)
	informer := gi.Informer()
	lister := gi.Lister().ByNamespace(s.ns)
	dirty, err := s.watch(informer, "pool", nil)
	if err != nil {
		return err
	}
	factory.Start(ctx.Done())

	// The pod watch of the current spec; stopPods ends it and waits for it.
	var (
		cur      poolSpec
		running  bool
		podsStop context.CancelFunc
		podsDone sync.WaitGroup
	)
	stopPods := func() {
		if running {
			podsStop()
			podsDone.Wait()
			running = false
		}
	}
	defer stopPods()
	startPods := func(spec poolSpec) {
		stopPods()
		child := &Source{cfg: s.cfg, ns: s.ns, selector: labels.SelectorFromValidatedSet(spec.selector),
			client: s.client, metrics: s.metrics, log: s.log, debounce: s.debounce}
		child.cfg.InferencePool, child.cfg.Port, child.cfg.PortName = "", spec.port, ""
		pctx, pcancel := context.WithCancel(ctx)
		podsStop, running, cur = pcancel, true, spec
		podsDone.Add(1)
		go func() {
			defer podsDone.Done()
			if err := child.runPods(pctx, update); err != nil {
				log.Error("kubernetes discovery: pod watch of the inference pool", "err", err)
			}
		}()
	}

	for {
		wctx, wcancel := context.WithTimeout(ctx, syncWarnAfter)
		synced := cache.WaitForCacheSync(wctx.Done(), informer.HasSynced)
		wcancel()
		if synced {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("kubernetes discovery: inference pool list not synced yet; still trying", "waited", syncWarnAfter)
	}

	// state is what the last look found: "" (a usable pool), "missing", or the
	// error of a malformed pool; each change of it is logged and counted once.
	state := "init"
	for {
		var spec poolSpec
		var next string
		obj, err := lister.Get(name)
		switch {
		case apierrors.IsNotFound(err):
			next = "missing"
		case err != nil:
			next = "lister: " + err.Error()
		default:
			u, ok := obj.(*unstructured.Unstructured)
			if !ok {
				next = fmt.Sprintf("unexpected object %T", obj)
			} else if spec, err = parsePool(u.Object); err != nil {
				next = err.Error()
			}
		}
		if next != state {
			switch {
			// Logged before counted: whoever sees the count finds the line.
			case next == "missing" && running:
				log.Warn("kubernetes discovery: inference pool not found (deleted?); keeping the pods of its last spec",
					"selector", labels.SelectorFromValidatedSet(cur.selector).String(), "port", cur.port)
				s.metrics.Lookup(sourceName, false)
			case next == "missing":
				log.Warn("kubernetes discovery: inference pool not found; waiting for it")
				s.metrics.Lookup(sourceName, false)
			case next != "":
				log.Warn("kubernetes discovery: inference pool unusable; keeping the last view", "err", next)
				s.metrics.Rejected(sourceName, RejectBadPool)
			case state != "init":
				log.Info("kubernetes discovery: inference pool usable again")
			}
			state = next
		}
		if next == "" && (!running || !spec.equal(cur)) {
			log.Info("kubernetes discovery: watching the inference pool's pods",
				"selector", labels.SelectorFromValidatedSet(spec.selector).String(), "port", spec.port)
			startPods(spec)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-dirty:
		}
	}
}
