package sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// BenchmarkPDRoundTrip measures kvsim's own cost per request (HTTP, engine, side
// channel) with modelled time scaled to nearly nothing: an aggregated request, a vLLM
// P/D pair (prefill answer, then decode with its kv_transfer_params) and an SGLang pair
// (both at once), side by side in one run. The ratio is what P/D costs the simulator.
// cpu-us/op is the process's CPU time (user+sys, every worker is in it) per request,
// which a loaded host inflates far less than wall time.
func BenchmarkPDRoundTrip(b *testing.B) {
	mod := func(c *Config) {
		c.TimeScale = 1e-6
		c.KVBlocks = 1 << 14
	}
	start := func(id, role string) *Worker {
		c := DefaultConfig()
		c.Role = role
		mod(&c)
		w, err := StartWorker(b.Context(), id, c, "127.0.0.1", 0, 0, 0)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = w.Close() })
		return w
	}
	p, d, a := start("p0", RolePrefill), start("d0", RoleDecode), start("a0", RoleBoth)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	send := func(url string, body any) ([]byte, error) {
		js, _ := json.Marshal(body)
		resp, err := client.Post(url, "application/json", bytes.NewReader(js))
		if err != nil {
			return nil, err
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("%s: %d %s", url, resp.StatusCode, out)
		}
		return out, nil
	}
	do := func(url string, body any) []byte {
		out, err := send(url, body)
		if err != nil {
			b.Fatal(err)
		}
		return out
	}
	orig := map[string]any{"prompt": words(0, 512), "max_tokens": 16, "ignore_eos": true}
	b.Run("aggregated", func(b *testing.B) {
		defer cpuPerOp(b)()
		for b.Loop() {
			do(a.URL()+"/v1/completions", orig)
		}
	})
	b.Run("vllm-pd", func(b *testing.B) {
		defer cpuPerOp(b)()
		for b.Loop() {
			var pa prefillAnswer
			if err := json.Unmarshal(do(p.URL()+"/v1/completions", prefillBody(orig)), &pa); err != nil || pa.KV == nil {
				b.Fatalf("prefill answer: %v", err)
			}
			dec := maps.Clone(orig)
			dec["kv_transfer_params"] = pa.KV
			do(d.URL()+"/v1/completions", dec)
		}
	})
	b.Run("sglang-pd", func(b *testing.B) {
		defer cpuPerOp(b)()
		room := uint64(0)
		for b.Loop() {
			room++
			body := maps.Clone(orig)
			body["bootstrap_host"], body["bootstrap_port"], body["bootstrap_room"] = "127.0.0.1", p.BootstrapPort(), room
			done := make(chan error, 1)
			go func() { _, err := send(p.URL()+"/v1/completions", body); done <- err }()
			do(d.URL()+"/v1/completions", body)
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		}
	})
}

// cpuPerOp reports the process CPU time per iteration when the returned func runs.
func cpuPerOp(b *testing.B) func() {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	return func() {
		b.ReportMetric(float64((cpu()-start).Microseconds())/float64(b.N), "cpu-us/op")
	}
}
