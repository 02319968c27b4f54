package tokenize

import (
	"encoding/json"
	"errors"
	"fmt"
)

// fileJSON is the subset of a HuggingFace tokenizer.json this package reads.
type fileJSON struct {
	AddedTokens   []addedTokenJSON `json:"added_tokens"`
	Normalizer    json.RawMessage  `json:"normalizer"`
	PreTokenizer  json.RawMessage  `json:"pre_tokenizer"`
	PostProcessor json.RawMessage  `json:"post_processor"`
	Decoder       json.RawMessage  `json:"decoder"`
	Model         modelJSON        `json:"model"`
}

type addedTokenJSON struct {
	ID         uint32 `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

type modelJSON struct {
	Type                    string            `json:"type"`
	RawVocab                json.RawMessage   `json:"vocab"`
	RawMerges               json.RawMessage   `json:"merges"`
	Vocab                   map[string]uint32 `json:"-"`
	Merges                  []mergeJSON       `json:"-"`
	UnkToken                *string           `json:"unk_token"`
	ContinuingSubwordPrefix *string           `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string           `json:"end_of_word_suffix"`
	FuseUnk                 bool              `json:"fuse_unk"`
	ByteFallback            bool              `json:"byte_fallback"`
	IgnoreMerges            bool              `json:"ignore_merges"`
	Dropout                 *float64          `json:"dropout"`
}

// mergeJSON is one BPE merge, written either as "left right" or as ["left", "right"].
type mergeJSON struct {
	Left, Right string
}

// UnmarshalJSON accepts both merge encodings used by tokenizer.json files.
func (m *mergeJSON) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		for i := 0; i < len(s); i++ {
			// The legacy format splits at the first space; tokens never hold a raw
			// space because both byte-level and metaspace vocabularies map it.
			if s[i] == ' ' {
				m.Left, m.Right = s[:i], s[i+1:]
				return nil
			}
		}
		return fmt.Errorf("merge %q has no space", s)
	}
	var pair []string
	if err := json.Unmarshal(b, &pair); err != nil {
		return fmt.Errorf("merge %s: %w", truncate(b), err)
	}
	if len(pair) != 2 {
		return fmt.Errorf("merge %s: want 2 parts, got %d", truncate(b), len(pair))
	}
	m.Left, m.Right = pair[0], pair[1]
	return nil
}

// component is the common shape of normalizers, pre-tokenizers and post-processors.
type component struct {
	Type string `json:"type"`

	// Sequence.
	Normalizers   []json.RawMessage `json:"normalizers"`
	PreTokenizers []json.RawMessage `json:"pretokenizers"`
	Processors    []json.RawMessage `json:"processors"`

	// Split, Replace.
	Pattern  *patternJSON `json:"pattern"`
	Behavior string       `json:"behavior"`
	Invert   bool         `json:"invert"`
	Content  string       `json:"content"`

	// Prepend, Metaspace.
	Prepend       string `json:"prepend"`
	Replacement   string `json:"replacement"`
	PrependScheme string `json:"prepend_scheme"`
	Split         *bool  `json:"split"`

	// ByteLevel, Metaspace (legacy).
	AddPrefixSpace *bool `json:"add_prefix_space"`
	UseRegex       *bool `json:"use_regex"`

	// Digits.
	IndividualDigits bool `json:"individual_digits"`

	// Strip normalizer.
	StripLeft  bool `json:"strip_left"`
	StripRight bool `json:"strip_right"`

	// TemplateProcessing.
	Single        []templatePiece                `json:"single"`
	SpecialTokens map[string]templateSpecialJSON `json:"special_tokens"`

	// BertProcessing, RobertaProcessing: [token, id].
	Sep []json.RawMessage `json:"sep"`
	Cls []json.RawMessage `json:"cls"`
}

type patternJSON struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

type templatePiece struct {
	SpecialToken *struct {
		ID string `json:"id"`
	} `json:"SpecialToken"`
	Sequence *struct {
		ID string `json:"id"`
	} `json:"Sequence"`
}

type templateSpecialJSON struct {
	ID  string   `json:"id"`
	IDs []uint32 `json:"ids"`
}

// isNull reports whether a raw component is absent or JSON null.
func isNull(b json.RawMessage) bool {
	return len(b) == 0 || string(b) == "null"
}

func decodeComponent(b json.RawMessage) (component, error) {
	var c component
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("decode %s: %w", truncate(b), err)
	}
	if c.Type == "" {
		return c, errors.New("component without type")
	}
	return c, nil
}

func truncate(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "..."
	}
	return string(b)
}
