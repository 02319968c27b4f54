// Package tokenize encodes text to token ids from a HuggingFace tokenizer.json, in
// pure Go, with the same ids as the Rust tokenizers library (and its JS port, which
// the golden tests use as the reference).
//
// Supported: the BPE model (byte-level vocabularies as in GPT-2, Llama-3, Qwen2/3,
// DeepSeek-V3; SentencePiece-style vocabularies with byte_fallback, fuse_unk and a
// metaspace, as in Llama-2, Mistral and Gemma), ignore_merges, merges written as
// "a b" strings or as ["a", "b"] pairs, continuing_subword_prefix and
// end_of_word_suffix; the normalizers NFC, NFD, NFKC, NFKD, Lowercase, Strip,
// Prepend, Replace and Sequence; the pre-tokenizers Split (all five behaviors,
// invert), ByteLevel, Metaspace, Digits and Sequence; added tokens with lstrip,
// rstrip, single_word and normalized; the post-processors TemplateProcessing,
// ByteLevel, Bert, Roberta and Sequence. Anything else is an error at load time that
// wraps ErrUnsupported, so the caller can fall back to asking the engine.
//
// Invariants:
//
//   - Encode is deterministic and safe for concurrent use; a Tokenizer is immutable
//     after Parse except for its internal word cache, which only memoizes.
//   - Added tokens are split out before normalization and pre-tokenization, leftmost
//     longest first, as the Rust crate's Aho-Corasick matcher does; tokens marked
//     normalized are matched in the normalized text.
//   - The Split patterns of GPT-2, Llama-3 and Qwen2/3 (with the `\s+(?!\S)`
//     lookahead Go's regexp rejects) run on a hand-written scanner (scan.go) that
//     scan_test.go checks against the regexp2 backtracking engine; other patterns
//     run on regexp2 with a per-match timeout, so input never hangs a call.
//   - Byte-level vocabularies are stored by raw bytes, so the model never builds the
//     GPT-2 byte-to-unicode strings on the hot path.
//   - Invalid UTF-8 never panics: each invalid byte is one character of class
//     "other". (HuggingFace rejects such input, so there is no reference to match.)
//   - Bad input never panics or hangs: BPE merging is O(n log n) in the pre-token
//     length (a heap of candidate merges), and added-token matching is linear.
package tokenize
