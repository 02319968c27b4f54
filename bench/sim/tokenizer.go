package sim

import (
	"fmt"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// Tokenizer turns text into token ids. The simulator uses it for text prompts, for chat
// prompts after the chat template, and for POST /tokenize. Implementations must be
// deterministic and safe for concurrent use. kvroute's local tokenizer can be plugged in
// through [Config.Tokenizer] so that router and workers agree on tokens.
type Tokenizer interface {
	Encode(text string) []uint32
}

// ChatTemplate renders chat messages into the prompt text the model sees. A [Tokenizer]
// that also implements ChatTemplate renders its own chats; otherwise the built-in format
// of [WordTokenizer.RenderChat] is used.
type ChatTemplate interface {
	RenderChat(msgs []Message, addGenerationPrompt bool) string
}

// BodyTokenizer tokenizes requests as the engine does, from the request itself:
// EncodeChat renders a chat completion request body with the model's chat template and
// encodes the result; Encode encodes a completions prompt, addSpecial being the
// request's add_special_tokens (default true for completions). kvroute's router/tokenize/chat
// Encoder (a pure-Go Hugging Face tokenizer with the model's template) has this method
// set, so with it workers and router produce the same token ids. Implementations must
// be safe for concurrent use.
type BodyTokenizer interface {
	EncodeChat(body []byte) ([]uint32, error)
	Encode(text string, addSpecial bool) []uint32
}

// tokenizers is what a worker tokenizes with: a BodyTokenizer when configured, else a
// Tokenizer and a ChatTemplate.
type tokenizers struct {
	tk   Tokenizer
	tmpl ChatTemplate
	body BodyTokenizer
}

// text returns the ids of a completions prompt.
func (t tokenizers) text(s string, addSpecial bool) []uint32 {
	if t.body != nil {
		return t.body.Encode(s, addSpecial)
	}
	return t.tk.Encode(s)
}

// chat returns the ids of a chat request, from its raw body or its decoded messages.
func (t tokenizers) chat(body []byte, msgs []Message, addGenerationPrompt bool) ([]uint32, error) {
	if t.body != nil {
		ids, err := t.body.EncodeChat(body)
		if err != nil {
			return nil, fmt.Errorf("tokenize chat: %w", err)
		}
		return ids, nil
	}
	return t.tk.Encode(t.tmpl.RenderChat(msgs, addGenerationPrompt)), nil
}

// word returns the ids of one output word, without special tokens.
func (t tokenizers) word(w string) []uint32 {
	if t.body != nil {
		return t.body.Encode(w, false)
	}
	return t.tk.Encode(w)
}

// TokenizerFunc adapts a function to [Tokenizer], e.g. kvroute's local tokenizer:
//
//	sim.TokenizerFunc(func(s string) []uint32 { return tok.Encode(s, true) })
type TokenizerFunc func(text string) []uint32

// Encode calls f(text).
func (f TokenizerFunc) Encode(text string) []uint32 { return f(text) }

// Message is one chat message with its content flattened to text.
type Message struct {
	Role    string
	Content string
}

// WordTokenizer is the simulator's built-in tokenizer: deterministic, stateless, cheap,
// and roughly one token per word, so token counts look like a real model's.
//
// The text is cut into pieces: a word (a run of non-space bytes) together with one
// leading space if there is one, and every other run of whitespace on its own; a piece
// longer than 8 bytes is cut into 8-byte chunks. A piece's id is 256 + xxhash64(piece)
// mod (VocabSize - 256); ids below 256 are never produced. Equal texts give equal ids and
// a text's tokens are a prefix of the tokens of any text that extends it at a piece
// boundary (after whitespace), which is what prefix caching needs.
//
// The zero value is ready to use. It is safe for concurrent use.
type WordTokenizer struct{}

// VocabSize is the id range of [WordTokenizer], Llama-3's vocabulary size.
const VocabSize = 128256

const maxPiece = 8

// Encode returns the token ids of text.
func (WordTokenizer) Encode(text string) []uint32 {
	out := make([]uint32, 0, len(text)/5+1)
	i := 0
	for i < len(text) {
		start := i
		if isSpace(text[i]) {
			j := i
			for j < len(text) && isSpace(text[j]) {
				j++
			}
			// A single space before a word belongs to the word.
			if j-i == 1 && text[i] == ' ' && j < len(text) {
				i = j
			} else {
				if j < len(text) && text[j-1] == ' ' && j-i > 1 {
					j-- // leave the last space for the word that follows
				}
				out = appendChunks(out, text[start:j])
				i = j
				continue
			}
		}
		for i < len(text) && !isSpace(text[i]) {
			i++
		}
		out = appendChunks(out, text[start:i])
	}
	return out
}

func appendChunks(out []uint32, piece string) []uint32 {
	for len(piece) > maxPiece {
		out = append(out, pieceID(piece[:maxPiece]))
		piece = piece[maxPiece:]
	}
	if piece != "" {
		out = append(out, pieceID(piece))
	}
	return out
}

func pieceID(p string) uint32 {
	return 256 + uint32(xxhash.Sum64String(p)%(VocabSize-256))
}

func isSpace(c byte) bool { return c == ' ' || c == '\n' || c == '\t' || c == '\r' }

// RenderChat renders msgs in the simulator's chat format:
//
//	<|role|>\n{content}<|end|>\n     for every message, then
//	<|assistant|>\n                  when addGenerationPrompt is true.
//
// Rendering a conversation's first n messages gives a prefix of rendering all of them.
func (WordTokenizer) RenderChat(msgs []Message, addGenerationPrompt bool) string {
	var b strings.Builder
	for _, m := range msgs {
		b.WriteString("<|")
		b.WriteString(m.Role)
		b.WriteString("|>\n")
		b.WriteString(m.Content)
		b.WriteString("<|end|>\n")
	}
	if addGenerationPrompt {
		b.WriteString("<|assistant|>\n")
	}
	return b.String()
}

// outputWords is the table the simulated model samples its output from: 1024 short
// words, each one piece (a leading space and at most 5 letters), so that a reply fed
// back in a later chat turn tokenizes to the ids that were generated.
var outputWords = func() [1024]string {
	var w [1024]string
	const letters = "etaoinshrdlucmfwypvbgkjqxz"
	for i := range w {
		n := i
		b := []byte{' '}
		for {
			b = append(b, letters[n%26])
			n /= 26
			if n == 0 {
				break
			}
		}
		w[i] = string(b)
	}
	return w
}()

var _ Tokenizer = WordTokenizer{}
var _ Tokenizer = TokenizerFunc(nil)
var _ ChatTemplate = WordTokenizer{}
