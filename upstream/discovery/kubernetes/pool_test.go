package kubernetes

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
)

// poolConfig reads the pods of the InferencePool "vllm" in ns.
func poolConfig() configs.KubernetesDiscovery {
	return configs.KubernetesDiscovery{
		WorkerTemplate: configs.WorkerTemplate{Scheme: "http", DPRanks: 1, MaxConns: 16, EventsPort: 5557},
		Namespace:      ns, InferencePool: "vllm", Resync: time.Minute,
	}
}

// poolObj is an InferencePool named name in ns with the given spec, as the dynamic
// client holds it (JSON types: numbers are int64 or float64).
func poolObj(name string, spec any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
		"metadata": map[string]any{"name": name, "namespace": ns},
		"spec":     spec,
	}}
}

// goodSpec selects app=app on port.
func goodSpec(app string, port int64) map[string]any {
	return map[string]any{
		"selector":          map[string]any{"matchLabels": map[string]any{"app": app}},
		"targetPorts":       []any{map[string]any{"number": port}},
		"endpointPickerRef": map[string]any{"name": "kvroute-epp", "port": map[string]any{"number": int64(9002)}},
	}
}

func newDynamic(objs ...runtime.Object) *dynfake.FakeDynamicClient {
	return dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{InferencePoolGVR: "InferencePoolList"}, objs...)
}

// labelled is pod(name, ip, true) labelled app=app.
func labelled(name, ip, app string) *corev1.Pod {
	p := pod(name, ip, true)
	p.Labels = map[string]string{"app": app}
	return p
}

func (h *harness) checkURLs(want ...string) {
	h.t.Helper()
	v := h.rec.lastView()
	if len(v) != len(want) {
		h.t.Fatalf("view %v, want URLs %v", summary(v), want)
	}
	for i, m := range v {
		if m.Worker.URL != want[i] {
			h.t.Errorf("member %s: URL %q, want %q", m.Worker.ID, m.Worker.URL, want[i])
		}
	}
}

// The pool's selector and first target port choose the members; a changed pool
// changes them; a deleted pool keeps the pods of its last spec (still watched); a
// re-created pool is followed again.
func TestInferencePool(t *testing.T) {
	client := fake.NewClientset(labelled("a", "10.0.0.1", "vllm"), labelled("b", "10.0.0.2", "vllm"),
		labelled("c", "10.0.0.3", "other"))
	dyn := newDynamic(poolObj("vllm", goodSpec("vllm", 8000)), poolObj("unrelated", goodSpec("other", 1)))
	h := runWith(t, poolConfig(), client, dyn)
	pools := dyn.Resource(InferencePoolGVR).Namespace(ns)
	ctx := context.Background()

	h.waitView("a:ready", "b:ready")
	h.checkURLs("http://10.0.0.1:8000", "http://10.0.0.2:8000")
	if ev := h.rec.lastView()[0].Worker.Events; ev != "tcp://10.0.0.1:5557" {
		t.Errorf("events = %q, want the template's port on the pod IP", ev)
	}

	if _, err := pools.Update(ctx, poolObj("vllm", goodSpec("other", 9000)), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitView("c:ready")
	h.checkURLs("http://10.0.0.3:9000")
	_, views := h.rec.last()

	if err := pools.Delete(ctx, "vllm", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, wait, "the deletion counted", func() bool { return h.lookups("error") == 1 })
	if n := h.logs.count("inference pool not found (deleted?)"); n != 1 {
		t.Errorf("deletion logged %d times, want 1", n)
	}
	h.checkViews(views, "c:ready")
	// The last spec's pods are still followed.
	h.create(labelled("d", "10.0.0.4", "other"))
	h.waitView("c:ready", "d:ready")
	h.checkURLs("http://10.0.0.3:9000", "http://10.0.0.4:9000")

	if _, err := pools.Create(ctx, poolObj("vllm", goodSpec("vllm", 8001)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitView("a:ready", "b:ready")
	h.checkURLs("http://10.0.0.1:8001", "http://10.0.0.2:8001")
	if h.rejected(RejectBadPool) != 0 {
		t.Errorf("bad_pool counted for good pools")
	}
}

// A malformed pool is an error counted once and logged, never a panic: before a good
// spec nothing is reported; after one, the last view stays.
func TestInferencePoolMalformed(t *testing.T) {
	client := fake.NewClientset(labelled("a", "10.0.0.1", "vllm"))
	dyn := newDynamic(poolObj("vllm", map[string]any{"targetPorts": []any{map[string]any{"number": int64(8000)}}}))
	h := runWith(t, poolConfig(), client, dyn)
	pools := dyn.Resource(InferencePoolGVR).Namespace(ns)
	ctx := context.Background()

	poll.CheckFor(t, wait, "the bad pool counted", func() bool { return h.rejected(RejectBadPool) == 1 })
	if h.logs.count("spec.selector.matchLabels is empty") != 1 {
		t.Errorf("log lacks the error: %s", h.logs.buf.String())
	}
	if _, err := pools.Update(ctx, poolObj("vllm", goodSpec("vllm", 8000)), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.waitView("a:ready")
	h.checkViews(1, "a:ready") // nothing was reported for the bad pool

	bad := goodSpec("vllm", 8000)
	bad["targetPorts"] = []any{map[string]any{"number": "8000"}}
	if _, err := pools.Update(ctx, poolObj("vllm", bad), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, wait, "the second bad pool counted", func() bool { return h.rejected(RejectBadPool) == 2 })
	h.checkViews(1, "a:ready")
	h.checkURLs("http://10.0.0.1:8000")
}

func TestParsePool(t *testing.T) {
	port := func(n any) map[string]any {
		s := goodSpec("vllm", 0)
		s["targetPorts"] = []any{map[string]any{"number": n}}
		return s
	}
	sel := func(ml any) map[string]any {
		s := goodSpec("vllm", 8000)
		s["selector"] = map[string]any{"matchLabels": ml}
		return s
	}
	for name, c := range map[string]struct {
		spec any
		want string // error substring; "" for success
	}{
		"good":             {goodSpec("vllm", 8000), ""},
		"float port":       {port(8000.0), ""},
		"no spec":          {nil, "matchLabels is empty"},
		"spec string":      {"x", "decode"},
		"no selector":      {map[string]any{"targetPorts": []any{map[string]any{"number": int64(1)}}}, "matchLabels is empty"},
		"empty labels":     {sel(map[string]any{}), "matchLabels is empty"},
		"label int":        {sel(map[string]any{"app": int64(1)}), "decode"},
		"bad label value":  {sel(map[string]any{"app": "a b"}), "spec.selector.matchLabels"},
		"bad label key":    {sel(map[string]any{"-x": "a"}), "spec.selector.matchLabels"},
		"labels a list":    {sel([]any{"app"}), "decode"},
		"no target ports":  {map[string]any{"selector": map[string]any{"matchLabels": map[string]any{"a": "b"}}}, "spec.targetPorts is empty"},
		"ports not a list": {map[string]any{"selector": map[string]any{"matchLabels": map[string]any{"a": "b"}}, "targetPorts": "8000"}, "decode"},
		"port string":      {port("8000"), "decode"},
		"port zero":        {port(int64(0)), "is not a port"},
		"port negative":    {port(int64(-1)), "is not a port"},
		"port too big":     {port(int64(70000)), "is not a port"},
		"port over int32":  {port(int64(1) << 40), ""}, // any error will do
		"port fraction":    {port(8000.5), ""},
	} {
		t.Run(name, func(t *testing.T) {
			spec, err := parsePool(poolObj("p", c.spec).Object)
			switch {
			case name == "good" || name == "float port":
				if err != nil || spec.port != 8000 || spec.selector["app"] != "vllm" || len(spec.selector) != 1 {
					t.Fatalf("parsePool = %+v, %v", spec, err)
				}
			case err == nil:
				t.Fatalf("parsePool = %+v, want an error containing %q", spec, c.want)
			case !strings.Contains(err.Error(), c.want):
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
		})
	}
}

// FuzzParsePool decodes arbitrary JSON as an InferencePool object: an error or a
// spec with a selector and a valid port, never a panic.
func FuzzParsePool(f *testing.F) {
	for _, s := range []any{goodSpec("vllm", 8000), "x", map[string]any{"targetPorts": []any{map[string]any{"number": "1"}}}} {
		b, err := json.Marshal(poolObj("p", s).Object)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var obj map[string]any
		if json.Unmarshal(data, &obj) != nil || obj == nil {
			return
		}
		spec, err := parsePool(obj)
		if err != nil {
			return
		}
		if spec.port < 1 || spec.port > 65535 || len(spec.selector) == 0 {
			t.Fatalf("parsePool accepted %+v", spec)
		}
	})
}

func TestNewInferencePool(t *testing.T) {
	for name, mod := range map[string]func(*configs.KubernetesDiscovery){
		"and label_selector": func(c *configs.KubernetesDiscovery) { c.LabelSelector = "app=vllm" },
		"and port":           func(c *configs.KubernetesDiscovery) { c.Port = 8000 },
		"and port_name":      func(c *configs.KubernetesDiscovery) { c.PortName = "http" },
	} {
		cfg := poolConfig()
		mod(&cfg)
		_, err := New(cfg, Options{Client: fake.NewClientset(), Dynamic: newDynamic()})
		if err == nil || !strings.Contains(err.Error(), `inference_pool "vllm" excludes label_selector, port and port_name`) {
			t.Errorf("%s: New error %v", name, err)
		}
	}
	if _, err := New(poolConfig(), Options{Client: fake.NewClientset(), Dynamic: newDynamic()}); err != nil {
		t.Errorf("New: %v", err)
	}
}
