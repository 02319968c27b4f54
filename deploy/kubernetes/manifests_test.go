package kubernetes

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/kvroute/kvroute/configs"
)

// namespace is the namespace every manifest's object lives in.
const namespace = "llm"

// strict decodes one YAML or JSON document into its typed Kubernetes object, failing on
// unknown and duplicate fields and on kinds client-go's scheme does not know.
var strict = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

// manifest is one decoded document and where it came from.
type manifest struct {
	where string // file#index
	obj   runtime.Object
}

// documents splits a multi-document YAML stream, dropping documents that hold only
// comments and blank lines.
func documents(t *testing.T, data []byte) [][]byte {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("split documents: %v", err)
		}
		for _, line := range strings.Split(string(doc), "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") && l != "---" {
				docs = append(docs, doc)
				break
			}
		}
	}
}

// load decodes every document of every *.yaml file in the directory strictly.
func load(t *testing.T) []manifest {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	var out []manifest
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range documents(t, data) {
			where := f + "#" + strconv.Itoa(i)
			obj, _, err := strict.Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			out = append(out, manifest{where, obj})
		}
	}
	return out
}

// The strict decoder refuses what kubectl apply would refuse or silently drop.
func TestStrictDecoderRefuses(t *testing.T) {
	for _, tc := range []struct{ name, doc, err string }{
		{"unknown field", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 2}\n", "unknown field"},
		{"duplicate field", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nmetadata: {name: b}\n", "already set"},
		{"unknown kind", "apiVersion: v1\nkind: Pond\nmetadata: {name: x}\n", "no kind"},
		{"wrong type", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: [1]}\n", "cannot unmarshal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := strict.Decode([]byte(tc.doc), nil, nil)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Decode: %v, want an error containing %q", err, tc.err)
			}
		})
	}
}

// Every manifest is a known kind in the one namespace, the RBAC is the least the
// discovery source needs and is bound to the router's service account, the router's
// probes, config mount and Service fit together, and the example workers match the
// discovery selector.
func TestManifests(t *testing.T) {
	var (
		sas        []*corev1.ServiceAccount
		roles      []*rbacv1.Role
		bindings   []*rbacv1.RoleBinding
		cms        []*corev1.ConfigMap
		deploys    = map[string]*appsv1.Deployment{}
		services   []*corev1.Service
		namespaces []string
	)
	for _, m := range load(t) {
		var ns string
		switch o := m.obj.(type) {
		case *corev1.Namespace:
			namespaces = append(namespaces, o.Name)
			continue
		case *corev1.ServiceAccount:
			sas, ns = append(sas, o), o.Namespace
		case *rbacv1.Role:
			roles, ns = append(roles, o), o.Namespace
		case *rbacv1.RoleBinding:
			bindings, ns = append(bindings, o), o.Namespace
		case *corev1.ConfigMap:
			cms, ns = append(cms, o), o.Namespace
		case *appsv1.Deployment:
			deploys[o.Name], ns = o, o.Namespace
		case *corev1.Service:
			services, ns = append(services, o), o.Namespace
		default:
			t.Fatalf("%s: unexpected kind %T (a ClusterRole would grant more than the namespace)", m.where, m.obj)
		}
		if ns != namespace {
			t.Errorf("%s: namespace %q, want %q", m.where, ns, namespace)
		}
	}
	if !slices.Equal(namespaces, []string{namespace}) {
		t.Fatalf("namespaces %v, want [%s]", namespaces, namespace)
	}
	if len(sas) != 1 || len(roles) != 1 || len(bindings) != 1 || len(cms) != 1 || len(services) != 1 || deploys["kvroute"] == nil {
		t.Fatalf("%d service accounts, %d roles, %d role bindings, %d config maps, %d services, deployments %v; want one of each and a kvroute deployment",
			len(sas), len(roles), len(bindings), len(cms), len(services), slices.Collect(maps.Keys(deploys)))
	}

	// RBAC: exactly get, list and watch on pods, bound to the router's service account.
	role := roles[0]
	want := rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}
	if len(role.Rules) != 1 {
		t.Fatalf("role %s has %d rules, want 1: %+v", role.Name, len(role.Rules), role.Rules)
	}
	r := role.Rules[0]
	verbs := slices.Sorted(slices.Values(r.Verbs))
	if !slices.Equal(r.APIGroups, want.APIGroups) || !slices.Equal(r.Resources, want.Resources) || !slices.Equal(verbs, want.Verbs) ||
		len(r.ResourceNames) != 0 || len(r.NonResourceURLs) != 0 {
		t.Fatalf("role rule %+v, want exactly %+v", r, want)
	}
	rb := bindings[0]
	if rb.RoleRef != (rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name}) {
		t.Fatalf("role binding refers to %+v, want the Role %s", rb.RoleRef, role.Name)
	}
	router := deploys["kvroute"]
	pod := router.Spec.Template.Spec
	wantSubject := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: sas[0].Name, Namespace: namespace}
	if len(rb.Subjects) != 1 || rb.Subjects[0] != wantSubject || pod.ServiceAccountName != sas[0].Name {
		t.Fatalf("role binding subjects %+v, deployment service account %q; want %+v for both", rb.Subjects, pod.ServiceAccountName, wantSubject)
	}

	// The router's container: args, probes on the API port, the config mount.
	if len(pod.Containers) != 1 {
		t.Fatalf("kvroute pod has %d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	if !slices.Equal(c.Args, []string{"serve", "--config", "/etc/kvroute/kvroute.yaml"}) {
		t.Errorf("kvroute args %q", c.Args)
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "http" || c.Ports[0].ContainerPort != 8080 {
		t.Errorf("kvroute ports %+v, want http 8080 only (the admin stays on loopback)", c.Ports)
	}
	for _, p := range []struct {
		probe *corev1.Probe
		path  string
	}{{c.ReadinessProbe, "/ready"}, {c.LivenessProbe, "/health"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "http" {
			t.Errorf("probe %+v, want GET %s on port http", p.probe, p.path)
		}
	}
	if len(c.VolumeMounts) != 1 || c.VolumeMounts[0].MountPath != "/etc/kvroute" || len(pod.Volumes) != 1 ||
		pod.Volumes[0].Name != c.VolumeMounts[0].Name || pod.Volumes[0].ConfigMap == nil || pod.Volumes[0].ConfigMap.Name != cms[0].Name {
		t.Errorf("config mount %+v from volumes %+v, want the ConfigMap %s at /etc/kvroute", c.VolumeMounts, pod.Volumes, cms[0].Name)
	}
	svc := services[0]
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(router.Spec.Template.Labels)) ||
		len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.String() != "http" {
		t.Errorf("service %s selects %v, ports %+v; want the router's pods on port http", svc.Name, svc.Spec.Selector, svc.Spec.Ports)
	}

	// The config: discovery.kubernetes on, no static workers, valid without an admin
	// token in the environment.
	t.Setenv(configs.AdminTokenEnv, "")
	cfg, err := configs.Load([]byte(cms[0].Data["kvroute.yaml"]))
	if err != nil {
		t.Fatalf("configmap kvroute.yaml: %v", err)
	}
	k := cfg.Discovery.Kubernetes
	if k == nil || cfg.Discovery.DNS != nil || len(cfg.Workers) != 0 {
		t.Fatalf("config discovery %+v with %d static workers, want kubernetes only", cfg.Discovery, len(cfg.Workers))
	}
	if k.LabelSelector != "app=vllm" || k.PortName != "http" || k.Port != 0 || k.EventsPort != 5557 || k.ReplayPort != 5558 || k.Namespace != "" {
		t.Fatalf("discovery.kubernetes = %+v", *k)
	}
	if cfg.Listen != ":8080" || cfg.Admin.Listen != "127.0.0.1:9090" {
		t.Errorf("listen %q, admin.listen %q; want :8080 and 127.0.0.1:9090", cfg.Listen, cfg.Admin.Listen)
	}

	// The example workers are what the router discovers.
	if vllm := deploys["vllm"]; vllm != nil {
		sel, err := labels.Parse(k.LabelSelector)
		if err != nil {
			t.Fatal(err)
		}
		if !sel.Matches(labels.Set(vllm.Spec.Template.Labels)) {
			t.Errorf("vllm pods labelled %v do not match the selector %q", vllm.Spec.Template.Labels, k.LabelSelector)
		}
		ports := map[string]int32{}
		for _, c := range vllm.Spec.Template.Spec.Containers {
			for _, p := range c.Ports {
				ports[p.Name] = p.ContainerPort
			}
		}
		if ports[k.PortName] == 0 || !slices.Contains(slices.Collect(maps.Values(ports)), int32(k.EventsPort)) ||
			!slices.Contains(slices.Collect(maps.Values(ports)), int32(k.ReplayPort)) {
			t.Errorf("vllm container ports %v, want %q and the events and replay ports", ports, k.PortName)
		}
	}
}
