package tokenize

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// Tokenizer encodes text to token ids exactly as the HuggingFace tokenizers library
// does for the same tokenizer.json. It is safe for concurrent use.
type Tokenizer struct {
	added     *addedMatcher // normalized == false tokens, matched on raw text
	addedNorm *addedMatcher // normalized == true tokens, matched after normalizing
	norm      normalizer    // nil: none
	pre       preTokenizer  // nil: the whole segment is one pre-token
	model     *bpe

	// prefix and suffix are the ids the post-processor puts around the sequence
	// when special tokens are added.
	prefix, suffix []uint32

	// prefixSafe is false when PrefixCache must not split at added tokens.
	prefixSafe bool

	tokenIDs map[string]uint32 // vocabulary and added tokens, file form
	idTokens []string          // by id; "" for unused ids
}

// ErrUnsupported is wrapped by Load and Parse errors for tokenizer.json components
// this package does not implement; callers fall back to asking the engine.
var ErrUnsupported = errors.New("unsupported tokenizer")

// Load reads a tokenizer.json file, or the tokenizer.json inside a directory.
func Load(path string) (*Tokenizer, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, "tokenizer.json")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load tokenizer: %w", err)
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("load tokenizer %s: %w", path, err)
	}
	return t, nil
}

// Parse builds a Tokenizer from the contents of a tokenizer.json file. It does no I/O.
func Parse(data []byte) (*Tokenizer, error) {
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("decode tokenizer.json: %w", err)
	}
	var err error
	if f.Model.Vocab, err = parseVocab(f.Model.RawVocab); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	if f.Model.Merges, err = parseMerges(f.Model.RawMerges); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	f.Model.RawVocab, f.Model.RawMerges = nil, nil
	t := &Tokenizer{}
	if !isNull(f.Normalizer) {
		c, err := decodeComponent(f.Normalizer)
		if err != nil {
			return nil, fmt.Errorf("normalizer: %w", err)
		}
		if t.norm, err = buildNormalizer(c); err != nil {
			return nil, fmt.Errorf("normalizer: %w: %w", ErrUnsupported, err)
		}
	}
	byteLevel := false
	if !isNull(f.PreTokenizer) {
		c, err := decodeComponent(f.PreTokenizer)
		if err != nil {
			return nil, fmt.Errorf("pre_tokenizer: %w", err)
		}
		if t.pre, err = buildPreTokenizer(c, &byteLevel); err != nil {
			return nil, fmt.Errorf("pre_tokenizer: %w: %w", ErrUnsupported, err)
		}
	}
	if !byteLevel && !isNull(f.Decoder) {
		// Some files byte-map the vocabulary but declare it only in the decoder.
		var d component
		if json.Unmarshal(f.Decoder, &d) == nil && d.Type == "ByteLevel" {
			byteLevel = true
		}
	}
	if t.model, err = newBPE(f.Model, byteLevel); err != nil {
		return nil, fmt.Errorf("model: %w: %w", ErrUnsupported, err)
	}
	// The decoded vocabulary map becomes tokenIDs (and, for non-byte-level
	// models, the model's own map): copying maps of 262k entries dominates Parse.
	t.tokenIDs = f.Model.Vocab
	if t.tokenIDs == nil {
		t.tokenIDs = map[string]uint32{}
	}
	maxID := uint32(0)
	for _, id := range t.tokenIDs {
		maxID = max(maxID, id)
	}
	for _, a := range f.AddedTokens {
		maxID = max(maxID, a.ID)
	}
	// Real vocabularies number their tokens densely; a sparse id far beyond the
	// token count would only make idTokens huge.
	if maxID >= 1<<24 || int(maxID) > 4*(len(t.tokenIDs)+len(f.AddedTokens))+1024 {
		return nil, fmt.Errorf("token id %d too large for %d tokens", maxID, len(t.tokenIDs)+len(f.AddedTokens))
	}
	t.idTokens = make([]string, maxID+1)
	for s, id := range t.tokenIDs {
		t.idTokens[id] = s
	}
	var raw, normd []addedToken
	for _, a := range f.AddedTokens {
		at := addedToken{id: a.ID, content: a.Content, special: a.Special, singleWord: a.SingleWord, lstrip: a.LStrip, rstrip: a.RStrip}
		if a.Normalized {
			normd = append(normd, at)
		} else {
			raw = append(raw, at)
		}
		if _, ok := t.tokenIDs[a.Content]; !ok {
			t.tokenIDs[a.Content] = a.ID
		}
		t.idTokens[a.ID] = a.Content
	}
	t.added = newAddedMatcher(raw)
	t.prefixSafe = true
	for _, a := range raw {
		// single_word looks at the character before a token, which PrefixCache's
		// suffix encoding cannot see.
		t.prefixSafe = t.prefixSafe && !a.singleWord
	}
	t.addedNorm = newAddedMatcher(normd)
	if !isNull(f.PostProcessor) {
		c, err := decodeComponent(f.PostProcessor)
		if err != nil {
			return nil, fmt.Errorf("post_processor: %w", err)
		}
		if err := t.buildPost(c); err != nil {
			return nil, fmt.Errorf("post_processor: %w: %w", ErrUnsupported, err)
		}
	}
	return t, nil
}

// buildPost folds a post-processor into t.prefix and t.suffix.
func (t *Tokenizer) buildPost(c component) error {
	switch c.Type {
	case "ByteLevel":
		return nil // only adjusts offsets
	case "Sequence":
		for _, raw := range c.Processors {
			sub, err := decodeComponent(raw)
			if err != nil {
				return err
			}
			if err := t.buildPost(sub); err != nil {
				return err
			}
		}
		return nil
	case "TemplateProcessing":
		var pre, suf []uint32
		seen := false
		for _, p := range c.Single {
			switch {
			case p.Sequence != nil:
				if seen {
					return errors.New("template with two sequences")
				}
				seen = true
			case p.SpecialToken != nil:
				st, ok := c.SpecialTokens[p.SpecialToken.ID]
				if !ok {
					return fmt.Errorf("template special token %q not defined", p.SpecialToken.ID)
				}
				if seen {
					suf = append(suf, st.IDs...)
				} else {
					pre = append(pre, st.IDs...)
				}
			}
		}
		if !seen {
			return errors.New("template without sequence")
		}
		t.prefix = append(pre, t.prefix...)
		t.suffix = append(t.suffix, suf...)
		return nil
	case "BertProcessing", "RobertaProcessing":
		cls, err := pairID(c.Cls)
		if err != nil {
			return fmt.Errorf("cls: %w", err)
		}
		sep, err := pairID(c.Sep)
		if err != nil {
			return fmt.Errorf("sep: %w", err)
		}
		t.prefix = append([]uint32{cls}, t.prefix...)
		t.suffix = append(t.suffix, sep)
		return nil
	}
	return fmt.Errorf("unsupported post_processor %q", c.Type)
}

func pairID(p []json.RawMessage) (uint32, error) {
	if len(p) != 2 {
		return 0, errors.New("want [token, id]")
	}
	var id uint32
	if err := json.Unmarshal(p[1], &id); err != nil {
		return 0, fmt.Errorf("decode id: %w", err)
	}
	return id, nil
}

// encodeBuf holds per-call scratch space.
type encodeBuf struct {
	segs, nsegs []segment
	pieces      []piece
	in          [1]piece
}

var encodePool = sync.Pool{New: func() any { return new(encodeBuf) }}

// release drops the buffer's references into the caller's text, so a pooled
// buffer does not keep a large request alive, and returns it to the pool.
func (b *encodeBuf) release() {
	clear(b.segs)
	clear(b.nsegs)
	clear(b.pieces)
	b.in[0] = piece{}
	encodePool.Put(b)
}

// Encode returns the token ids of text. addSpecial adds the post-processor's
// special tokens (typically BOS) as tokenizer(text) does by default; special tokens
// written in the text itself are always recognized, as in HuggingFace tokenizers.
func (t *Tokenizer) Encode(text string, addSpecial bool) []uint32 {
	return t.AppendEncode(nil, text, addSpecial)
}

// AppendEncode appends the token ids of text to dst and returns it; see Encode.
func (t *Tokenizer) AppendEncode(dst []uint32, text string, addSpecial bool) []uint32 {
	if addSpecial {
		dst = append(dst, t.prefix...)
	}
	dst = t.encodeText(dst, text, true)
	if addSpecial {
		dst = append(dst, t.suffix...)
	}
	return dst
}

// encodeText appends the ids of text without post-processing. atStart says whether
// text begins the input (Metaspace's prepend_scheme "first" depends on it).
func (t *Tokenizer) encodeText(dst []uint32, text string, atStart bool) []uint32 {
	buf := encodePool.Get().(*encodeBuf)
	defer buf.release()
	buf.segs = t.added.split(buf.segs[:0], text, atStart, nil)
	return t.encodeSegs(dst, buf, buf.segs, nil)
}

// encodeSegs appends the ids of segments produced by t.added.split. onToken, when
// not nil, is called after each added token with the index of its segment and the
// length of dst after it.
func (t *Tokenizer) encodeSegs(dst []uint32, buf *encodeBuf, segs []segment, onToken func(seg, n int)) []uint32 {
	for i, sg := range segs {
		if sg.tok >= 0 {
			dst = append(dst, t.added.tokens[sg.tok].id)
			if onToken != nil {
				onToken(i, len(dst))
			}
			continue
		}
		s := sg.s
		if t.norm != nil {
			s = t.norm.normalize(s)
		}
		buf.nsegs = t.addedNorm.split(buf.nsegs[:0], s, sg.start, nil)
		for _, ns := range buf.nsegs {
			if ns.tok >= 0 {
				dst = append(dst, t.addedNorm.tokens[ns.tok].id)
				continue
			}
			if t.pre == nil {
				dst = t.model.encodeWord(dst, ns.s)
				continue
			}
			buf.in[0] = piece{s: ns.s, start: ns.start}
			buf.pieces = t.pre.split(buf.pieces[:0], buf.in[:])
			for _, p := range buf.pieces {
				dst = t.model.encodeWord(dst, p.s)
			}
		}
	}
	return dst
}

// TokenID returns the id of a token written as in tokenizer.json (byte-level
// vocabularies use the mapped form, e.g. "Ġthe"), or false.
func (t *Tokenizer) TokenID(token string) (uint32, bool) {
	id, ok := t.tokenIDs[token]
	return id, ok
}

// Token returns the text of id as written in tokenizer.json, or false.
func (t *Tokenizer) Token(id uint32) (string, bool) {
	if int(id) >= len(t.idTokens) || t.idTokens[id] == "" {
		return "", false
	}
	return t.idTokens[id], true
}

// SpecialPrefix returns the ids Encode puts before the text when addSpecial is set.
// The caller must not modify the slice.
func (t *Tokenizer) SpecialPrefix() []uint32 { return t.prefix }
