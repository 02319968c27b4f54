// Package tokenize encodes text to token ids from a HuggingFace tokenizer.json, in
// pure Go, with the same ids as the Rust tokenizers library (and its JS port, which
// the golden tests use as the reference).
//
// It is the root of the router's one tokenizer tree: sub-package chat renders an OpenAI
// chat request with the model's chat template (tokenizer_config.json) and encodes it
// here, and chat/jinja is the template engine it renders with. router/blockhash turns
// the resulting ids (or the engine's, or an approximation) into KV block hashes.
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
//   - The Split patterns of GPT-2, Llama-3, Qwen2/3 and DeepSeek-V3 (with the
//     `\s+(?!\S)` lookahead Go's regexp rejects) run on hand-written scanners
//     (scan.go, scan_deepseek.go) that scan_test.go checks against the regexp2
//     backtracking engine on the golden corpus and under fuzzing; they are 10x
//     faster than regexp2 on DeepSeek-V3. Other patterns run on regexp2 with a
//     per-match timeout, so input never hangs a call.
//   - PrefixCache returns exactly Encode's ids; it reuses a cached text's ids only
//     up to an added-token boundary whose decision bytes both texts share (the
//     argument is in its doc comment). chat.Encoder uses it for conversations,
//     through EncodeKeyed: the caller names the earlier texts to try (the previous
//     turn), and only the text after the last shared checkpoint is split for added
//     tokens and encoded.
//   - Byte-level vocabularies are stored by raw bytes, so the model never builds the
//     GPT-2 byte-to-unicode strings on the hot path.
//   - Invalid UTF-8 never panics: each invalid byte is one character of class
//     "other". (HuggingFace rejects such input, so there is no reference to match.)
//   - Bad input never panics or hangs: BPE merging is O(n log n) in the pre-token
//     length (a heap of candidate merges), and added-token matching is linear.
//
// Parity: testdata/gen/gen.mjs encodes 2,058 strings (unicode, whitespace runs,
// digits, code, emoji, CJK, special-token look-alikes, inputs up to 32 KB) with
// @huggingface/tokenizers for Llama-3 (two files: the npm package's and Meta's own
// with its BOS post-processor), Qwen3, DeepSeek-V3, Llama-2/Mistral, Gemma-3,
// Cohere (GPT-2 split) and a Metaspace variant; all ids match. Known differences from Python
// transformers, none of which affect chat prompts (vLLM encodes those with
// add_special_tokens=false):
//
//   - DeepSeek-V3's tokenizer_config.json sets add_bos_token with
//     LlamaTokenizerFast, which makes transformers rebuild the post-processor to
//     add BOS; Encode(text, true) follows tokenizer.json (no BOS), like the Rust
//     library loading the file directly and the JS reference.
//   - Letter/number/space classes come from Go's unicode tables; characters
//     assigned in a newer Unicode version than Oniguruma's may classify
//     differently.
package tokenize
