package configs

import (
	"strings"
	"testing"
)

func TestInferencePoolConfig(t *testing.T) {
	good := "discovery:\n  kubernetes:\n    inference_pool: vllm\n"
	cfg, err := Load([]byte(good))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if k := cfg.Discovery.Kubernetes; k.InferencePool != "vllm" || k.LabelSelector != "" || k.Port != 0 {
		t.Errorf("kubernetes = %+v", k)
	}
	for body, want := range map[string]string{
		"inference_pool: vllm\n    label_selector: app=vllm\n    port: 8000": `label_selector "app=vllm" and inference_pool "vllm" both set`,
		"inference_pool: vllm\n    port: 8000":                               `port/port_name set with inference_pool "vllm"`,
		"inference_pool: vllm\n    port_name: http":                          `port/port_name set with inference_pool "vllm"`,
		"inference_pool: a/b":                                                `inference_pool: "a/b" is not an object name`,
		"port: 8000":                                                         "label_selector: required (e.g. app=vllm), or inference_pool",
	} {
		_, err := Load([]byte("discovery:\n  kubernetes:\n    " + body + "\n"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one containing %q", body, err, want)
		}
	}
}
