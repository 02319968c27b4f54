package sim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// startFleet starts a fleet with cfg adjusted by mod and closes it at the end of the test.
func startFleet(t *testing.T, workers int, mod func(*Config)) *Fleet {
	t.Helper()
	fc := DefaultFleetConfig()
	fc.Workers = workers
	if mod != nil {
		mod(&fc.Worker)
	}
	f, err := StartFleet(context.Background(), fc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

type completion struct {
	Choices []struct {
		Text         string `json:"text"`
		FinishReason string `json:"finish_reason"`
		Message      struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"message"`
	} `json:"choices"`
	Usage Usage `json:"usage"`
}

func post(t *testing.T, url string, body any) (*http.Response, []byte) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp, out
}

func complete(t *testing.T, w *Worker, body map[string]any) completion {
	t.Helper()
	resp, out := post(t, w.URL()+"/v1/completions", body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, out)
	}
	var c completion
	if err := json.Unmarshal(out, &c); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	return c
}

// words returns a text of n distinct words starting at word number from.
func words(from, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "w%d", from+i)
	}
	return b.String()
}

// sseEvents reads a whole SSE body and returns the data payloads.
func sseEvents(t *testing.T, r io.Reader) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("unexpected SSE line %q", line)
		}
		out = append(out, data)
	}
	return out
}

func TestSmoke(t *testing.T) {
	f := startFleet(t, 2, nil)
	w := f.Workers()[0]
	c := complete(t, w, map[string]any{"prompt": words(0, 100), "max_tokens": 5, "ignore_eos": true})
	if c.Usage.PromptTokens != 100 || c.Usage.CompletionTokens != 5 || c.Choices[0].FinishReason != "length" {
		t.Fatalf("%+v", c)
	}
}
