package stack

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kvroute/kvroute/configs"
	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/upstream/discovery/kubernetes"
)

// inferencePool is an InferencePool in llm selecting the pods labelled ml on port.
func inferencePool(ml map[string]any, port int) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
		"metadata": map[string]any{"name": "vllm", "namespace": "llm"},
		"spec": map[string]any{
			"selector":    map[string]any{"matchLabels": ml},
			"targetPorts": []any{map[string]any{"number": int64(port)}},
		},
	}}
}

// The fleet is an InferencePool's pods (kvsim behind their IPs): when the pool's
// selector narrows to some of them, the others leave, with traffic flowing and no
// failed request. (A selector moving to disjoint pods drops the old ones at once,
// before the new ones pass their health check: requests in that gap find no worker.)
func TestInferencePoolFleet(t *testing.T) {
	hosts := []string{"127.0.0.20", "127.0.0.21"}
	pp := newPods(t, hosts)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, h := range hosts {
		pp.start(t, ctx, h)
	}
	a, b := kubePod("vllm-a", hosts[0], pp.http, true), kubePod("vllm-b", hosts[1], pp.http, true)
	b.Labels["tier"] = "next"
	client := fake.NewClientset(a, b)
	dyn := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{kubernetes.InferencePoolGVR: "InferencePoolList"}, inferencePool(map[string]any{"app": "vllm"}, pp.http))

	cfg := configs.Default()
	yc, err := configs.Load(fmt.Appendf(nil, "discovery:\n  kubernetes: {namespace: llm, inference_pool: vllm, events_port: %d, replay_port: %d}\n", pp.events, pp.replay))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Discovery = yc.Discovery
	st, api, _ := startFleetStack(t, &cfg, func(st *Stack) { st.KubeClient, st.KubeDynamic = client, dyn })
	poll.CheckFor(t, 20*time.Second, "the pool's pods to join", func() bool {
		return slices.Equal(ids(st), []string{"vllm-a", "vllm-b"}) && len(st.Pool.Candidates(nil, "m")) == 2
	})
	tr := startTraffic(t, api, 3)
	poll.CheckFor(t, 20*time.Second, "both pods to serve", func() bool { return tr.served("vllm-a") > 0 && tr.served("vllm-b") > 0 })

	narrow := inferencePool(map[string]any{"app": "vllm", "tier": "next"}, pp.http)
	if _, err := dyn.Resource(kubernetes.InferencePoolGVR).Namespace("llm").Update(ctx, narrow, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll.CheckFor(t, 20*time.Second, "vllm-a to leave", func() bool {
		return slices.Equal(ids(st), []string{"vllm-b"}) && len(st.Pool.Leaving()) == 0
	})
	servedB := tr.served("vllm-b")
	poll.CheckFor(t, 20*time.Second, "vllm-b to go on serving", func() bool { return tr.served("vllm-b") > servedB })
	tr.end()
	if len(tr.failures) > 0 {
		t.Fatalf("%d of %d requests failed, first: %s", len(tr.failures), tr.sent.Load(), tr.failures[0])
	}
}
