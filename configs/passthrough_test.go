package configs

import (
	"slices"
	"testing"
	"time"
)

func TestPassthroughValues(t *testing.T) {
	cfg, err := LoadFile("testdata/passthrough.good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Passthrough, []string{"/v1/load_lora_adapter", "/invocations"}) {
		t.Errorf("passthrough %v", cfg.Passthrough)
	}
	if r := cfg.Responses; r.MaxEntries != 500 || r.TTL != 10*time.Minute {
		t.Errorf("responses %+v", r)
	}
	if d := Default(); len(d.Passthrough) != 0 || d.Responses.MaxEntries != 100000 || d.Responses.TTL != time.Hour {
		t.Errorf("defaults: passthrough %v, responses %+v", d.Passthrough, d.Responses)
	}
}
