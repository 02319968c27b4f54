package configs

import (
	"strings"
	"testing"
)

func TestPDConfig(t *testing.T) {
	cfg, err := Load([]byte(`
pd:
  protocol: sglang
workers:
  - url: http://p:8000
    role: prefill
    bootstrap_port: 8998
  - url: http://d:8000
    role: decode
  - url: http://b:8000
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PD.Protocol != PDSGLang || cfg.Workers[0].Role != RolePrefill || cfg.Workers[0].BootstrapPort != 8998 ||
		cfg.Workers[1].Role != RoleDecode || cfg.Workers[2].Role != RoleBoth {
		t.Errorf("got %+v %+v", cfg.PD, cfg.Workers)
	}
	if d := Default(); d.PD.Protocol != PDVLLM {
		t.Errorf("default protocol %q", d.PD.Protocol)
	}
	for _, c := range []struct{ yaml, want string }{
		{"pd: {protocol: mooncake}\nworkers: [{url: 'http://a:1'}]", `pd.protocol: "mooncake" is not vllm or sglang`},
		{"workers: [{url: 'http://a:1', role: prefil}]", `workers[0]: role: "prefil" is not prefill, decode or both`},
		{"workers: [{url: 'http://a:1', bootstrap_port: 70000}]", "workers[0]: bootstrap_port: 70000 must be between 0 and 65535"},
		{"discovery: {dns: {name: x, port: 80, role: gpu}}", `discovery.dns.role: "gpu" is not prefill, decode or both`},
	} {
		if _, err := Load([]byte(c.yaml)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Load(%q) = %v, want %q", c.yaml, err, c.want)
		}
	}
}

func TestParseWorkerFlagRole(t *testing.T) {
	w, err := ParseWorkerFlag("http://h:8000,role=prefill,bootstrap_port=8998")
	if err != nil || w.Role != RolePrefill || w.BootstrapPort != 8998 {
		t.Errorf("got %+v, %v", w, err)
	}
	if w, _ := ParseWorkerFlag("http://h:8000"); w.Role != RoleBoth {
		t.Errorf("default role %q", w.Role)
	}
	if _, err := ParseWorkerFlag("http://h:8000,bootstrap_port=x"); err == nil || !strings.Contains(err.Error(), `bootstrap_port "x"`) {
		t.Errorf("err %v", err)
	}
	w, _ = ParseWorkerFlag("http://h:8000,role=decoder")
	if err := ValidateWorker(&w); err == nil || !strings.Contains(err.Error(), `role: "decoder"`) {
		t.Errorf("ValidateWorker = %v", err)
	}
	tm := WorkerTemplate{Scheme: "http", Role: RoleDecode, BootstrapPort: 1}
	if w := tm.Worker("x", "10.0.0.1", 80); w.Role != RoleDecode || w.BootstrapPort != 1 {
		t.Errorf("template worker %+v", w)
	}
}
