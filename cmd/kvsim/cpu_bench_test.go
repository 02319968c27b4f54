package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkFleetCPU measures the CPU the simulator itself uses: it builds kvsim, runs
// it as a separate process with 16 workers (llama-3.1-8b-h100 profile, real time), keeps
// 64 streaming requests open per worker for KVSIM_BENCH_SECONDS (default 10) seconds
// from this process, and reports kvsim's CPU time per wall second (sim-cores) read from
// /proc. Each request sends 1000 token ids (800 shared per worker, so prefix hits occur)
// and streams 256 tokens with --stream-chunk-tokens KVSIM_BENCH_CHUNK (default 8).
//
//	go test -run '^$' -bench FleetCPU -benchtime 1x -count 5 ./cmd/kvsim | tee new.txt
//	benchstat old.txt new.txt
func BenchmarkFleetCPU(b *testing.B) {
	b.ReportAllocs()
	secs := 10.0
	if s := os.Getenv("KVSIM_BENCH_SECONDS"); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			b.Fatal(err)
		}
		secs = v
	}
	chunk := "8"
	if s := os.Getenv("KVSIM_BENCH_CHUNK"); s != "" {
		chunk = s
	}
	bin := filepath.Join(b.TempDir(), "kvsim")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	const workers, streams = 16, 64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--workers", strconv.Itoa(workers), "--profile", "llama-3.1-8b-h100",
		"--stream-chunk-tokens", chunk)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() }()
	sc := bufio.NewScanner(stdout)
	var urls []string
	for len(urls) < workers && sc.Scan() {
		var m map[string]string
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			b.Fatal(err)
		}
		urls = append(urls, m["url"])
	}
	if len(urls) != workers {
		b.Fatalf("kvsim printed %d workers", len(urls))
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: streams, MaxConnsPerHost: streams}}

	for range b.N {
		var requests, chunks atomic.Int64
		var wg sync.WaitGroup
		lctx, lcancel := context.WithTimeout(ctx, time.Duration(secs*float64(time.Second)))
		cpu0 := procCPU(b, cmd.Process.Pid)
		start := time.Now()
		for wi, u := range urls {
			for s := range streams {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for n := 0; lctx.Err() == nil; n++ {
						c, err := streamOnce(lctx, client, u, wi, s*100000+n)
						if err != nil {
							if lctx.Err() == nil {
								b.Errorf("request: %v", err)
							}
							return
						}
						requests.Add(1)
						chunks.Add(int64(c))
					}
				}()
			}
		}
		wg.Wait()
		wall := time.Since(start).Seconds()
		cpu := procCPU(b, cmd.Process.Pid) - cpu0
		lcancel()
		b.ReportMetric(cpu/wall, "sim-cores")
		b.ReportMetric(float64(requests.Load())/wall, "req/s")
		b.ReportMetric(float64(chunks.Load())/wall, "chunks/s")
	}
}

// streamOnce sends one streamed completion and returns the number of SSE events read.
func streamOnce(ctx context.Context, c *http.Client, url string, worker, n int) (int, error) {
	var body bytes.Buffer
	body.WriteString(`{"prompt":[`)
	for i := range 1000 {
		if i > 0 {
			body.WriteByte(',')
		}
		id := 1000 + worker*7919 + i // 800 shared tokens per worker...
		if i >= 800 {
			id = 50000 + (n*211+i)%70000 // ...then 200 tokens of this request
		}
		body.WriteString(strconv.Itoa(id))
	}
	body.WriteString(`],"max_tokens":256,"ignore_eos":true,"stream":true}`)
	req, err := http.NewRequestWithContext(ctx, "POST", url+"/v1/completions", &body)
	if err != nil {
		return 0, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return 0, fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	events := 0
	r := bufio.NewReader(resp.Body)
	for {
		line, err := r.ReadSlice('\n')
		if bytes.HasPrefix(line, []byte("data: ")) {
			events++
		}
		if err != nil {
			if err == io.EOF {
				return events, nil
			}
			return events, err
		}
	}
}

// procCPU returns the user+system CPU seconds of process pid (Linux /proc, 100 Hz ticks).
func procCPU(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100
}
