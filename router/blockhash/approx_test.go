package blockhash

import (
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/kvroute/kvroute/proto"
)

// Each turn's approx hashes are a prefix of the next turn's, and grow with it.
func TestApproxPrefixStable(t *testing.T) {
	conv := conversation(6, 50)
	var prev Result
	for turn, msgs := range conv {
		r, err := Approx{}.Hash(t.Context(), chatReq(t, msgs), nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.Exact {
			t.Fatal("approx result marked exact")
		}
		if turn > 0 && (!isPrefix(prev.Hashes, r.Hashes) || len(r.Hashes) <= len(prev.Hashes)) {
			t.Fatalf("turn %d: %d hashes do not extend turn %d's %d", turn, len(r.Hashes), turn-1, len(prev.Hashes))
		}
		prev = r
	}
	// Conversations that differ in their first message share nothing.
	other := slices.Clone(conv[2])
	other[0].Content = "You are a terse assistant."
	r, err := Approx{}.Hash(t.Context(), chatReq(t, other), nil)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := Approx{}.Hash(t.Context(), chatReq(t, conv[2]), nil)
	if len(r.Hashes) == 0 || r.Hashes[0] == want.Hashes[0] {
		t.Fatal("different system prompts share the first block")
	}
}

// The canonical chat text, its chunking and the token estimate, by example.
func TestApproxChunks(t *testing.T) {
	req := &Request{Model: "m", BlockSize: 2, Messages: []byte(`[{"content":"h\u00e9llo","role":"user","x":1},
		{"role":"assistant","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"u"}},{"type":"text","text":"b"}],"name":"bot"},
		{"role":"tool","content":null,"tool_call_id":"c1"}]`),
		Options: Options{Tools: []byte(` [1] `)}}
	// The text stops at the image: nothing after it (text part, name, later messages).
	text := "\x1dtools\x1f[1]" +
		"\x1euser\x1fhéllo" +
		"\x1eassistant\x1fa"
	r, err := Approx{}.Hash(t.Context(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Truncated {
		t.Fatal("a chat with an image is not marked truncated")
	}
	if want := refChunks(approxSeed(req), []byte(text), 8); !slices.Equal(r.Hashes, want) {
		t.Fatalf("got %d hashes, want %d over %q", len(r.Hashes), len(want), text)
	}
	if r.Tokens != (len(text)+3)/4 {
		t.Fatalf("tokens %d, want %d", r.Tokens, (len(text)+3)/4)
	}

	// Chunks longer than the stack buffer stream through a digest, with equal results.
	long := &Request{Model: "m", BlockSize: 300, Prompt: rawJSON(t, words(0, 1000))}
	r, err = Approx{}.Hash(t.Context(), long, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := refChunks(approxSeed(long), []byte(words(0, 1000)), 1200); !slices.Equal(r.Hashes, want) || len(want) < 3 {
		t.Fatalf("1200-byte chunks: %d hashes, want %d", len(r.Hashes), len(want))
	}

	// A string prompt is its own canonical text, escapes decoded.
	p := &Request{Model: "m", BlockSize: 3, Prompt: []byte(`"line\none \"q\" \ud83d\ude00 and some more text"`)}
	r, err = Approx{}.Hash(t.Context(), p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := refChunks(approxSeed(p), []byte("line\none \"q\" 😀 and some more text"), 12); !slices.Equal(r.Hashes, want) || len(want) != 3 {
		t.Fatalf("string prompt: %d hashes, want %d", len(r.Hashes), len(want))
	}
}

// refChunks is the approx chain written out plainly.
func refChunks(seed proto.BlockHash, text []byte, size int) []proto.BlockHash {
	var out []proto.BlockHash
	parent := seed
	for i := 0; i+size <= len(text); i += size {
		in := binary.LittleEndian.AppendUint64(nil, uint64(parent))
		in = append(append(in, text[i:i+size]...), approxMarker[0])
		parent = proto.BlockHash(xxhash.Sum64(in))
		out = append(out, parent)
	}
	return out
}

// Approx hashes never equal token hashes, even for a text whose bytes are exactly the
// little-endian token ids of a block under the same model.
func TestApproxDisjointFromExact(t *testing.T) {
	ids := []uint32{0x64636261, 0x68676665, 0x6c6b6a69, 0x706f6e6d} // "abcdefghijklmnop"
	req := &Request{Model: "m", BlockSize: 4, Prompt: []byte(`"abcdefghijklmnop"`)}
	ar, err := Approx{}.Hash(t.Context(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	ex := proto.HashBlocks(nil, proto.Seed("m", "", ""), ids, 4)
	if len(ar.Hashes) != 1 || len(ex) != 1 || ar.Hashes[0] == ex[0] {
		t.Fatalf("approx %v vs exact %v", ar.Hashes, ex)
	}
	if approxSeed(req) == proto.Seed("m", "", "") {
		t.Fatal("approx seed equals the token seed")
	}
	// Even when the chain starts from the token seed, the marker keeps them apart.
	if refChunks(proto.Seed("m", "", ""), []byte("abcdefghijklmnop"), 16)[0] == ex[0] {
		t.Fatal("approx block input equals the token block input")
	}
}

// A token-id prompt is hashed exactly in every mode, without a call; bad ids are errors.
func TestTokenIDPrompt(t *testing.T) {
	srv := newTokServer(t)
	ids := make([]uint32, 50)
	for i := range ids {
		ids[i] = uint32(i * 7919)
	}
	want := proto.HashBlocks(nil, proto.Seed("m", "lora", "salt"), ids, 16)
	hashers := map[string]Hasher{"approx": Approx{}, "engine": newEngine(t, srv.URL, nil), "local": NewLocal(wordTok{})}
	for name, h := range hashers {
		for _, prompt := range []any{ids, [][]uint32{ids, {1, 2}}} {
			req := &Request{Model: "m", LoRA: "lora", CacheSalt: "salt", BlockSize: 16, Prompt: rawJSON(t, prompt)}
			r, err := h.Hash(t.Context(), req, nil)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if !r.Exact || r.Tokens != 50 || !slices.Equal(r.Hashes, want) {
				t.Fatalf("%s: %+v", name, r)
			}
		}
		for _, bad := range []string{`[1,-1]`, `[1.5]`, `[4294967296]`, `[1e3]`, `[01]`, `[1,`, `[1,"a"]`, `{}`, `7`, `null`, ``} {
			req := &Request{Model: "m", BlockSize: 16, Prompt: []byte(bad)}
			if _, err := h.Hash(t.Context(), req, nil); !errors.Is(err, ErrBadInput) {
				t.Errorf("%s: prompt %q: %v, want ErrBadInput", name, bad, err)
			}
		}
		r, err := h.Hash(t.Context(), &Request{Model: "m", BlockSize: 16, Prompt: []byte(`[]`)}, nil)
		if err != nil || len(r.Hashes) != 0 || r.Tokens != 0 || !r.Exact {
			t.Errorf("%s: empty token prompt: %+v %v", name, r, err)
		}
	}
	if srv.calls.Load() != 0 {
		t.Fatalf("token-id prompts made %d calls", srv.calls.Load())
	}
}

// Requests every mode rejects.
func TestBadInput(t *testing.T) {
	for _, req := range []*Request{
		{Model: "m", BlockSize: 0, Prompt: []byte(`"x"`)},
		{Model: "m", BlockSize: 16},
		{Model: "m", BlockSize: 16, Messages: []byte(`{"role":"user"}`)},
		{Model: "m", BlockSize: 16, Messages: []byte(`[{"role":"user","content":"x"`)},
		{Model: "m", BlockSize: 16, Messages: []byte(`["x"]`)},
		{Model: "m", BlockSize: 16, Messages: []byte(`[{"role":"user","content":"\x"}]`)},
		{Model: "m", BlockSize: 16, Prompt: []byte(`"unterminated`)},
		{Model: "m", BlockSize: 16, Prompt: []byte(`true`)},
	} {
		if _, err := (Approx{}).Hash(t.Context(), req, nil); !errors.Is(err, ErrBadInput) {
			t.Errorf("%+v: %v, want ErrBadInput", req, err)
		}
	}
	// Deep nesting is an error, not a stack overflow.
	deep := `[{"role":"user","content":"x","tool_calls":` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `}]`
	if _, err := (Approx{}).Hash(t.Context(), &Request{Model: "m", BlockSize: 16, Messages: []byte(deep)}, nil); !errors.Is(err, ErrBadInput) {
		t.Errorf("deep nesting: %v", err)
	}
}

func TestParseMode(t *testing.T) {
	for _, tc := range []struct {
		in, mode, path, err string
	}{
		{in: "engine", mode: "engine"},
		{in: "approx", mode: "approx"},
		{in: "local:/models/llama", mode: "local", path: "/models/llama"},
		{in: "local:tok.json", mode: "local", path: "tok.json"},
		{in: "auto", mode: "auto"},
		{in: "local", err: `tokenize mode "local": local needs a tokenizer path, as local:PATH`},
		{in: "local: ", err: `tokenize mode "local: ": empty tokenizer path`},
		{in: "Engine", err: `tokenize mode "Engine": want auto, engine, approx or local:PATH`},
		{in: "", err: `tokenize mode "": want auto, engine, approx or local:PATH`},
	} {
		mode, path, err := ParseMode(tc.in)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("ParseMode(%q) error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || string(mode) != tc.mode || path != tc.path {
			t.Errorf("ParseMode(%q) = %q, %q, %v", tc.in, mode, path, err)
		}
	}
}
