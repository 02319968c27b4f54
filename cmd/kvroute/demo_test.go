package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The demo runs end to end: a simulated fleet, the router and traffic, with every
// request answered and every worker used.
func TestDemoServesTrafficThroughEveryWorker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := demo(ctx, demoOptions{listen: "127.0.0.1:0", workers: 3, profile: "test", policy: "round_robin", users: 4,
		every: 200 * time.Millisecond, untilRequests: 30},
		&out, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	final := regexp.MustCompile(`final: requests (\d+)  errors (\d+)  cache hit ([\d.]+)%.*by worker(.*)`).FindStringSubmatch(out.String())
	if final == nil {
		t.Fatalf("no final line in:\n%s", out.String())
	}
	reqs, _ := strconv.Atoi(final[1])
	if reqs < 30 || final[2] != "0" {
		t.Errorf("requests %s errors %s, want >= 30 and 0\n%s", final[1], final[2], out.String())
	}
	for _, w := range []string{"w0:", "w1:", "w2:"} {
		if !strings.Contains(final[4], w) {
			t.Errorf("worker %s served nothing: %s", w, final[4])
		}
	}
	if hit, _ := strconv.ParseFloat(final[3], 64); hit <= 0 {
		t.Errorf("cache hit %s%%: the shared system prompts should hit", final[3])
	}
}
