package scrape

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// python is Debian's interpreter, where scripts/deps.d/40-scrape.sh installs
// python3-prometheus-client.
const python = "/usr/bin/python3"

// startEngineMetrics serves the metrics of spec (see testdata/engine_metrics.py) from a
// real prometheus_client WSGI app on a loopback port and returns its base URL.
func startEngineMetrics(t *testing.T, spec string) string {
	t.Helper()
	cmd := exec.Command(python, "testdata/engine_metrics.py", spec, "--serve")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s (scripts/deps.sh installs it): %v", python, err)
	}
	t.Cleanup(func() {
		stdin.Close() // the server exits when its stdin closes
		done := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	port := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		port <- strings.TrimSpace(line)
	}()
	select {
	case p := <-port:
		if _, err := strconv.Atoi(p); err != nil {
			t.Fatalf("engine_metrics.py printed %q, not a port; stderr (is python3-prometheus-client installed? scripts/deps.sh): %s", p, stderr.String())
		}
		return "http://127.0.0.1:" + p
	case <-time.After(20 * time.Second):
		t.Fatalf("engine_metrics.py did not start; stderr: %s", stderr.String())
	}
	return ""
}

// TestScrapePrometheusClient scrapes servers run by prometheus_client, the library the
// engines expose their metrics with, in both formats it negotiates (gzip included:
// net/http asks for it and the WSGI app compresses).
func TestScrapePrometheusClient(t *testing.T) {
	tests := []struct {
		name, spec string
		want       Sample
	}{
		{"vllm dp2", `{"engine":"vllm","model":"m","block_size":16,"ranks":[` +
			`{"running":3,"waiting":1,"usage":0.25,"queries":123456,"hits":45678,"blocks":27000},` +
			`{"running":5,"waiting":2,"usage":0.75,"queries":1000,"hits":10,"blocks":26999}]}`,
			Sample{Engine: "vllm", BlockSize: 16, NumBlocks: 53999, Running: 8, Waiting: 3,
				KVUsage: 0.5, PrefixQueries: 124456, PrefixHits: 45688}},
		{"vllm unprofiled", `{"engine":"vllm","model":"m","block_size":32,"ranks":[` +
			`{"running":0,"waiting":0,"usage":0,"queries":0,"hits":0,"blocks":null}]}`,
			Sample{Engine: "vllm", BlockSize: 32}},
		{"vllm v0", `{"engine":"vllm-old","model":"m","block_size":32,"ranks":[` +
			`{"running":2,"waiting":4,"usage":0.9,"queries":5000,"hits":1000,"blocks":2048}]}`,
			Sample{Engine: "vllm", BlockSize: 32, NumBlocks: 2048, Running: 2, Waiting: 4, KVUsage: 0.9}},
		{"sglang", `{"engine":"sglang","model":"m","block_size":1,"ranks":[` +
			`{"running":12,"waiting":3,"usage":0.28,"queries":8128902,"hits":61234,"blocks":450000}]}`,
			Sample{Engine: "sglang", BlockSize: 1, NumBlocks: 450000, Running: 12, Waiting: 3,
				KVUsage: 0.28, PrefixQueries: 8128902, PrefixHits: 61234}},
		{"sglang gauges dp2", `{"engine":"sglang-gauges","model":"m","block_size":64,"ranks":[` +
			`{"running":4,"waiting":0,"usage":0.1,"queries":100,"hits":50,"blocks":7000},` +
			`{"running":6,"waiting":1,"usage":0.3,"queries":200,"hits":70,"blocks":7001}]}`,
			Sample{Engine: "sglang", BlockSize: 64, NumBlocks: 14001, Running: 10, Waiting: 1,
				KVUsage: 0.2, PrefixQueries: 300, PrefixHits: 120}},
	}
	s, err := New(Config{Timeout: 10 * time.Second}, func() []Target { return nil },
		func(string, Sample, time.Time, error) {}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := startEngineMetrics(t, tt.spec)
			got, err := s.Scrape(context.Background(), Target{"w0", url})
			if err != nil {
				t.Fatal(err)
			}
			if !sampleEqual(got, tt.want) {
				t.Errorf("text format:\n got %+v\nwant %+v", got, tt.want)
			}

			req, err := http.NewRequest(http.MethodGet, url+"/metrics", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0; charset=utf-8")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") {
				t.Fatalf("content type %q, want OpenMetrics", ct)
			}
			got, err = Parse(body)
			if err != nil {
				t.Fatal(err)
			}
			if !sampleEqual(got, tt.want) {
				t.Errorf("OpenMetrics:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}
