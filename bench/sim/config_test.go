package sim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseFleetConfig(t *testing.T) {
	good, err := LoadFleetConfig("testdata/kvsim.good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if good.Workers != 4 || good.Worker.Profile != "llama-3.1-8b-h100" || good.Worker.TimeScale != 0.1 ||
		good.Worker.EventFormat != "map" || good.Worker.Faults.ErrorRate != 0.01 || good.Worker.BlockSize != 16 ||
		len(good.Worker.LoRA) != 2 {
		t.Fatalf("parsed %+v", good)
	}
	tests := []struct {
		yaml, err string
	}{
		{"workers: 0", "workers must be in [1, 1024], got 0"},
		{"wrokers: 2", "field wrokers not found"},
		{"block_size: 0", "block_size must be at least 1, got 0"},
		{"event_format: json", `unknown event layout "json"`},
		{"engine: trt", `unknown engine "trt"`},
		{"engine: sglang\ndigest_hashes: true", "digest hashes are a vLLM option"},
		{"profile: gpt5", `unknown profile "gpt5"`},
		{"time_scale: 0", "time_scale must be in (0, 1e6], got 0"},
		{"faults: {hang_rate: 1.5}", "hang_rate must be in [0, 1], got 1.5"},
		{"base_port: 65530\nworkers: 3", "base_port 65530 leaves no room for 3 workers"},
		{"lora: [a, a]", `lora adapter "a" must be non-empty, unique and not the model's name`},
		{"lora: ['']", `lora adapter "" must be`},
		{"model: m\nlora: [m]", `lora adapter "m" must be`},
		{"role: router", `role must be prefill, decode or both, got "router"`},
		{"bootstrap_port: 70000", "bootstrap_port must be in [0, 65535], got 70000"},
		{"bootstrap_port: 65535\nworkers: 2", "bootstrap_port 65535 leaves no room for 2 workers"},
		{"pd_link_gbps: -1", "pd_link_gbps must be in [0, 1e6]"},
		{"pd_transfer_timeout_ms: -1", "pd_transfer_timeout_ms must be in [0, 3600000], got -1"},
		{"faults: {transfer_error_rate: 2}", "transfer_error_rate must be in [0, 1], got 2"},
		{"dp_rank: -2", "dp_rank must be at least -1, got -2"},
		{"data_parallel_size: 0", "data_parallel_size must be at least 1, got 0"},
		{"data_parallel_size: 65", "data_parallel_size must be at most 64, got 65"},
		{"base_port: 65000\nworkers: 100\ndata_parallel_size: 4", "base_port 65000 leaves no room for 100 workers (9 ports each)"},
	}
	for _, tt := range tests {
		_, err := ParseFleetConfig([]byte(tt.yaml))
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%q: error %v, want %q", tt.yaml, err, tt.err)
		}
	}
	empty, err := ParseFleetConfig(nil)
	if err != nil || empty.Workers != 1 || empty.Worker.Profile != "test" {
		t.Fatalf("empty config: %+v %v", empty, err)
	}
	if _, err := LoadFleetConfig(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("missing file accepted")
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	_ = os.WriteFile(bad, []byte("workers: -1"), 0o600)
	if _, err := LoadFleetConfig(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("error %v lacks the file name", err)
	}
}
