package epp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"maps"
	"net"
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
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/router/epp"
	"github.com/kvroute/kvroute/upstream/discovery/kubernetes"
)

const namespace = "llm"

var strict = serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

// inferencePool is the part of inference.networking.k8s.io/v1 InferencePool the
// manifests use (api/v1/inferencepool_types.go in
// kubernetes-sigs/gateway-api-inference-extension), decoded strictly: a field it does
// not list is an error.
type inferencePool struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		TargetPorts []struct {
			Number int `json:"number"`
		} `json:"targetPorts"`
		EndpointPickerRef struct {
			Name string `json:"name"`
			Port struct {
				Number int `json:"number"`
			} `json:"port"`
			FailureMode string `json:"failureMode"`
		} `json:"endpointPickerRef"`
	} `json:"spec"`
}

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
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(doc), "\n") {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") && l != "---" {
				docs = append(docs, doc)
				break
			}
		}
	}
}

func port(t *testing.T, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	n, err2 := strconv.Atoi(p)
	if err != nil || err2 != nil {
		t.Fatalf("address %q: %v %v", addr, err, err2)
	}
	return int32(n)
}

// The manifests decode strictly, live in one namespace, and fit together: the
// InferencePool's pods are the ones the config discovers, its endpoint picker is the
// Service in front of the picker's ext_proc port, the probes ask the picker's gRPC
// health services, and the RBAC is only the pod and pool reading discovery needs.
func TestManifests(t *testing.T) {
	files, _ := filepath.Glob("*.yaml")
	var (
		pools   []inferencePool
		poolDoc []byte
		dep     *appsv1.Deployment
		svc     *corev1.Service
		cm      *corev1.ConfigMap
		sa      *corev1.ServiceAccount
		role    *rbacv1.Role
		binding *rbacv1.RoleBinding
	)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range documents(t, data) {
			where := f + "#" + strconv.Itoa(i)
			if bytes.Contains(doc, []byte("kind: InferencePool")) {
				var p inferencePool
				if err := yaml.UnmarshalStrict(doc, &p); err != nil {
					t.Fatalf("%s: %v", where, err)
				}
				pools = append(pools, p)
				poolDoc = doc
				continue
			}
			obj, _, err := strict.Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			var ns string
			switch o := obj.(type) {
			case *appsv1.Deployment:
				dep, ns = o, o.Namespace
			case *corev1.Service:
				svc, ns = o, o.Namespace
			case *corev1.ConfigMap:
				cm, ns = o, o.Namespace
			case *corev1.ServiceAccount:
				sa, ns = o, o.Namespace
			case *rbacv1.Role:
				role, ns = o, o.Namespace
			case *rbacv1.RoleBinding:
				binding, ns = o, o.Namespace
			default:
				t.Fatalf("%s: unexpected kind %T", where, obj)
			}
			if ns != namespace {
				t.Errorf("%s: namespace %q, want %q", where, ns, namespace)
			}
		}
	}
	if len(pools) != 1 || dep == nil || svc == nil || cm == nil || sa == nil || role == nil || binding == nil {
		t.Fatalf("pools %d, deployment %v, service %v, configmap %v, sa %v, role %v, binding %v: want one of each",
			len(pools), dep != nil, svc != nil, cm != nil, sa != nil, role != nil, binding != nil)
	}
	pool := pools[0]
	if pool.APIVersion != "inference.networking.k8s.io/v1" || pool.Metadata.Namespace != namespace {
		t.Errorf("pool %s in %s", pool.APIVersion, pool.Metadata.Namespace)
	}

	cfg, err := configs.Load([]byte(cm.Data["kvroute.yaml"]))
	if err != nil {
		t.Fatalf("configmap kvroute.yaml: %v", err)
	}
	// The picker reads the pool itself, and parses it as it would from the API.
	if k := cfg.Discovery.Kubernetes; k == nil || k.InferencePool != pool.Metadata.Name || k.LabelSelector != "" {
		t.Errorf("discovery.kubernetes %+v: want inference_pool %q", k, pool.Metadata.Name)
	}
	var obj map[string]any
	if err := yaml.Unmarshal(poolDoc, &obj); err != nil {
		t.Fatal(err)
	}
	ml, tp, err := kubernetes.ParseInferencePool(obj)
	if err != nil || !maps.Equal(ml, pool.Spec.Selector.MatchLabels) || len(pool.Spec.TargetPorts) != 1 || tp != pool.Spec.TargetPorts[0].Number {
		t.Errorf("the source parses the pool as %v port %d (%v); the manifest has %+v", ml, tp, err, pool.Spec)
	}

	// The picker's pod: args, ports from the config, gRPC probes.
	pod := dep.Spec.Template.Spec
	if len(pod.Containers) != 1 || pod.ServiceAccountName != sa.Name {
		t.Fatalf("%d containers, service account %q", len(pod.Containers), pod.ServiceAccountName)
	}
	c := pod.Containers[0]
	if len(c.Args) < 1 || c.Args[0] != "epp" || c.VolumeMounts[0].MountPath+"/kvroute.yaml" != c.Args[2] {
		t.Errorf("args %q: want epp --config <the mounted config>", c.Args)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["grpc"] != port(t, cfg.EPP.GRPCListen) || ports["grpc-health"] != port(t, cfg.EPP.HealthListen) || ports["metrics"] != port(t, cfg.Listen) {
		t.Errorf("container ports %v; config grpc %s, health %s, listen %s", ports, cfg.EPP.GRPCListen, cfg.EPP.HealthListen, cfg.Listen)
	}
	for _, p := range []struct {
		probe   *corev1.Probe
		service string
	}{{c.ReadinessProbe, epp.ReadinessService}, {c.LivenessProbe, epp.LivenessService}} {
		if p.probe == nil || p.probe.GRPC == nil || p.probe.GRPC.Port != ports["grpc-health"] || p.probe.GRPC.Service == nil || *p.probe.GRPC.Service != p.service {
			t.Errorf("probe %+v, want gRPC health service %q on %d", p.probe, p.service, ports["grpc-health"])
		}
	}
	if pod.Volumes[0].ConfigMap == nil || pod.Volumes[0].ConfigMap.Name != cm.Name {
		t.Errorf("config volume %+v, want the ConfigMap %s", pod.Volumes[0], cm.Name)
	}

	// The Service the pool names, its port reaching the ext_proc port.
	if svc.Name != pool.Spec.EndpointPickerRef.Name || !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(dep.Spec.Template.Labels)) {
		t.Errorf("service %s selecting %v; the pool names %s", svc.Name, svc.Spec.Selector, pool.Spec.EndpointPickerRef.Name)
	}
	found := false
	for _, p := range svc.Spec.Ports {
		if p.Port == int32(pool.Spec.EndpointPickerRef.Port.Number) {
			found = p.TargetPort.String() == "grpc" && p.AppProtocol != nil && *p.AppProtocol == "http2"
		}
	}
	if !found {
		t.Errorf("no service port %d to the container's grpc port with appProtocol http2: %+v", pool.Spec.EndpointPickerRef.Port.Number, svc.Spec.Ports)
	}

	// RBAC: get, list, watch pods and inferencepools; bound to the picker's account.
	var rules []string
	for _, r := range role.Rules {
		rules = append(rules, strings.Join(r.APIGroups, ",")+"/"+strings.Join(r.Resources, ",")+":"+strings.Join(r.Verbs, ","))
	}
	if want := []string{"/pods:get,list,watch", kubernetes.InferencePoolGVR.Group + "/" + kubernetes.InferencePoolGVR.Resource + ":get,list,watch"}; !slices.Equal(rules, want) {
		t.Errorf("role rules %q, want %q only", rules, want)
	}
	if binding.RoleRef.Name != role.Name || len(binding.Subjects) != 1 || binding.Subjects[0].Name != sa.Name || binding.Subjects[0].Namespace != namespace {
		t.Errorf("binding %+v", binding)
	}
}
