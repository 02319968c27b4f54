package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kvroute/kvroute/proto/prototest/poll"
	"github.com/kvroute/kvroute/router/tokenize/chat"
	"github.com/kvroute/kvroute/router/tokenize/tokenizetest"
)

func TestRunPrintsWorkersAndStops(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "kvsim.yaml")
	if err := os.WriteFile(cfgPath, []byte("workers: 5\nmodel: from-yaml\nstream_chunk_tokens: 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--config", cfgPath, "--workers", "2", "--base-port", "0"}, pw, io.Discard)
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	var infos []map[string]string
	for len(infos) < 2 && sc.Scan() {
		var m map[string]string
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		infos = append(infos, m)
	}
	if len(infos) != 2 {
		t.Fatalf("got %d worker lines", len(infos))
	}
	for i, m := range infos {
		if m["id"] == "" || !strings.HasPrefix(m["url"], "http://127.0.0.1:") ||
			!strings.HasPrefix(m["events"], "tcp://127.0.0.1:") || !strings.HasPrefix(m["replay"], "tcp://127.0.0.1:") {
			t.Fatalf("worker %d: %v", i, m)
		}
		resp, err := http.Get(m["url"] + "/v1/models")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), `"id":"from-yaml"`) {
			t.Fatalf("models: %s", b)
		}
	}
	// A request in flight when the signal arrives still completes (graceful stop).
	reply := make(chan string, 1)
	go func() {
		resp, err := http.Post(infos[0]["url"]+"/v1/completions", "application/json",
			strings.NewReader(`{"prompt":"hi","max_tokens":30,"ignore_eos":true}`))
		if err != nil {
			reply <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		reply <- string(b)
	}()
	poll.CheckFor(t, 5*time.Second, "the request to reach the engine", func() bool { return running(t, infos[0]["url"]) != 0 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not stop")
	}
	if r := <-reply; !strings.Contains(r, `"completion_tokens":30`) {
		t.Fatalf("in-flight request: %s", r)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	ctx := context.Background()
	for _, args := range [][]string{{"--workers", "0"}, {"--profile", "nope"}, {"--config", "/nonexistent.yaml"}, {"extra"}} {
		if err := run(ctx, args, io.Discard, io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

// running returns the worker's running request count from GET /sim/stats.
func running(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url + "/sim/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct{ Running int }
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st.Running
}

// TestRealTokenizer runs kvsim with a real Hugging Face tokenizer and chat template
// (DeepSeek-V3, installed by scripts/deps.d/30-tokenizers.sh) and checks that a worker
// tokenizes a chat exactly as kvroute's router/tokenize/chat does.
func TestRealTokenizer(t *testing.T) {
	dir := tokenizetest.ModelDir(t, "deepseek_v3")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--workers", "1", "--tokenizer", dir}, pw, io.Discard)
		pw.Close()
	}()
	var info map[string]string
	if err := json.NewDecoder(pr).Decode(&info); err != nil {
		t.Fatal(err)
	}
	body := `{"messages":[{"role":"system","content":"You are brief."},{"role":"user","content":"Name three primes."}]}`
	enc, err := chat.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	want, err := enc.EncodeChat([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(info["url"]+"/tokenize", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var got struct{ Tokens []uint32 }
	err = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if err != nil || len(got.Tokens) == 0 || !slices.Equal(got.Tokens, want) {
		t.Fatalf("kvsim tokens %v, router/tokenize/chat %v (%v)", got.Tokens, want, err)
	}
	resp, err = http.Post(info["url"]+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"messages":[{"role":"user","content":"Name three primes."}],"max_tokens":3}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"completion_tokens":3`) {
		t.Fatalf("chat: %d %s", resp.StatusCode, b)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
