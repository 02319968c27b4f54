package configs

import (
	"testing"
	"time"
)

func TestValkeyIndexValues(t *testing.T) {
	cfg, err := LoadFile("testdata/valkey.good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if ix := cfg.Index; ix.Backend != "valkey" || ix.Valkey.URL != "redis://127.0.0.1:6379" || ix.Valkey.Prefix != "fleet1:" || ix.Valkey.Timeout != 20*time.Millisecond {
		t.Errorf("index %+v", ix)
	}
	if d := Default().Index; d.Backend != "memory" || d.Valkey.Prefix != "kvroute:" || d.Valkey.Timeout != 50*time.Millisecond {
		t.Errorf("index defaults %+v", d)
	}
}
