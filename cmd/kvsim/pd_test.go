package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"testing"
)

// TestRunPDFlags starts a prefill fleet from flags and checks the worker lines name the
// role, the id prefix and the side-channel port.
func TestRunPDFlags(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--workers", "2", "--role", "prefill", "--id-prefix", "p",
			"--pd-link-gbps", "400", "--pd-transfer-timeout-ms", "5000", "--pd-kv-hold-ms", "60000",
			"--kv-bytes-per-token", "65536"}, pw, io.Discard)
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	for i := range 2 {
		if !sc.Scan() {
			t.Fatalf("no line for worker %d", i)
		}
		var info struct {
			ID            string `json:"id"`
			Role          string `json:"role"`
			BootstrapPort int    `json:"bootstrap_port"`
		}
		if err := json.Unmarshal(sc.Bytes(), &info); err != nil {
			t.Fatal(err)
		}
		if info.ID != []string{"p0", "p1"}[i] || info.Role != "prefill" || info.BootstrapPort == 0 {
			t.Fatalf("line %s", sc.Bytes())
		}
	}
	cancel()
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"--role", "router"}, io.Discard, io.Discard); err == nil {
		t.Fatal("--role router accepted")
	}
}
