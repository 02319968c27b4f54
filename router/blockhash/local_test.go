package blockhash

import (
	"errors"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvroute/kvroute/proto"
)

// failingTok is a Tokenizer that cannot render chats, as router/tokenize/chat's Encoder fails on
// content it does not support.
type failingTok struct{ wordTok }

var errUnsupported = errors.New("unsupported chat content")

func (failingTok) EncodeChat([]byte) ([]uint32, error) { return nil, errUnsupported }

// The local mode hands the tokenizer an OpenAI body with the rendering options, decodes
// string prompts, and its errors make Fallback use approx mode.
func TestLocal(t *testing.T) {
	msgs := conversation(2, 30)[1]
	req := chatReq(t, msgs)
	req.Options.AddGenerationPrompt = []byte("false")
	r, err := NewLocal(wordTok{}).Hash(t.Context(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := wordTok{}.EncodeChat(rawJSON(t, map[string]any{"messages": msgs, "add_generation_prompt": false}))
	if !r.Exact || r.Tokens != len(want) || !slices.Equal(r.Hashes, proto.HashBlocks(nil, proto.Seed("m", "", ""), want, 16)) {
		t.Fatalf("local chat: %+v", r)
	}

	p := &Request{Model: "m", BlockSize: 4, Prompt: []byte(`"tab\there \u00e9 ` + words(0, 30) + `"`)}
	r, err = NewLocal(wordTok{}).Hash(t.Context(), p, nil)
	if err != nil {
		t.Fatal(err)
	}
	ids := wordTok{}.Encode("tab\there é "+words(0, 30), true)
	if !slices.Equal(r.Hashes, proto.HashBlocks(nil, proto.Seed("m", "", ""), ids, 4)) || r.Tokens != len(ids) {
		t.Fatalf("local prompt: %+v", r)
	}
	p.Options.AddSpecialTokens = []byte(`"yes"`)
	if _, err := NewLocal(wordTok{}).Hash(t.Context(), p, nil); !errors.Is(err, ErrBadInput) {
		t.Fatalf("non-boolean add_special_tokens: %v", err)
	}

	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	if m2, err := NewMetrics(reg); err != nil || m2.fallbacks != m.fallbacks {
		t.Fatalf("second registration: %v", err)
	}
	if _, err := NewLocal(failingTok{}).Hash(t.Context(), req, nil); !errors.Is(err, errUnsupported) {
		t.Fatalf("tokenizer error not wrapped: %v", err)
	}
	r, err = NewFallback(NewLocal(failingTok{}), m).Hash(t.Context(), req, nil)
	if err != nil || r.Exact || len(r.Hashes) == 0 {
		t.Fatalf("fallback over local: %+v %v", r, err)
	}
	if got := testutil.ToFloat64(m.fallbacks.WithLabelValues(reasonOther)); got != 1 {
		t.Fatalf("fallbacks{other} = %v", got)
	}
}

// bodyTok records the body EncodeChat was handed.
type bodyTok struct {
	wordTok
	got []byte
}

func (b *bodyTok) EncodeChat(body []byte) ([]uint32, error) {
	b.got = append(b.got[:0], body...)
	return b.wordTok.EncodeChat(body)
}

// With the client's body (Request.Body) the local mode hands it to the tokenizer as it
// is, with the same result as the body it composes without it.
func TestLocalUsesTheClientBody(t *testing.T) {
	msgs := conversation(2, 30)[1]
	body := rawJSON(t, map[string]any{"model": "m", "stream": true, "max_tokens": 7, "messages": msgs, "add_generation_prompt": false})
	composed := chatReq(t, msgs)
	composed.Options.AddGenerationPrompt = []byte("false")
	own := *composed
	own.Body = body
	var a, b bodyTok
	ra, err := NewLocal(&a).Hash(t.Context(), composed, nil)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := NewLocal(&b).Hash(t.Context(), &own, nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(b.got) != string(body) {
		t.Errorf("tokenizer got %s, want the client's body %s", b.got, body)
	}
	if string(a.got) == string(body) {
		t.Errorf("without Body the tokenizer got the client's body: the test does not tell the paths apart")
	}
	if !slices.Equal(ra.Hashes, rb.Hashes) || ra.Tokens != rb.Tokens || !rb.Exact {
		t.Errorf("hashes differ: composed %+v, client body %+v", ra, rb)
	}
}
