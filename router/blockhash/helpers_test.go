package blockhash

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvroute/kvroute/bench/sim"
	"github.com/kvroute/kvroute/proto"
)

// wordTok is a real tokenizer for tests: kvsim's built-in tokenizer and chat format, so
// that a tokServer, a kvsim worker and the local mode all produce the same ids.
type wordTok struct{}

// EncodeChat reads an OpenAI chat body the way kvsim does.
func (wordTok) EncodeChat(body []byte) ([]uint32, error) {
	msgs, addGen, err := decodeChat(body)
	if err != nil {
		return nil, err
	}
	var tk sim.WordTokenizer
	return tk.Encode(tk.RenderChat(msgs, addGen)), nil
}

func (wordTok) Encode(text string, _ bool) []uint32 { return sim.WordTokenizer{}.Encode(text) }

func decodeChat(body []byte) ([]sim.Message, bool, error) {
	var w struct {
		Messages []struct {
			Role    string `json:"role"`
			Content string `json:"content"`
		} `json:"messages"`
		AddGen *bool `json:"add_generation_prompt"`
	}
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, false, fmt.Errorf("decode chat: %w", err)
	}
	msgs := make([]sim.Message, len(w.Messages))
	for i, m := range w.Messages {
		msgs[i] = sim.Message{Role: m.Role, Content: m.Content}
	}
	return msgs, w.AddGen == nil || *w.AddGen, nil
}

// tokServer is a loopback vLLM-style POST /tokenize server that counts calls, records
// bodies, and can hold requests (gate) or answer with a fixed status.
type tokServer struct {
	*httptest.Server
	calls  atomic.Int64
	status atomic.Int32 // nonzero: answer every request with it

	mu     sync.Mutex
	gate   chan struct{} // non-nil: requests wait until it is closed
	bodies [][]byte
}

func newTokServer(t testing.TB) *tokServer {
	t.Helper()
	s := &tokServer{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /tokenize", s.serve)
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

func (s *tokServer) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.calls.Add(1)
	s.mu.Lock()
	s.bodies = append(s.bodies, body)
	gate := s.gate
	s.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}
	if st := s.status.Load(); st != 0 {
		w.WriteHeader(int(st))
		_, _ = w.Write([]byte(`{"error":{"message":"injected","type":"InternalServerError","code":500}}`))
		return
	}
	var req struct {
		Prompt   *string         `json:"prompt"`
		Messages json.RawMessage `json:"messages"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var ids []uint32
	if req.Prompt != nil {
		ids = wordTok{}.Encode(*req.Prompt, true)
	} else if ids, err = (wordTok{}).EncodeChat(body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"count": len(ids), "max_model_len": 32768, "tokens": ids, "token_strs": nil})
}

// hold makes requests wait until the returned function is called.
func (s *tokServer) hold() (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := make(chan struct{})
	s.gate = g
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.gate = nil
			s.mu.Unlock()
			close(g)
		})
	}
}

func (s *tokServer) lastBody(t *testing.T) map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.bodies) == 0 {
		t.Fatal("no request seen")
	}
	var m map[string]any
	if err := json.Unmarshal(s.bodies[len(s.bodies)-1], &m); err != nil {
		t.Fatalf("tokenize body is not JSON: %v\n%s", err, s.bodies[len(s.bodies)-1])
	}
	return m
}

// newEngine returns an Engine asking url (always picked).
func newEngine(t testing.TB, url string, mod func(*EngineOptions)) *Engine {
	t.Helper()
	opts := EngineOptions{Pick: func(string) (string, bool) { return url, true }, Timeout: 5 * time.Second}
	if mod != nil {
		mod(&opts)
	}
	e, err := NewEngine(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// msg is a chat message for building test conversations.
type msg struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func rawJSON(t testing.TB, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// words returns n distinct-ish words starting at word k, separated by spaces.
func words(k, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "w%d", k+i)
	}
	return b.String()
}

// conversation returns the message lists of turns 1..n of a conversation: turn i holds
// a system prompt, i user messages and i-1 assistant replies.
func conversation(n int, userWords int) [][]msg {
	var out [][]msg
	cur := []msg{{"system", "You are a helpful assistant. " + words(0, 40)}}
	for i := range n {
		cur = append(cur, msg{"user", fmt.Sprintf("question %d: %s", i, words(1000*(i+1), userWords))})
		out = append(out, slices.Clone(cur))
		cur = append(cur, msg{"assistant", fmt.Sprintf("answer %d: %s", i, words(50000+1000*i, userWords/2))})
	}
	return out
}

func isPrefix(a, b []proto.BlockHash) bool {
	return len(a) <= len(b) && slices.Equal(a, b[:len(a)])
}

// postJSON posts v to url and decodes the JSON answer into out.
func postJSON(t testing.TB, ctx context.Context, url string, v, out any) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(rawJSON(t, v)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %d %s", url, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		t.Fatalf("POST %s: %v: %s", url, err, body)
	}
}
