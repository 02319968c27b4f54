package main

import (
	"strings"
	"testing"

	"github.com/kvroute/kvroute/configs"
)

// --pd sets pd.protocol; --worker takes role and bootstrap_port; a bad value is the
// config's clear error.
func TestServePDFlags(t *testing.T) {
	cfg, err := serveConfig("", "", "", "", []string{"http://127.0.0.1:8001,role=prefill,bootstrap_port=8998", "http://127.0.0.1:8002,role=decode"}, overrides{pd: "sglang"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PD.Protocol != configs.PDSGLang || cfg.Workers[0].Role != configs.RolePrefill || cfg.Workers[0].BootstrapPort != 8998 || cfg.Workers[1].Role != configs.RoleDecode {
		t.Errorf("pd %+v workers %+v", cfg.PD, cfg.Workers)
	}
	if _, err := serveConfig("", "", "", "", []string{"http://127.0.0.1:8001"}, overrides{pd: "nixl"}); err == nil || !strings.Contains(err.Error(), `pd.protocol: "nixl" is not vllm or sglang`) {
		t.Errorf("--pd nixl: %v", err)
	}
}
